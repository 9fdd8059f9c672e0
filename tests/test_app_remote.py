"""The desktop app on a remote OpenAI-compatible server: `folio serve` in a subprocess with the
bundled model, set in the settings (saved and loaded), checked with "Test connection", and
chatted with in a real window, where closing a tab mid-answer frees the server's blocks."""
from __future__ import annotations

import os
import stat
import threading
from dataclasses import replace

import pytest
import shiboken6
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QLineEdit

from app.gui import settings_dialog
from app.gui.engine_bridge import FAILED, READY
from app.gui.main_window import MainWindow
from app.gui.messages import DONE, STOPPED, STREAMING
from app.paths import settings_path
from app.backends.remote import RemoteBackend
from app.gui.settings import Settings, load_settings, save_settings
from app.gui.settings_dialog import SettingsDialog
from app_fixtures import add_window, type_and_send, wait_answer
from engine import SamplingParams
from serve_process import KEY, LONG_ANSWER, MODEL, ServerProcess, stats, wait_until_idle

TIMEOUT_MS = 120_000
REMOTE = Settings(model_source="remote", remote_url="http://127.0.0.1:8000/v1", remote_key="sk-secret",
                  remote_model="some-model", temperature=0.0, max_tokens=16)


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess("--api-key", KEY)
    yield proc
    proc.stop()


@pytest.fixture
def open_window(qtbot, tmp_path, embedder):
    """`open_window(settings)`: a shown MainWindow that makes its own engine from the settings;
    closed at the end of the test, as the app quits."""

    def open_(settings: Settings) -> MainWindow:
        window = MainWindow(tmp_path / "data", settings, embedder=embedder)
        add_window(qtbot, window)
        window.show()
        qtbot.waitUntil(lambda: window.bridge.state in (READY, FAILED), timeout=TIMEOUT_MS)
        qtbot.waitUntil(lambda: window.library.library is not None, timeout=TIMEOUT_MS)
        return window

    return open_


def on_server(server: ServerProcess, **changes) -> Settings:
    return replace(REMOTE, remote_url=server.base_url, remote_key=KEY, remote_model="", **changes)


def record_submits(window: MainWindow) -> list:
    """The (messages, params, deltas) of every answer the window asks the bridge for."""
    submitted = []
    submit = window.bridge.submit

    def recording(messages, params):
        generation = submit(messages, params)
        deltas = []
        generation.delta.connect(deltas.append)  # before the event loop can deliver any
        submitted.append((messages, params, deltas))
        return generation

    window.bridge.submit = recording
    return submitted


def open_dialog(qtbot, settings: Settings) -> SettingsDialog:
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


# ---------------------------------------------------------------------------------- settings

def test_remote_settings_round_trip_and_restart_only_when_the_server_changes(tmp_path):
    save_settings(tmp_path, REMOTE)
    assert load_settings(tmp_path) == REMOTE
    if os.name == "posix":  # it holds the API key
        assert stat.S_IMODE(settings_path(tmp_path).stat().st_mode) == 0o600

    assert REMOTE.model_label() == "some-model@127.0.0.1:8000"
    assert replace(REMOTE, remote_model="", remote_url="myhost:9000").model_label() == "default model@myhost:9000"
    assert replace(REMOTE, remote_url="https://me:pw@myhost/v1").model_label() == "some-model@myhost"
    key = REMOTE.backend_spec()
    for change in ({"remote_url": "http://other:8000/v1"}, {"remote_key": "sk-other"}, {"remote_model": "m2"},
                   {"model_source": "bundled"}):
        assert replace(REMOTE, **change).backend_spec() != key, change
    for change in ({"device": "cpu"}, {"max_model_len": 512}, {"kv_memory_fraction": 0.5}, {"temperature": 1.0}):
        assert replace(REMOTE, **change).backend_spec() == key, change  # the local engine's settings

    no_url = replace(REMOTE, remote_url=" ")
    assert no_url.problems() == ["enter the remote server's URL"]
    save_settings(tmp_path, no_url)
    assert load_settings(tmp_path) == Settings()  # unusable: the defaults, never a crash


def test_the_dialog_shows_the_remote_fields_only_for_a_remote_and_round_trips_them(qtbot):
    dialog = open_dialog(qtbot, REMOTE)
    remote_fields = [dialog.remote_url, dialog.remote_key, dialog.remote_model, dialog.test_button]
    local_fields = [dialog.path, dialog.device, dialog.context]
    assert dialog.source.currentData() == "remote"
    assert all(w.isVisible() for w in remote_fields) and not any(w.isVisible() for w in local_fields)
    assert dialog.remote_key.echoMode() == QLineEdit.EchoMode.Password
    assert dialog.result_settings() == REMOTE

    dialog.source.setCurrentIndex(dialog.source.findData("bundled"))
    assert not any(w.isVisible() for w in remote_fields) and all(w.isVisible() for w in local_fields)
    dialog.source.setCurrentIndex(dialog.source.findData("remote"))
    dialog.remote_url.clear()
    dialog._accept()  # a remote with no URL is refused, inline
    assert dialog.isVisible() and "URL" in dialog.problem.text()


# ---------------------------------------------------------------------------------- "Test connection"

def test_test_connection_names_the_servers_model(qtbot, server):
    dialog = open_dialog(qtbot, on_server(server))
    qtbot.mouseClick(dialog.test_button, Qt.MouseButton.LeftButton)
    assert not dialog.test_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.test_button.isEnabled(), timeout=TIMEOUT_MS)
    assert dialog.test_result.text().startswith("Connected") and MODEL in dialog.test_result.text()
    assert dialog.test_result.objectName() != "errorText"

    dialog.remote_key.setText("sk-wrong")
    qtbot.mouseClick(dialog.test_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.test_button.isEnabled(), timeout=TIMEOUT_MS)
    assert "refused the API key" in dialog.test_result.text()
    assert dialog.test_result.objectName() == "errorText"


def test_test_connection_to_a_closed_port_shows_the_error(qtbot, closed_port):
    dialog = open_dialog(qtbot, replace(REMOTE, remote_url=f"127.0.0.1:{closed_port}"))
    qtbot.mouseClick(dialog.test_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.test_button.isEnabled(), timeout=TIMEOUT_MS)
    assert dialog.test_result.text().startswith(f"cannot connect to http://127.0.0.1:{closed_port}/v1")
    assert dialog.test_result.objectName() == "errorText"


def test_a_slow_server_never_blocks_the_gui_and_the_dialog_may_close_meanwhile(qtbot, silent_port, monkeypatch):
    monkeypatch.setattr(settings_dialog, "CONNECTION_TEST_TIMEOUT_S", 1.0)
    dialog = open_dialog(qtbot, replace(REMOTE, remote_url=f"127.0.0.1:{silent_port}"))
    ticks_while_asking = []  # while the worker waits on the server
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: dialog.testing and ticks_while_asking.append(1))
    timer.start()
    qtbot.mouseClick(dialog.test_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.test_button.isEnabled(), timeout=TIMEOUT_MS)
    timer.stop()
    assert dialog.test_result.text() == f"no answer from http://127.0.0.1:{silent_port}/v1 within 1 s"
    assert ticks_while_asking, "the GUI thread must keep turning while the server is asked"

    # again, but the dialog closes and is deleted before the answer comes
    unowned = SettingsDialog(replace(REMOTE, remote_url=f"127.0.0.1:{silent_port}"))
    unowned.show()
    qtbot.mouseClick(unowned.test_button, Qt.MouseButton.LeftButton)
    worker = next(t for t in threading.enumerate() if t.name == "folio-connection-test")
    unowned.reject()
    unowned.deleteLater()
    qtbot.waitUntil(lambda: not shiboken6.isValid(unowned), timeout=10_000)
    worker.join(30)
    qtbot.wait(200)  # its answer was dropped with the dialog: nothing fires into it
    assert not worker.is_alive()


# ---------------------------------------------------------------------------------- the window

def test_a_window_on_the_server_streams_the_servers_answer(qtbot, server, open_window):
    window = open_window(on_server(server))
    assert window.bridge.state == READY
    assert not window.kv.isVisible()  # no KV picture for memory that is not ours
    assert window.engine_label.text() == f"{MODEL} at {server.base_url} · remote"
    submitted = record_submits(window)
    view = window.current_view()

    type_and_send(qtbot, view, "Hi!")
    qtbot.waitUntil(lambda: len(submitted) == 1, timeout=TIMEOUT_MS)
    answer = wait_answer(qtbot, view)
    messages, params, deltas = submitted[0]

    with RemoteBackend(server.base_url, KEY, MODEL, timeout=120) as remote:
        expected = remote.submit(messages, params).result(timeout=120)
    assert isinstance(params, SamplingParams) and params.temperature == 0.0 and params.max_tokens == 16
    assert answer.status == DONE and answer.error is None
    assert answer.content == expected.text != ""
    assert "".join(deltas) == expected.text and len(deltas) > 1  # streamed
    assert answer.stats is not None and answer.stats.generated_tokens == expected.metrics.num_generated_tokens
    qtbot.waitUntil(lambda: "last answer" in window.engine_label.text(), timeout=10_000)
    assert f"{expected.metrics.num_generated_tokens} generated" in window.engine_label.text()


def test_closing_a_tab_mid_answer_cancels_the_servers_request(qtbot, server, open_window):
    assert wait_until_idle(server)["blocks_used"] == 0
    window = open_window(on_server(server, max_tokens=2000))
    view = window.current_view()
    session = view.session

    type_and_send(qtbot, view, LONG_ANSWER[0]["content"])
    qtbot.waitUntil(lambda: session.model[-1].status == STREAMING and len(session.model[-1].content) > 10,
                    timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: stats(server)["num_running"] == 1, timeout=10_000)  # the stats lag a step
    assert stats(server)["blocks_used"] > 0

    window.close_tab(window.tabs.indexOf(view))
    qtbot.waitUntil(lambda: session.model[-1].status == STOPPED, timeout=TIMEOUT_MS)
    idle = wait_until_idle(server)
    assert idle["num_running"] == 0 and idle["blocks_used"] == 0
    saved = window.history.messages(session.chat_id)[-1]
    assert saved.status == STOPPED and saved.content == session.model[-1].content != ""


def test_an_unreachable_server_shows_the_banner_and_a_good_url_recovers(qtbot, server, open_window, closed_port):
    window = open_window(replace(on_server(server), remote_url=f"http://127.0.0.1:{closed_port}/v1"))
    assert window.bridge.state == FAILED and window.engine_label.text() == "No model loaded"
    assert window.banner.isVisible()
    assert window.banner.text.text().startswith(f"cannot connect to http://127.0.0.1:{closed_port}/v1")

    window.apply_settings(on_server(server))  # a new URL: a new engine
    qtbot.waitUntil(lambda: window.bridge.state == READY, timeout=TIMEOUT_MS)
    assert not window.banner.isVisible() and MODEL in window.engine_label.text()
    assert load_settings(window.data_dir) == on_server(server)
