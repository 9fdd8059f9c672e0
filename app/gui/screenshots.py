"""Screenshots for the README: `python -m app.gui.screenshots docs/screenshots` (a developer tool).

Runs the real window (offscreen: QT_QPA_PLATFORM=offscreen works without a display) on the
bundled model with a small KV pool, so the memory picture is readable, and the app's KV tiers (RAM
and disk; the disk's under a scratch cache dir unless FOLIO_CACHE_DIR says otherwise), and saves,
for the light and the dark theme: a chat with sources under its answer, the library panel while a
file is being indexed and while a folder of 120 files is, and the KV picture while two chats share
a pinned document's blocks.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MANUAL = [
    "<h1>AquaFlow 200 pump manual</h1><h2>1. Installing the pump</h2>"
    "<p>Bolt the base plate to a level concrete pad before connecting any pipes. Leave 30 cm of free space "
    "around the motor so that it can cool. Use the flexible couplings supplied in the box.</p>",
    "<h2>2. Priming</h2><p>Close the discharge valve. Fill the casing with clean water through the priming "
    "plug until water flows from the vent, then refit the plug and open the valve slowly. Never run the "
    "pump dry: the shaft seal fails within a minute.</p>",
    "<h2>3. Troubleshooting</h2><p>If the motor hums but does not turn, the start capacitor has failed and "
    "must be replaced. If the flow drops, clean the inlet strainer. If the pump cycles on and off, check "
    "the pressure tank's air charge (1.5 bar).</p>",
]
FOLDER_FILES = 120
NOTES = ("# Lighthouse notes\n\nThe keeper climbed the spiral stairs every evening at dusk with a tin of oil. "
         "During the storm of 1887 the keeper's daughter rowed across the bay to fetch a spare wick.\n")


def write_pdf(path: Path, pages: list[str]) -> None:
    """A real text PDF, one HTML snippet per page, through Qt's own PDF writer."""
    from PySide6.QtGui import QPageLayout, QPageSize, QPainter, QPdfWriter, QTextDocument
    writer = QPdfWriter(str(path))
    writer.setPageSize(QPageSize(QPageSize.PageSizeId.A5))
    writer.setPageLayout(QPageLayout(QPageSize(QPageSize.PageSizeId.A5), QPageLayout.Orientation.Portrait,
                                     writer.pageLayout().margins()))
    painter = QPainter(writer)
    for i, html in enumerate(pages):
        if i:
            writer.newPage()
        doc = QTextDocument()
        doc.setHtml(html)
        doc.setTextWidth(writer.width())
        doc.drawContents(painter)
    painter.end()


def wait(app, condition: Callable[[], bool], timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the window did not get there in time")
        app.processEvents()
        time.sleep(0.01)


def shoot(app, out: Path, theme: str, backend, embedder, docs: dict[str, Path]) -> list[Path]:
    from dataclasses import replace

    from app.gui.engine_bridge import READY
    from app.gui.main_window import MainWindow
    from app.gui.settings import Settings
    from app.gui.theme import apply_theme

    apply_theme(app, theme)
    data_dir = Path(tempfile.mkdtemp(prefix=f"folio-shot-{theme}-"))
    settings = replace(Settings(), theme=theme, temperature=0.0, max_tokens=120)
    window = MainWindow(data_dir, settings, backend=backend, embedder=embedder)
    window.resize(1400, 900)
    window.show()
    wait(app, lambda: window.bridge.state == READY and window.library.library is not None)
    saved = []

    def save(widget, name: str) -> None:
        path = out / f"{name}-{theme}.png"
        widget.grab().save(str(path))
        saved.append(path)

    # the library panel mid-indexing: two small files done, a large one on its way
    window.index([docs["manual"], docs["notes"]])
    wait(app, lambda: len(window.library.documents) == 2)
    window.index([docs["handbook"]])
    panel = window.library_panel
    wait(app, lambda: any(r.job.state == "embedding" and r.job.fraction > 0.35 for r in panel.rows.values()))
    save(window, "library-indexing")
    window.library.cancel_all()
    wait(app, lambda: all(r.job.finished for r in panel.rows.values()))
    panel.clear_finished()

    # a folder of 120 files: the job list scrolls under its header, the window keeps its size
    window.index([docs["folder"]])
    wait(app, lambda: len(panel.rows) == FOLDER_FILES and any(r.job.finished for r in panel.rows.values()))
    save(window, "library-folder")
    window.library.cancel_all()
    wait(app, lambda: all(r.job.finished for r in panel.rows.values()))
    panel.clear_finished()

    # a chat over the pinned manual, with its sources under the answer
    manual_id = next(d.doc_id for d in window.library.documents if d.source == docs["manual"])
    chat = window.current_session()
    chat.pin([manual_id])
    view = window.current_view()
    view.composer.setPlainText("How do I prime the pump? Cite the manual.")
    view.submit()
    wait(app, lambda: not chat.busy and window.bridge.last_stats.get("num_running") == 0)
    view.widgets[-1]._on_source_link("more")
    save(window, "chat-sources")

    # two more chats over the same pinned manual, answering at once: their prompt blocks are shared
    window.settings = replace(window.settings, max_tokens=300)  # long answers: both still running when shot
    sessions = []
    for question in ("Explain every step of installing the pump, in detail.",
                     "Explain every step of troubleshooting the pump, in detail."):
        session = window.new_chat()
        session.pin([manual_id])
        window.current_view().composer.setPlainText(question)
        window.current_view().submit()
        sessions.append(session)
    wait(app, lambda: window.bridge.last_stats.get("blocks_shared", 0) > 0
         and all(s.model[-1].status == "streaming" for s in sessions))
    wait(app, lambda: all(len(s.model[-1].content) > 150 or not s.busy for s in sessions))
    save(window, "kv-shared")
    save(window.statusBar(), "kv-bar")
    for s in sessions:
        s.stop()
    wait(app, lambda: not any(s.busy for s in sessions))
    window.close()
    window.wait_closed(60)  # its library workers stop before the next window (and the exit)
    return saved


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("FOLIO_CACHE_DIR", tempfile.mkdtemp(prefix="folio-shot-cache-"))
    from PySide6.QtWidgets import QApplication

    from app.backends.choice import DISK_KV_CACHE
    from app.backends.local import LocalBackend
    from engine import EngineThread
    from rag.embedder import Embedder

    app = QApplication(sys.argv[:1])
    docs_dir = Path(tempfile.mkdtemp(prefix="folio-shot-docs-"))
    docs = {"manual": docs_dir / "aquaflow-200-manual.pdf", "notes": docs_dir / "lighthouse-notes.md",
            "handbook": docs_dir / "keepers-handbook.txt"}
    write_pdf(docs["manual"], MANUAL)
    docs["notes"].write_text(NOTES, encoding="utf-8")
    docs["handbook"].write_text("\n\n".join(f"Chapter {i}. " + NOTES * 6 for i in range(300)), encoding="utf-8")
    docs["folder"] = docs_dir / "keepers-letters"
    docs["folder"].mkdir()
    for i in range(FOLDER_FILES):
        (docs["folder"] / f"letter-{i + 1:03}.md").write_text(f"# Letter {i + 1}\n\n{NOTES}", encoding="utf-8")
    # a small pool, so its picture is readable; the tiers the app keeps, so the legend shows them
    backend = LocalBackend(EngineThread(None, num_kv_blocks=256, disk_kv_cache=DISK_KV_CACHE))
    embedder = Embedder()
    for theme in ("light", "dark"):
        for path in shoot(app, out, theme, backend, embedder, docs):
            print(path)
    backend.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
