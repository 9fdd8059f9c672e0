"""Quitting: `folio` on the real bundled model, closed while the engine answers a long prompt,
stops and joins everything it started and exits 0. A thread left running into interpreter
shutdown aborts the process ("terminate called without an active exception", exit code 134), so
only a separate process can see it."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from app.gui.history import History
from app.gui.messages import STOPPED
from app.paths import history_path
from app_fixtures import make_window, shared_backend  # noqa: F401 (fixtures)
from app_fixtures import close_window
from conftest import PASSAGE

ROOT = Path(__file__).resolve().parents[1]

# The child runs the app's own entry point; a timer drives the window as a person would: paste a
# long text with a question, and close the window as soon as the engine has it (a long prompt on
# the CPU: its prefill steps take seconds, and its blocks are on their way to disk).
CHILD = """
import sys
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
from app.gui.engine_bridge import READY
from app.gui.launch import run_gui
from app.gui.main_window import MainWindow

app = QApplication(sys.argv[:1])
sent = []

def drive():
    window = next((w for w in app.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()), None)
    if window is None or window.bridge.state != READY:
        return
    if not sent:
        sent.append(window.current_view().submit(sys.argv[2] + "\\n\\nWhat did the keeper's daughter do?"))
    elif any(g.handle is not None for g in window.bridge._active.values()):
        print("closing while the engine answers", flush=True)
        driver.stop()
        window.close()

driver = QTimer()
driver.timeout.connect(drive)
driver.start(20)
sys.exit(run_gui(["--data-dir", sys.argv[1]]))
"""


def test_closing_the_window_mid_answer_stops_every_thread_and_exits_0(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "settings.json").write_text(json.dumps({"temperature": 0.0, "max_tokens": 400}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1",
           "FOLIO_CACHE_DIR": str(tmp_path / "cache")}
    child = subprocess.run([sys.executable, "-X", "faulthandler", "-c", CHILD, str(data_dir), PASSAGE * 16],
                           env=env, capture_output=True, text=True, timeout=300)
    assert "closing while the engine answers" in child.stdout, child.stderr[-3000:]
    assert "terminate called" not in child.stderr and "Fatal Python error" not in child.stderr, child.stderr[-3000:]
    assert child.returncode == 0, child.stderr[-3000:]

    history = History(history_path(data_dir))  # the answer cut short by the quit is kept
    try:
        chat = history.open_chats()[0]
        answer = history.messages(chat.id)[-1]
    finally:
        history.close()
    assert answer.role == "assistant" and answer.status == STOPPED


def test_the_library_closes_only_once_the_engine_has_stopped(qtbot, make_window):
    """The embedder's native runtime and chromadb are torn down while no engine step runs beside
    them: the library waits for the engine's shutdown (held back here) before it closes."""
    window = make_window()
    library = window.library.library
    engine_stopping = threading.Event()
    window.bridge._lifetime.post(engine_stopping.wait)  # an engine step that takes its time to end
    try:
        window.close()
        qtbot.wait(300)  # time enough for the library to close, were it not waiting
        assert window.library.library is library and not window.library.wait_closed(0)
    finally:
        engine_stopping.set()
    close_window(qtbot, window)
    assert window.library.library is None
