"""Fixtures and helpers for the desktop-app tests: one local backend for the whole run, a fresh
data dir per window, and small synchronous helpers that drive the real widgets.

Everything stops the way the app quits: a window is closed and waited for until its `closed`
signal (engine and library joined), and the shared backend is shut down once, at the end of the
run, before the interpreter exits (an engine thread still stepping then aborts the process)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from app.gui.engine_bridge import READY
from app.gui.main_window import MainWindow
from app.gui.settings import Settings

ANSWER_TIMEOUT_MS = 120_000
CLOSE_TIMEOUT_MS = 60_000
TEST_SETTINGS = Settings(temperature=0.0, max_tokens=16)
KV_BLOCKS = 256  # 4096 tokens: enough for every test, small enough to allocate quickly

_backend = None


@pytest.fixture
def shared_backend(request):
    """One local backend for every app test in the run (loading the model takes seconds); each
    window adopts it and never shuts it down: the run does, at its end."""
    global _backend
    if _backend is None:
        from app.backends.local import LocalBackend
        from engine import EngineThread
        _backend = LocalBackend(EngineThread(None, num_kv_blocks=KV_BLOCKS))
        request.config.add_cleanup(_shut_down_shared_backend)
    return _backend


def _shut_down_shared_backend() -> None:
    """As the bridge stops a backend it opened: answers still running abort, the engine thread is joined."""
    global _backend
    backend, _backend = _backend, None
    backend.shutdown(None)
    assert not backend.engine_thread._thread.is_alive(), "the engine thread outlived its shutdown"


class Borrowed:
    """A shared backend handed to a bridge as if it had opened it: everything but `shutdown`."""

    def __init__(self, backend) -> None:
        self._backend = backend

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def shutdown(self, timeout: float | None = None) -> None:
        pass


@pytest.fixture
def make_window(qtbot, tmp_path, shared_backend, embedder):
    """`make_window(data_dir=None, settings=None, backend=shared)`: a shown MainWindow whose
    backend is ready (unless `wait=False`); closed at the end of the test, as the app quits."""

    def make(data_dir: Path | None = None, settings: Settings = TEST_SETTINGS, backend=shared_backend,
             wait: bool = True) -> MainWindow:
        window = MainWindow(data_dir or tmp_path / "data", settings, backend=backend, embedder=embedder)
        add_window(qtbot, window)
        window.show()
        if wait:
            qtbot.waitUntil(lambda: window.bridge.state == READY, timeout=ANSWER_TIMEOUT_MS)
            qtbot.waitUntil(lambda: window.library.library is not None, timeout=ANSWER_TIMEOUT_MS)
        return window

    return make


def add_window(qtbot, window: MainWindow) -> None:
    """Have pytest-qt close `window` after the test with `close_window`, before it deletes the
    window: a worker still stopping would deliver into objects being deleted."""
    qtbot.addWidget(window, before_close_func=lambda w: close_window(qtbot, w))


def close_window(qtbot, window: MainWindow) -> None:
    """Close `window` as a person would (again is fine) and wait until the engine it opened and its
    library workers have stopped, so its data dir may be opened again."""
    window.close()
    qtbot.waitUntil(lambda: window.wait_closed(0), timeout=CLOSE_TIMEOUT_MS)


def settings(**changes) -> Settings:
    return replace(TEST_SETTINGS, **changes)


def type_and_send(qtbot, view, text: str) -> None:
    """Type into the chat's box and press Enter, as a person would."""
    view.composer.setFocus()
    view.composer.clear()
    qtbot.keyClicks(view.composer, text)
    qtbot.keyClick(view.composer, Qt.Key.Key_Return)


def wait_answer(qtbot, view, timeout: int = ANSWER_TIMEOUT_MS):
    qtbot.waitUntil(lambda: not view.session.busy, timeout=timeout)
    return view.session.model[-1]


def drop_files(widget, paths: list[Path]) -> bool:
    """Drag local files over `widget` and drop them, as the window system would (Qt delivers a
    drop only to a widget that accepted the drag's entry). True if the drop was accepted."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    where = QPoint(widget.width() // 2, widget.height() // 2)
    args = (Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    enter = QDragEnterEvent(where, *args)
    QApplication.sendEvent(widget, enter)
    if not enter.isAccepted():
        return False
    drop = QDropEvent(QPointF(where), *args)
    QApplication.sendEvent(widget, drop)
    return drop.isAccepted()


def engine_free_blocks(backend) -> int:
    return int(backend.stats()["blocks_free"])
