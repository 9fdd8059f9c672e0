"""Folio's desktop app: `folio` with no subcommand, or `python -m app.gui`.

Sets up the data dir (`--data-dir`, else $FOLIO_DATA_DIR, else the platform's user data dir),
logging to a file there, the QApplication and its theme, and opens the main window. The window
shows at once; the model loads in the background. Closing the window quits once the engine and
the library have stopped (a thread still running when Python exits can abort the process).
"""
from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import sys
import traceback
from pathlib import Path

from app.gui.system_libraries import install_advice, missing_libraries, show_dialog, uses_xcb
from app.paths import data_dir, log_path

log = logging.getLogger("folio")
QUIT_WAIT_S = 120.0  # after the window closed: how long the engine's last step and the library get


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="folio",
                                     description="Folio: offline chat with local models and your documents.")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="where chats, settings and the library live (default: $FOLIO_DATA_DIR, "
                             "else your user data folder)")
    parser.add_argument("--model", metavar="PATH", help="a Hugging Face model folder or a .gguf file, for this run")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the model runs, for this run")
    parser.add_argument("--theme", choices=["light", "dark"], help="the colour theme")
    parser.add_argument("files", nargs="*", metavar="FILE", type=Path,
                        help="documents to add to the library (what a file manager's 'Open With' passes)")
    return parser


def setup_logging(folder) -> None:
    handler = logging.handlers.RotatingFileHandler(log_path(folder), maxBytes=1 << 20, backupCount=3,
                                                   encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _report_unexpected(exc_type, exc, tb) -> None:
    """A bug in a slot: log it and say so in a dialog, but keep the window (and the chats) alive."""
    log.error("unexpected error", exc_info=(exc_type, exc, tb))
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication, QMessageBox
    if QApplication.instance() is None:
        traceback.print_exception(exc_type, exc, tb)
        return
    box = QMessageBox(QMessageBox.Icon.Warning, "Folio", f"Something went wrong: {exc}",
                      QMessageBox.StandardButton.Ok, QApplication.activeWindow())
    box.setInformativeText("Your chats are saved. The details are in the log file.")
    box.setDetailedText("".join(traceback.format_exception(exc_type, exc, tb)))
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()


def _close_on_signals(window) -> None:
    """Ctrl+C in the terminal, or a polite kill, closes the window the normal way (saving the
    answers in progress). Python runs signal handlers only between bytecodes, so a timer lets it
    look in from Qt's event loop every few hundred milliseconds."""
    from PySide6.QtCore import QTimer

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: window.close())
    timer = QTimer(window)
    timer.timeout.connect(lambda: None)
    timer.start(300)


def run_gui(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    folder = data_dir(args.data_dir).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"folio: cannot use the data folder {folder}: {e}", file=sys.stderr)
        return 2
    setup_logging(folder)
    log.info("starting; data dir %s", folder)
    if uses_xcb() and (missing := missing_libraries()):  # Qt would abort with a misleading message
        advice = install_advice(missing)
        log.error("missing system libraries: %s", ", ".join(lib.soname for lib in missing))
        print(advice, file=sys.stderr, flush=True)
        show_dialog(advice)
        return 2

    from PySide6.QtWidgets import QApplication

    from app.gui.main_window import MainWindow
    from app.gui.settings import load_settings
    from app.gui.theme import apply_theme, icon

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Folio")
    app.setDesktopFileName("folio")
    app.setWindowIcon(icon("folio"))
    saved = load_settings(folder)
    overrides: list[dict] = []  # for this run only: the window never saves them
    if args.model:
        source = "gguf" if args.model.lower().endswith(".gguf") else "folder"
        overrides.append({"model_source": source, "model_path": args.model})
    if args.device:
        overrides.append({"device": args.device})
    if args.theme:
        overrides.append({"theme": args.theme})
    apply_theme(app, args.theme or saved.theme)
    sys.excepthook = _report_unexpected
    window = MainWindow(folder, saved, run_overrides=overrides)
    window.show()
    if args.files:
        window.index([p.absolute() for p in args.files])
    _close_on_signals(window)
    app.setQuitOnLastWindowClosed(False)  # the window closed: quit once what it started has stopped
    window.closed.connect(app.quit)
    app.aboutToQuit.connect(window.close)  # quit another way (the session ends): close as a person would
    code = app.exec()
    if not window.wait_closed(QUIT_WAIT_S):
        # a step that never ends (a hung GPU): leave without finalizing Python, which would abort
        # on the thread still inside torch; the chats and settings are saved already
        log.error("the engine or the library did not stop within %.0f s; leaving without waiting", QUIT_WAIT_S)
        logging.shutdown()
        os._exit(code)
    log.info("exiting with %d", code)
    return code
