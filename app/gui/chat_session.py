"""One chat's behaviour: send, stream, stop, regenerate, edit and resend, and keep it all saved.

The session owns the chat's `ChatModel` and is the only writer of its rows in the history. An
answer goes: prompt built on the library's query worker -> submitted through the engine bridge ->
deltas appended to the model (and saved every SAVE_INTERVAL_MS, so a kill loses at most that
much) -> the final text, stats and sources saved in one write.
"""
from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer, Signal

from app.gui.chat_model import ChatModel
from app.gui.engine_bridge import LOADING, EngineBridge, Generation, GenerationResult
from app.gui.history import DEFAULT_TITLE, DOC_MODES, NO_DOCUMENTS, SEARCH, ChatRecord, History
from app.gui.library_service import LibraryService, PromptRequest
from app.gui.messages import DONE, ERROR, PENDING, STOPPED, STREAMING, AnswerStats, ChatMessage, SourceRef
from app.gui.settings import Settings

SAVE_INTERVAL_MS = 500
TITLE_CHARS = 40
DEFAULT_CONTEXT_TOKENS = 6000
CONTEXT_SAFETY = 0.85  # the library counts MiniLM word pieces, not the chat model's tokens


class ChatSession(QObject):
    busyChanged = Signal(bool)
    titleChanged = Signal(str)
    documentsChanged = Signal()   # the document mode or the pins
    answerEnded = Signal()        # an answer reached done, stopped or error

    def __init__(self, record: ChatRecord, history: History, bridge: EngineBridge, library: LibraryService,
                 settings: Callable[[], Settings], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.chat_id = record.id
        self.title = record.title
        self.doc_mode = record.doc_mode
        self.pinned_doc_ids = list(record.pinned_doc_ids)
        self.history, self.bridge, self.library, self.settings = history, bridge, library, settings
        self.model = ChatModel(self)
        self.model.load(history.messages(record.id))
        self.generation: Generation | None = None
        self._answer: ChatMessage | None = None
        self._sources: list = []           # rag Sources of the answer in progress
        self._prompt_key: int | None = None
        self.searched_pins: tuple = ()     # rag PinnedSearched of the last prompt: too long to read whole
        self._dirty = False
        self._save_timer = QTimer(self)
        self._save_timer.setInterval(SAVE_INTERVAL_MS)
        self._save_timer.timeout.connect(self._save_partial)

    @property
    def busy(self) -> bool:
        return self._answer is not None

    # ------------------------------------------------------------------ user actions

    def send(self, text: str) -> bool:
        """Ask `text`; False (and nothing happens) when it is blank or an answer is in progress."""
        text = text.strip()
        if not text or self.busy:
            return False
        self._add(ChatMessage("user", text))
        if self.title == DEFAULT_TITLE:
            first_line = text.splitlines()[0]
            self.rename(first_line if len(first_line) <= TITLE_CHARS else first_line[:TITLE_CHARS - 1] + "…")
        self._start_answer()
        return True

    def stop(self) -> None:
        if self._answer is None:
            return
        if self.generation is not None:
            self.generation.cancel()  # `finished` follows with the text so far
        else:  # still building the prompt: nothing reached the engine
            self.abandon()

    def abandon(self) -> None:
        """At exit: stop and save the answer now, without waiting for the engine's last word."""
        if self._answer is None:
            return
        if self.generation is not None:
            self.generation.cancel()
        if self._prompt_key is not None:
            self.library.forget(self._prompt_key)
        self._end(STOPPED)

    def regenerate(self) -> bool:
        """Answer the last question again."""
        if self.busy or len(self.model) < 2 or self.model[-1].role != "assistant":
            return False
        self._delete_from(len(self.model) - 1)
        self._start_answer()
        return True

    def edit_and_resend(self, index: int, text: str) -> bool:
        """Replace the question at `index` (and everything after it) with `text`, and ask it."""
        if self.busy or not text.strip() or self.model[index].role != "user":
            return False
        self._delete_from(index)
        return self.send(text)

    def rename(self, title: str) -> None:
        title = title.strip() or DEFAULT_TITLE
        if title != self.title:
            self.title = title
            self.history.rename_chat(self.chat_id, title)
            self.titleChanged.emit(title)

    def set_doc_mode(self, mode: str) -> None:
        if mode not in DOC_MODES:
            raise ValueError(f"unknown document mode {mode!r}")
        if mode != self.doc_mode:
            self.doc_mode = mode
            self._save_documents()

    def pin(self, doc_ids: list[str]) -> None:
        new = [d for d in doc_ids if d not in self.pinned_doc_ids]
        if new:
            self.pinned_doc_ids += new
            self._save_documents()

    def unpin(self, doc_id: str) -> None:
        if doc_id in self.pinned_doc_ids:
            self.pinned_doc_ids.remove(doc_id)
            self._save_documents()

    # ------------------------------------------------------------------ one answer

    def _start_answer(self) -> None:
        question = self.model[-1].content
        settings = self.settings()
        pins = [] if self.doc_mode == NO_DOCUMENTS else list(self.pinned_doc_ids)
        search = self.doc_mode == SEARCH
        request = PromptRequest(question, _paired_history(self.model.messages[:-1]), pins, search=search,
                                system=settings.system_prompt, max_context_tokens=self._context_budget(settings))
        self._answer = self._add(ChatMessage("assistant", "", PENDING))
        self._answer.waiting_for = ("Searching your documents…" if pins or (search and self.library.documents)
                                    else self._waiting_for_model())
        self._sources = []
        self.busyChanged.emit(True)
        self._prompt_key = self.library.build_prompt(request, self._on_prompt)

    def _waiting_for_model(self) -> str:
        return "Waiting for the model to load…" if self.bridge.state == LOADING else "Reading the question…"

    def _context_budget(self, settings: Settings) -> int:
        limit = self.bridge.last_stats.get("max_model_len")
        if not limit:
            return DEFAULT_CONTEXT_TOKENS
        return max(256, int((limit - settings.max_tokens) * CONTEXT_SAFETY))

    def _on_prompt(self, prompt, error: str | None) -> None:
        self._prompt_key = None
        if self._answer is None:
            return
        if prompt is None:
            self._end(ERROR, error)
            return
        self._sources = prompt.sources
        if prompt.searched_pins != self.searched_pins:
            self.searched_pins = prompt.searched_pins
            self.documentsChanged.emit()
        self._answer.waiting_for = self._waiting_for_model()
        self.model.touch(len(self.model) - 1)
        self.generation = self.bridge.submit(prompt.messages, self.settings().sampling_params())
        self.generation.delta.connect(self._on_delta)
        self.generation.finished.connect(self._on_finished)
        self.generation.failed.connect(self._on_failed)

    def _on_delta(self, text: str) -> None:
        if self._answer is None:
            return
        index = len(self.model) - 1
        if self._answer.status == PENDING:
            self._answer.status = STREAMING
            self.model.touch(index)
            self._save_timer.start()
        self.model.append_text(index, text)
        self._dirty = True

    def _on_finished(self, result: GenerationResult) -> None:
        if self._answer is None:
            return
        self._answer.content = result.text
        if result.metrics is not None:
            self._answer.stats = AnswerStats.from_metrics(result.metrics, result.finish_reason)
        self._end(STOPPED if result.finish_reason == "abort" else DONE)

    def _on_failed(self, message: str, partial: str) -> None:
        if self._answer is not None:
            self._answer.content = partial
            self._end(ERROR, message)

    def _end(self, status: str, error: str | None = None) -> None:
        """Save the answer's final state in one write and go idle."""
        answer, self._answer = self._answer, None
        self.generation = None
        self._save_timer.stop()
        self._dirty = False
        answer.status, answer.error = status, error
        answer.sources = self._source_refs(answer.content)
        self.history.save_message(answer)
        self.model.touch(self.model.index_of(answer))
        self.busyChanged.emit(False)
        self.answerEnded.emit()

    def _save_partial(self) -> None:
        if self._answer is not None and self._dirty:
            self.history.save_message(self._answer)
            self._dirty = False

    def _source_refs(self, answer_text: str) -> list[SourceRef]:
        if not self._sources:
            return []
        from rag import cited_sources  # already imported by the query worker
        cited = {s.number for s in cited_sources(answer_text, self._sources)}
        return [SourceRef(s.number, s.doc_id, str(s.source), s.page, s.snippet, s.pinned, s.number in cited,
                          s.start, s.end) for s in self._sources]

    # ------------------------------------------------------------------ storage

    def _add(self, message: ChatMessage) -> ChatMessage:
        self.history.add_message(self.chat_id, message)
        self.model.add(message)
        return message

    def _delete_from(self, index: int) -> None:
        message = self.model[index]
        if message.id is not None:
            self.history.delete_messages_from(self.chat_id, message.id)
        self.model.truncate(index)

    def _save_documents(self) -> None:
        self.history.set_documents(self.chat_id, self.doc_mode, self.pinned_doc_ids)
        self.documentsChanged.emit()


def _paired_history(messages: list[ChatMessage]) -> list[dict]:
    """Earlier turns for the prompt: each question with the answer it got. A question whose answer
    failed or came back empty is left out, so roles keep alternating."""
    out: list[dict] = []
    for question, answer in zip(messages, messages[1:], strict=False):
        if question.role == "user" and answer.role == "assistant" and answer.content.strip():
            out += [question.prompt_dict(), answer.prompt_dict()]
    return out
