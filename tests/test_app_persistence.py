"""Restarting against the same data dir brings back the tabs, their order and messages, and a
half-written answer; while an answer streams, what a kill would leave on disk is already there."""
from PySide6.QtCore import Qt

from app.gui.history import History
from app.gui.messages import DONE, INTERRUPTED, STOPPED, STREAMING
from app.gui.main_window import MainWindow
from app.paths import history_path
from app.gui.settings import load_settings
from app_fixtures import make_window, shared_backend  # noqa: F401 (fixtures)
from app_fixtures import TEST_SETTINGS, add_window, close_window, settings, type_and_send, wait_answer


def test_restart_restores_tabs_messages_and_a_partial_answer(qtbot, make_window, tmp_path):
    data_dir = tmp_path / "profile"
    window = make_window(data_dir, settings=settings(max_tokens=400))
    first = window.current_view()
    type_and_send(qtbot, first, "Hi!")
    qtbot.waitUntil(lambda: not first.session.busy, timeout=120_000)
    first.session.rename("Greetings")
    window.new_chat()
    second = window.current_view()
    type_and_send(qtbot, second, "Tell me a long story about a lighthouse keeper.")
    answer = second.session.model[-1]
    qtbot.waitUntil(lambda: answer.status == STREAMING and len(answer.content) > 40, timeout=120_000)

    # what a SIGKILL now would leave: the answer so far, saved within the last half second
    with_partial = History(history_path(data_dir))
    qtbot.waitUntil(lambda: len(with_partial.messages(second.session.chat_id)[-1].content) > 40, timeout=5_000)
    on_disk = with_partial.messages(second.session.chat_id)[-1]
    with_partial.close()
    assert on_disk.status == INTERRUPTED and answer.content.startswith(on_disk.content)

    window.tabs.tabBar().moveTab(1, 0)  # reorder: the story first
    window.close()                      # quitting mid-answer keeps what was streamed
    assert answer.status == STOPPED and answer.content
    close_window(qtbot, window)         # stopped: the data dir's library may be opened again
    titles = [second.session.title, "Greetings"]
    assert titles[0].startswith("Tell me a long story")

    again = make_window(data_dir, settings=settings(max_tokens=400))
    assert [again.tabs.tabText(i) for i in range(again.tabs.count())] == titles
    story, greeting = (again.tabs.widget(i).session.model.messages for i in range(2))
    assert [(m.role, m.status) for m in greeting] == [("user", DONE), ("assistant", DONE)]
    assert greeting[1].content and greeting[1].stats is not None
    assert story[1].status == STOPPED and story[1].content == answer.content
    assert again.tabs.widget(0).widgets[1].status.text().startswith("Stopped")

    # the restored chat goes on: regenerate the stopped answer
    view = again.tabs.widget(0)
    again.tabs.setCurrentWidget(view)
    qtbot.keyClick(view.composer, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(view.composer, Qt.Key.Key_Escape)
    assert wait_answer(qtbot, view).status == STOPPED and len(view.session.model) == 2


def test_restart_restores_the_current_tab(qtbot, make_window, tmp_path):
    data_dir = tmp_path / "profile"
    window = make_window(data_dir)
    window.new_chat()
    window.new_chat()
    window.tabs.setCurrentIndex(1)
    current = window.current_session().chat_id
    close_window(qtbot, window)

    again = make_window(data_dir)
    assert again.tabs.count() == 3 and again.current_session().chat_id == current


def test_command_line_overrides_hold_for_this_run_only(qtbot, tmp_path, shared_backend, embedder):
    data_dir = tmp_path / "profile"
    window = MainWindow(data_dir, TEST_SETTINGS, backend=shared_backend, embedder=embedder,
                        run_overrides=[{"theme": "dark"}, {"device": "cpu"}])
    add_window(qtbot, window)
    assert (window.settings.theme, window.settings.device) == ("dark", "cpu")

    window.apply_settings(settings(theme="dark", device="cpu", temperature=0.5))  # the user changed one field
    saved = load_settings(data_dir)
    assert (saved.theme, saved.device, saved.temperature) == (TEST_SETTINGS.theme, TEST_SETTINGS.device, 0.5)
    assert (window.settings.theme, window.settings.device) == ("dark", "cpu")

    window.restart_engine = lambda: None  # a device change reloads the model: not what is tested here
    window.apply_settings(settings(theme="dark", device="auto", temperature=0.5))  # the user chose a device
    window.apply_settings(settings(theme="dark", device="cpu", temperature=0.5))   # ... and then cpu: theirs now
    saved = load_settings(data_dir)
    assert (saved.theme, saved.device) == (TEST_SETTINGS.theme, "cpu")
    window.close()
