"""Documents in the window: files dropped on the library panel and on a chat are indexed with
per-file progress, cited under an answer, and shown again from the citation."""
from PySide6.QtCore import Qt

from app.gui.library_service import FAILED
from app_fixtures import make_window, shared_backend  # noqa: F401 (fixtures)
from app_fixtures import drop_files, type_and_send, wait_answer
from conftest import PASSAGE
from doc_fixtures import make_pdf

PUMP_PAGES = [
    "Installing the pump. Bolt the base plate to a level concrete pad before connecting any pipes.",
    "Priming the pump. Fill the casing with water through the priming plug until water flows from the vent.",
]


def test_dropped_text_and_pdf_are_indexed_and_cited(qtbot, make_window, tmp_path):
    notes = tmp_path / "lighthouse.txt"
    notes.write_text(PASSAGE, encoding="utf-8")
    pdf = tmp_path / "pump.pdf"
    page_texts = make_pdf(pdf, PUMP_PAGES)
    window = make_window()
    view = window.current_view()

    assert drop_files(window.library_panel, [notes])  # into the library
    assert drop_files(view, [pdf])                    # onto the chat: indexed and pinned there
    qtbot.waitUntil(lambda: len(window.library.documents) == 2 and bool(view.session.pinned_doc_ids), timeout=120_000)
    rows = {row.job.path.name: row for row in window.library_panel.rows.values()}
    assert {name: row.job.state for name, row in rows.items()} == {"lighthouse.txt": "added", "pump.pdf": "added"}
    pdf_doc = next(d for d in window.library.documents if d.source == pdf)
    assert view.session.pinned_doc_ids == [pdf_doc.doc_id]
    assert window.library_panel.documents.count() == 2
    assert "pump.pdf" in view.documents.pins.text()

    type_and_send(qtbot, view, "How do I prime the pump, and who rowed across the bay during the storm?")
    answer = wait_answer(qtbot, view)
    assert answer.error is None
    cited = {(s.name, s.page) for s in answer.sources}
    assert {("pump.pdf", 1), ("pump.pdf", 2)} <= cited  # the pinned PDF, page by page
    assert any(name == "lighthouse.txt" for name, _ in cited)  # found by searching the library
    widget = view.widgets[-1]
    assert widget.sources.isVisible() and "pump.pdf" in widget.sources.text()

    # the citation opens the passage the model read
    page2 = next(s for s in answer.sources if s.name == "pump.pdf" and s.page == 2)
    dialog = view._open_source(page2)
    qtbot.waitUntil(lambda: dialog.text.toPlainText() == page_texts[1], timeout=10_000)
    assert dialog.open_button.isEnabled()
    dialog.close()

    saved = window.history.messages(view.session.chat_id)[-1]
    assert {(s.name, s.page) for s in saved.sources} == cited


def test_bad_file_fails_alone_and_indexing_can_be_cancelled(qtbot, make_window, tmp_path):
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.4 this is not really a pdf")
    good = tmp_path / "notes.md"
    good.write_text("# Notes\n\n" + PASSAGE, encoding="utf-8")
    big = tmp_path / "big.txt"
    big.write_text("\n\n".join(f"Paragraph {i}. " + PASSAGE for i in range(400)), encoding="utf-8")
    window = make_window()
    panel = window.library_panel

    assert drop_files(panel, [bad, good])
    qtbot.waitUntil(lambda: len(panel.rows) == 2 and all(r.job.finished for r in panel.rows.values()),
                    timeout=120_000)
    rows = {r.job.path.name: r for r in panel.rows.values()}
    assert rows["broken.pdf"].job.state == FAILED and "broken.pdf" in rows["broken.pdf"].state.text()
    assert rows["notes.md"].job.state == "added"
    assert [d.source.name for d in window.library.documents] == ["notes.md"]

    assert drop_files(panel, [big])
    qtbot.waitUntil(lambda: any(r.job.path == big and r.job.state == "embedding" for r in panel.rows.values()),
                    timeout=120_000)
    row = next(r for r in panel.rows.values() if r.job.path == big)
    qtbot.mouseClick(row.button, Qt.MouseButton.LeftButton)  # per-file cancel
    qtbot.waitUntil(lambda: row.job.finished, timeout=120_000)
    assert row.job.state == "cancelled"
    assert [d.source.name for d in window.library.documents] == ["notes.md"]
    assert {r.job.path.name for r in panel.rows.values()} == {"broken.pdf", "notes.md", "big.txt"}
    qtbot.mouseClick(panel.clear_button, Qt.MouseButton.LeftButton)
    assert panel.rows == {} and not panel.clear_button.isVisible()


def test_a_pinned_document_says_whether_it_is_removed_or_the_library_is_broken(qtbot, make_window, tmp_path):
    window = make_window(tmp_path / "fine")
    qtbot.waitUntil(lambda: window.library.listed, timeout=10_000)
    window.current_session().pin(["no-such-document"])
    assert "(removed from the library)" in window.current_view().documents.pins.text()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "library").write_text("a file where the library folder should be")
    window = make_window(broken, wait=False)
    window.current_session().pin(["no-such-document"])
    qtbot.waitUntil(lambda: window.library.failed, timeout=60_000)
    assert "(the library cannot be opened)" in window.current_view().documents.pins.text()
