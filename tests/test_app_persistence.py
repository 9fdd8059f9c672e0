"""Restarting against the same data dir brings back the tabs, their order and messages, and a
half-written answer; while an answer streams, what a kill would leave on disk is already there."""
from PySide6.QtCore import Qt

from app.history import History
from app.messages import DONE, INTERRUPTED, STOPPED, STREAMING
from app.paths import history_path
from app_fixtures import make_window, shared_engine  # noqa: F401 (fixtures)
from app_fixtures import settings, type_and_send, wait_answer


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
