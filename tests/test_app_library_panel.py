"""The library panel as a new user meets it: a folder of a hundred files keeps the window on the
screen, the job list folds and clears, reading shows movement, "Open" says when nothing can open
a file, and "Add files" offers documents from the Documents (or home) folder."""
import os
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QMessageBox

from app.gui.file_launch import open_file
from app.gui.library_panel import JOB_LIST_MAX_ROWS, start_folder
from app.gui.library_service import READING, FileJob
from app_fixtures import make_window, shared_backend  # noqa: F401 (fixtures)
from conftest import PASSAGE
from doc_fixtures import make_pdf


def test_a_hundred_files_keep_the_window_on_the_screen(qtbot, make_window, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(100):
        (folder / f"note-{i:03}.txt").write_text(f"Note {i}. {PASSAGE}", encoding="utf-8")
    window = make_window()
    screen = window.screen().availableGeometry()
    height = window.height()
    panel = window.library_panel

    window.index([folder])
    qtbot.waitUntil(lambda: len(panel.rows) == 100, timeout=60_000)
    qtbot.wait(50)  # let the layouts settle
    assert window.height() == height and window.minimumSizeHint().height() <= screen.height()
    assert window.statusBar().isVisible() and window.statusBar().geometry().bottom() <= window.height()
    row_height = next(iter(panel.rows.values())).sizeHint().height()
    assert panel.job_scroll.height() <= (JOB_LIST_MAX_ROWS + 1) * (row_height + panel.jobs_layout.spacing())
    assert panel.job_scroll.verticalScrollBar().maximum() > 0  # the rest scrolls
    assert panel.clear_button.isVisible() and "Indexing" in panel.jobs_toggle.text()

    panel.jobs_toggle.click()  # fold the list away; the header (and Clear finished) stay
    assert not panel.job_scroll.isVisible() and panel.clear_button.isVisible()
    panel.jobs_toggle.click()
    assert panel.job_scroll.isVisible()

    window.library.cancel_all()
    qtbot.waitUntil(lambda: all(r.job.finished for r in panel.rows.values()), timeout=120_000)
    assert panel.clear_button.isEnabled() and panel.jobs_toggle.text() == "100 files done"
    qtbot.mouseClick(panel.clear_button, Qt.MouseButton.LeftButton)
    assert not panel.rows and not panel.jobs_header.isVisible() and not panel.job_scroll.isVisible()


def test_reading_a_file_shows_a_moving_bar_then_the_pages_read(qtbot, make_window, tmp_path):
    panel = make_window().library_panel
    job = FileJob(10_000, tmp_path / "manual.pdf", READING, 0.0)
    panel.show_job(job)
    row = panel.rows[job.id]
    assert row.bar.maximum() == 0 and row.state.text() == "Reading…"  # Qt animates a 0..0 bar
    panel.show_job(FileJob(job.id, job.path, READING, 0.05))  # pages read: the bar moves
    assert row.bar.maximum() == 1000 and row.bar.value() == 50 and row.state.text() == "Reading 5%"
    panel.show_job(FileJob(job.id, job.path, "embedding", 0.5))
    assert row.bar.maximum() == 1000 and row.state.text() == "Indexing 50%"


def test_a_long_pdf_moves_the_bar_while_its_pages_are_read(qtbot, make_window, tmp_path):
    """Issue 10: a 36-page PDF sat at one figure while it was read. The service now passes on the
    pages read, inside the first tenth of the bar, and the row shows them as they come."""
    pdf = tmp_path / "manual.pdf"
    make_pdf(pdf, [f"Page {n}. " + PASSAGE for n in range(36)])
    window = make_window()
    panel = window.library_panel
    jobs, shown = [], []
    window.library.jobChanged.connect(jobs.append)
    window.library.jobChanged.connect(lambda job: shown.append(panel.rows[job.id].state.text())
                                      if job.id in panel.rows else None)
    window.index([pdf])
    qtbot.waitUntil(lambda: any(j.state == "added" for j in jobs), timeout=120_000)
    reading = [j.fraction for j in jobs if j.state == READING]
    assert len(set(reading)) >= 30 and reading == sorted(reading) and 0 < max(reading) <= 0.1
    assert any(text.startswith("Reading ") and text.endswith("%") for text in shown)


def test_open_says_when_no_application_can_open_the_file(qtbot, make_window, tmp_path):
    notes = tmp_path / "lighthouse.txt"
    notes.write_text(PASSAGE, encoding="utf-8")
    window = make_window()
    panel = window.library_panel
    window.index([notes])
    qtbot.waitUntil(lambda: panel.documents.count() == 1, timeout=120_000)
    assert not open_file(str(notes))  # the offscreen platform has no launcher: a real "no application"

    panel.documents.item(0).setSelected(True)
    qtbot.mouseClick(panel.open_button, Qt.MouseButton.LeftButton)
    box = panel.findChild(QMessageBox, "cannotOpen")
    assert box is not None and box.isVisible()
    assert "lighthouse.txt" in box.text() and str(notes) in box.informativeText()
    box.accept()


def test_add_files_filters_documents_and_opens_in_the_documents_or_home_folder(qtbot, make_window):
    dialog = make_window().library_panel.choose_files()
    try:
        filters = dialog.nameFilters()
        assert filters[0].startswith("Documents (") and "*.pdf" in filters[0] and "*.docx" in filters[0]
        assert filters[-1] == "All files (*)"
        where = Path(dialog.directory().absolutePath())
        assert where == Path(start_folder()) and where != Path(os.getcwd())
        assert where in (Path.home(), Path.home() / "Documents") or where.name == "Documents"
    finally:
        dialog.reject()
        QApplication.processEvents()


def test_the_library_leaves_the_gpu_to_the_engine_while_it_answers(qtbot, make_window, tmp_path, monkeypatch):
    """Issue 14: the window's library asks the bridge before each embedding batch; the bridge says
    busy only while a local engine on a GPU has an answer in flight, and the embedder the service
    opens for itself asks exactly that."""
    window = make_window()
    bridge = window.bridge
    assert window.library._engine_busy == bridge.answering_on_gpu
    assert not bridge.answering_on_gpu()
    monkeypatch.setattr(bridge, "_active", {1: object()})  # an answer in flight
    assert not bridge.answering_on_gpu()                    # on the CPU: no GPU to leave
    monkeypatch.setattr(bridge.backend, "device", "cuda")
    assert bridge.answering_on_gpu()
    monkeypatch.setattr(bridge, "_active", {})
    assert not bridge.answering_on_gpu()

    from app.gui.library_service import LibraryService
    busy = [True]
    service = LibraryService(tmp_path / "own-library", None, engine_busy=lambda: busy[0])
    qtbot.waitUntil(lambda: service.library is not None or service.error is not None, timeout=120_000)
    try:
        assert service.error is None
        may_use_gpu = service.library.embedder.may_use_device
        assert may_use_gpu() is False
        busy[0] = False
        assert may_use_gpu() is True
    finally:
        with qtbot.waitSignal(service.closed, timeout=60_000):
            service.close()


def test_opening_a_library_loads_the_embedder_only_when_it_holds_documents(qtbot, tmp_path, embedder):
    """A library with documents loads the embedding model when it opens, not on the first question
    (which on a first launch would convert it while the answer computes); an empty one leaves it
    unloaded, since no question is embedded until something is indexed."""
    from app.gui.library_service import LibraryService
    from rag import Library
    from rag.embedder import Embedder
    notes = tmp_path / "notes.txt"
    notes.write_text(PASSAGE, encoding="utf-8")
    with Library(tmp_path / "used", embedder=embedder) as lib:
        lib.add([notes])
    for folder, loads in ((tmp_path / "empty", False), (tmp_path / "used", True)):
        fresh = Embedder()  # nothing loaded yet
        service = LibraryService(folder, fresh)
        qtbot.waitUntil(lambda: service.listed, timeout=120_000)
        with qtbot.waitSignal(service.closed, timeout=120_000):
            service.close()  # after the query worker's open, warm-up included
        assert service.error is None
        assert bool(fresh._models) == loads, folder.name
