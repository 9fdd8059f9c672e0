"""Errors a user can cause never crash the window: a missing model, a model that cannot run on
the chosen device, a question too long for the context."""
from PySide6.QtCore import Qt

from app.backends import LocalSpec
from app.gui import engine_bridge, heavy_imports
from app.gui.engine_bridge import FAILED, READY
from app.gui.library_service import FAILED as JOB_FAILED
from app.gui.library_service import LibraryService, PromptRequest
from app.gui.messages import ERROR
from app_fixtures import make_window, shared_backend  # noqa: F401 (fixtures)
from app_fixtures import drop_files, settings, type_and_send, wait_answer
from conftest import PASSAGE


def test_missing_model_shows_an_error_and_the_window_stays_usable(qtbot, make_window, tmp_path):
    missing = tmp_path / "no-such-model"
    window = make_window(settings=settings(model_source="folder", model_path=str(missing)), backend=None, wait=False)
    qtbot.waitUntil(lambda: window.bridge.state == FAILED, timeout=120_000)
    assert window.banner.isVisible() and "does not exist" in window.banner.text.text()
    assert str(missing) in window.banner.text.text()

    view = window.current_view()
    type_and_send(qtbot, view, "Are you there?")
    answer = wait_answer(qtbot, view)
    assert answer.status == ERROR and "No model is loaded" in answer.error
    assert view.widgets[-1].error.isVisible()
    qtbot.keyClicks(view.composer, "still typing")
    assert view.composer.toPlainText() == "still typing"

    qtbot.mouseClick(window.banner.settings_button, Qt.MouseButton.LeftButton)
    dialog = window.settings_dialog
    assert dialog is not None and dialog.isVisible()
    dialog.reject()

    notes = tmp_path / "notes.txt"
    notes.write_text(PASSAGE, encoding="utf-8")
    qtbot.waitUntil(lambda: window.library.library is not None, timeout=120_000)
    assert drop_files(window.library_panel, [notes])
    qtbot.waitUntil(lambda: [d.source for d in window.library.documents] == [notes], timeout=120_000)


def test_choosing_a_working_model_in_settings_recovers(qtbot, make_window, tmp_path, shared_backend):
    window = make_window(settings=settings(model_source="gguf", model_path=str(tmp_path / "gone.gguf")),
                         backend=None, wait=False)
    qtbot.waitUntil(lambda: window.bridge.state == FAILED, timeout=120_000)
    dialog = window.open_settings()
    dialog.source.setCurrentIndex(dialog.source.findData("folder"))
    dialog.path.clear()
    dialog._accept()  # a folder source with no path is refused, inline
    assert dialog.isVisible() and dialog.problem.isVisible()
    dialog.source.setCurrentIndex(dialog.source.findData("bundled"))
    dialog.temperature.setValue(0.0)
    dialog._accept()
    assert not dialog.isVisible() and window.settings.model_source == "bundled"
    qtbot.waitUntil(lambda: window.bridge.state == READY, timeout=120_000)  # restarted in the background
    assert not window.banner.isVisible()


def test_a_question_too_long_for_the_context_is_an_inline_error(qtbot, make_window):
    window = make_window(settings=settings(max_model_len=0))
    view = window.current_view()
    view.session.set_doc_mode("pinned")
    limit = int(window.bridge.last_stats["max_model_len"])
    view.composer.setPlainText("word " * (limit + 100))
    assert view.submit()
    answer = wait_answer(qtbot, view)
    assert answer.status == ERROR and "context" in answer.error
    type_and_send(qtbot, view, "Hi!")  # the chat goes on
    assert wait_answer(qtbot, view).status != ERROR


def test_a_library_import_failure_reaches_the_chat_and_the_panel(qtbot, tmp_path, embedder, monkeypatch):
    service = LibraryService(tmp_path / "library", embedder)
    qtbot.waitUntil(lambda: service.library is not None, timeout=120_000)

    def broken() -> None:
        raise ImportError("chromadb is damaged")

    monkeypatch.setattr(heavy_imports, "ensure", broken)
    prompts, indexed, jobs = [], [], []
    service.jobChanged.connect(jobs.append)
    service.build_prompt(PromptRequest("Hi", [], [], search=True, system=None), lambda *args: prompts.append(args))
    (tmp_path / "note.txt").write_text("a note")
    service.index([tmp_path / "note.txt"], indexed.append)
    qtbot.waitUntil(lambda: bool(prompts) and bool(indexed), timeout=10_000)
    with qtbot.waitSignal(service.closed, timeout=60_000):
        service.close()
    assert service.library is None
    assert prompts[0][0] is None and "chromadb is damaged" in prompts[0][1]
    assert indexed == [[]] and [j.state for j in jobs] == [JOB_FAILED] and "chromadb is damaged" in jobs[0].error


def test_a_failed_reload_forgets_the_old_engines_stats(qtbot, make_window, monkeypatch):
    window = make_window()
    qtbot.waitUntil(lambda: "max_model_len" in window.bridge.last_stats, timeout=10_000)
    assert window.kv.isVisible()

    def broken(spec):
        raise RuntimeError("the new model is broken")

    monkeypatch.setattr(engine_bridge, "open_backend", broken)
    window.bridge.start(LocalSpec(), "broken model")
    qtbot.waitUntil(lambda: window.bridge.state == FAILED, timeout=10_000)
    assert window.bridge.last_stats == {} and not window.kv.isVisible()
    assert "the new model is broken" in window.banner.text.text()
