"""What a question sends, as a new user would check it: nothing from the library when the
question is not about it, nothing at all in "No documents" mode, a notice when a pinned document
is too long to read whole, and a waiting line that says what is being waited for."""
import threading

from app.gui import engine_bridge
from app.gui.history import NO_DOCUMENTS, PINNED
from app.gui.messages import DONE
from app_fixtures import make_window, shared_backend  # noqa: F401 (fixtures)
from app_fixtures import Borrowed, settings, type_and_send, wait_answer
from conftest import PASSAGE
from doc_fixtures import make_pdf

PUMP_PAGES = [
    "Installing the pump. Bolt the base plate to a level concrete pad before connecting any pipes.",
    "Priming the pump. Fill the casing with water through the priming plug until water flows from the vent.",
]


def index(qtbot, window, path) -> str:
    window.index([path])
    qtbot.waitUntil(lambda: any(d.source == path for d in window.library.documents), timeout=120_000)
    return next(d.doc_id for d in window.library.documents if d.source == path)


def test_a_question_about_nothing_in_the_library_sends_no_passages(qtbot, make_window, tmp_path):
    pdf = tmp_path / "pump.pdf"
    make_pdf(pdf, PUMP_PAGES)
    window = make_window()
    index(qtbot, window, pdf)
    view = window.current_view()

    type_and_send(qtbot, view, "What is 12 times 12?")
    unrelated = wait_answer(qtbot, view)
    assert unrelated.status == DONE and unrelated.sources == []
    type_and_send(qtbot, view, "How do I prime the pump?")
    related = wait_answer(qtbot, view)
    assert {s.name for s in related.sources} == {"pump.pdf"}
    assert related.stats.prompt_tokens > unrelated.stats.prompt_tokens + 20  # the passages were sent


def test_no_documents_mode_sends_no_documents_even_with_pins(qtbot, make_window, tmp_path):
    pdf = tmp_path / "pump.pdf"
    make_pdf(pdf, PUMP_PAGES)
    window = make_window()
    view = window.current_view()
    view.session.pin([index(qtbot, window, pdf)])
    combo = view.documents.mode
    combo.setCurrentIndex(combo.findData(NO_DOCUMENTS))
    assert view.session.doc_mode == NO_DOCUMENTS
    assert view.documents.pins.text() == "A plain chat (pins kept for later: pump.pdf)"

    type_and_send(qtbot, view, "How do I prime the pump?")
    assert wait_answer(qtbot, view).sources == []
    assert window.history.chat(view.session.chat_id).doc_mode == NO_DOCUMENTS  # kept with the chat


def test_a_pinned_document_too_long_to_read_whole_says_it_is_searched(qtbot, make_window, tmp_path):
    long_notes = tmp_path / "keeper-logbook.txt"
    long_notes.write_text("\n\n".join(f"Day {i}. {PASSAGE}" for i in range(30)), encoding="utf-8")
    window = make_window()
    view = window.current_view()
    view.session.set_doc_mode(PINNED)
    view.session.pin([index(qtbot, window, long_notes)])
    assert not view.documents.notice.isVisible()

    type_and_send(qtbot, view, "Who rowed across the bay during the storm?")
    answer = wait_answer(qtbot, view)
    notice = view.documents.notice
    assert notice.isVisible() and "keeper-logbook.txt is too long to read whole" in notice.text()
    searched = view.session.searched_pins[0]
    assert f"about {searched.num_tokens:,} tokens" in notice.text() and f"about {searched.room_tokens:,}" in notice.text()
    assert searched.num_tokens > searched.room_tokens
    assert answer.sources and not any(s.pinned for s in answer.sources)  # passages, not the whole text


def test_a_question_asked_while_the_model_loads_says_so(qtbot, make_window, shared_backend, monkeypatch):
    gate = threading.Event()
    monkeypatch.setattr(engine_bridge, "open_backend", lambda spec: gate.wait() and Borrowed(shared_backend))
    window = make_window(settings=settings(), backend=None, wait=False)
    qtbot.waitUntil(lambda: window.library.listed, timeout=120_000)  # an empty library
    view = window.current_view()
    type_and_send(qtbot, view, "Hi!")
    qtbot.waitUntil(lambda: view.widgets[-1].status.text() == "Waiting for the model to load…", timeout=10_000)
    gate.set()
    assert wait_answer(qtbot, view).status == DONE
