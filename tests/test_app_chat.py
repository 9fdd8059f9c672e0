"""The chat window on the real bundled model: tabs that stream at once, stop and close, the
keyboard, and an event loop that keeps running while answers stream."""
import threading
import time

from PySide6.QtCore import Qt, QTimer

from app.backends import LocalSpec
from app.gui import engine_bridge
from app.gui.engine_bridge import READY, EngineBridge, Generation
from app.gui.messages import DONE, STOPPED, STREAMING
from app_fixtures import make_window, shared_backend  # noqa: F401 (fixtures)
from app_fixtures import Borrowed, engine_free_blocks, settings, type_and_send, wait_answer
from engine import SamplingParams
from rag import DEFAULT_SYSTEM_PROMPT

QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "Write one word about the sea."]


def test_three_tabs_stream_their_own_answers_at_once(qtbot, make_window, shared_backend):
    window = make_window()
    views = [window.current_view()]
    for _ in QUESTIONS[1:]:
        qtbot.keyClick(window, Qt.Key.Key_T, Qt.KeyboardModifier.ControlModifier)
        views.append(window.current_view())
    assert window.tabs.count() == 3 and len({id(v) for v in views}) == 3

    streamed = {i: [] for i in range(3)}
    order: list[int] = []  # which tab each delta went to, in arrival order
    for i, view in enumerate(views):
        view.session.model.appended.connect(lambda _m, delta, i=i: (streamed[i].append(delta), order.append(i)))
    for view, question in zip(views, QUESTIONS):
        type_and_send(qtbot, view, question)
    answers = [wait_answer(qtbot, v) for v in views]
    runs = [order[0]] + [b for a, b in zip(order, order[1:]) if a != b]
    assert len(runs) > 3, f"the tabs' deltas did not interleave: {runs}"  # generated at once, not in turn

    params = window.settings.sampling_params()  # greedy, 16 tokens, the app's repetition penalty
    for i, (question, answer) in enumerate(zip(QUESTIONS, answers)):
        assert answer.status == DONE and answer.error is None
        assert "".join(streamed[i]) == answer.content
        alone = shared_backend.submit([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                      {"role": "user", "content": question}], params).result(timeout=120)
        assert answer.content == alone.text, f"tab for {question!r} got another answer"
        assert answer.stats is not None and answer.stats.generated_tokens == len(alone.token_ids)
    assert len({a.content for a in answers}) == 3
    assert [window.tabs.tabText(i) for i in range(3)] == QUESTIONS  # titled after their question


def test_closing_a_tab_mid_answer_cancels_it_and_frees_its_blocks(qtbot, make_window, shared_backend):
    window = make_window(settings=settings(max_tokens=400))
    qtbot.waitUntil(lambda: shared_backend.stats()["num_running"] == 0, timeout=60_000)
    free_before = engine_free_blocks(shared_backend)
    view = window.current_view()
    session = view.session
    type_and_send(qtbot, view, "Tell me a long story about a dragon and a lighthouse.")
    qtbot.waitUntil(lambda: session.model[-1].status == STREAMING and len(session.model[-1].content) > 20,
                    timeout=60_000)
    assert engine_free_blocks(shared_backend) < free_before or shared_backend.stats()["blocks_used"] > 0

    qtbot.keyClick(window, Qt.Key.Key_W, Qt.KeyboardModifier.ControlModifier)
    assert window.tabs.count() == 1 and window.current_view() is not view  # a fresh chat replaces it
    qtbot.waitUntil(lambda: session.model[-1].status == STOPPED, timeout=60_000)
    qtbot.waitUntil(lambda: engine_free_blocks(shared_backend) == free_before, timeout=10_000)
    assert shared_backend.stats()["num_running"] == 0
    saved = window.history.messages(session.chat_id)[-1]
    assert saved.status == STOPPED and saved.content == session.model[-1].content != ""


def test_keyboard_only_chat(qtbot, make_window):
    window = make_window(settings=settings(max_tokens=300))
    view = window.current_view()
    view.composer.setFocus()
    qtbot.keyClicks(view.composer, "first line")
    qtbot.keyClick(view.composer, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(view.composer, "second line")
    assert view.composer.toPlainText() == "first line\nsecond line" and len(view.session.model) == 0

    qtbot.keyClick(view.composer, Qt.Key.Key_Return)  # Enter sends
    assert view.composer.toPlainText() == "" and view.session.model[0].content == "first line\nsecond line"
    qtbot.waitUntil(lambda: view.session.model[-1].status == STREAMING, timeout=60_000)
    qtbot.keyClick(view.composer, Qt.Key.Key_Escape)  # Esc stops
    assert wait_answer(qtbot, view).status == STOPPED

    qtbot.keyClick(view.composer, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)  # regenerate
    assert view.session.busy and len(view.session.model) == 2
    qtbot.keyClick(view.composer, Qt.Key.Key_Escape)
    wait_answer(qtbot, view)

    focus_chain = []
    widget = view.composer
    for _ in range(3):
        widget = widget.nextInFocusChain()
        while not widget.focusPolicy() & Qt.FocusPolicy.TabFocus or not widget.isVisible():
            widget = widget.nextInFocusChain()
        focus_chain.append(widget)
    assert view.send_button in focus_chain  # Tab reaches Send from the box


def test_event_loop_keeps_running_while_answers_stream(qtbot, make_window, capsys):
    window = make_window(settings=settings(max_tokens=48))
    first = window.current_view()
    window.new_chat()
    views = [first, window.current_view()]
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    for view, question in zip(views, ["Describe a forest at night.", "Describe a city at dawn."]):
        type_and_send(qtbot, view, question)
    # timed from here: the simulated typing above runs synchronously in this thread, so it is
    # the test's time, not a stall a user would see
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
    last[0] = time.perf_counter()
    timer.start()
    for view in views:
        wait_answer(qtbot, view)
    timer.stop()
    with capsys.disabled():
        print(f"\n[event loop] {len(gaps)} ticks of 5 ms while two answers streamed; "
              f"longest stall {max(gaps) * 1000:.1f} ms, median {sorted(gaps)[len(gaps) // 2] * 1000:.1f} ms")
    assert len(gaps) > 50, "the GUI thread must keep turning while the engine works"
    assert all(v.session.model[-1].status == DONE for v in views)


def test_every_generation_is_released_when_it_ends(qtbot, make_window, shared_backend, monkeypatch):
    window = make_window(settings=settings(max_tokens=300))
    view = window.current_view()
    type_and_send(qtbot, view, QUESTIONS[0])
    assert wait_answer(qtbot, view).status == DONE
    type_and_send(qtbot, view, QUESTIONS[1])
    qtbot.waitUntil(lambda: view.session.model[-1].status == STREAMING, timeout=60_000)
    view.session.stop()
    assert wait_answer(qtbot, view).status == STOPPED
    qtbot.waitUntil(lambda: not window.bridge.findChildren(Generation), timeout=5_000)  # deleted, prompt and all
    assert window.bridge._active == {}

    gate = threading.Event()  # a backend still loading: the answer is cancelled before it is submitted
    monkeypatch.setattr(engine_bridge, "open_backend", lambda spec: gate.wait() and Borrowed(shared_backend))
    bridge = EngineBridge()
    bridge.start(LocalSpec())
    generation = bridge.submit([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=4, temperature=0.0))
    ended, deleted = [], []
    generation.finished.connect(ended.append)
    generation.destroyed.connect(lambda *_: deleted.append(True))
    generation.cancel()
    qtbot.waitUntil(lambda: bool(ended) and bool(deleted), timeout=5_000)
    gate.set()
    qtbot.waitUntil(lambda: bridge.state == READY, timeout=60_000)
    assert ended[0].finish_reason == "abort" and bridge._active == {}
    with qtbot.waitSignal(bridge.closed, timeout=60_000):
        bridge.close()


def test_reopening_a_chat_whose_answer_is_still_stopping_keeps_one_session(qtbot, make_window):
    window = make_window(settings=settings(max_tokens=400))
    old = window.current_session()
    type_and_send(qtbot, window.current_view(), "Tell me a long story about a dragon and a lighthouse.")
    qtbot.waitUntil(lambda: old.model[-1].status == STREAMING, timeout=60_000)
    window.close_tab(window.tabs.currentIndex())
    reopened = window.reopen_chat()
    assert reopened.chat_id == old.chat_id and not old.busy and not window._closing
    assert reopened.model[-1].status == STOPPED and reopened.model[-1].content == old.model[-1].content
