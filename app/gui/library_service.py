"""The document library, off the GUI thread: indexing on one worker, questions on another.

`Library.add` (reading, chunking, embedding: seconds to minutes) runs on the indexing worker, one
file per call so every file has its own progress, its own cancel flag and its own error. Prompt
building (which embeds the question and searches) and small reads run on the query worker, so a
question never waits behind a long indexing job. The library's store and embedder are
thread-safe, so both workers share one `Library`.

Workers report through the service's `Background`; the public signals and the callbacks given to
`build_prompt`/`passage` always fire in the GUI thread.
"""
from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.gui import heavy_imports
from app.gui.background import Background, Worker

log = logging.getLogger(__name__)

QUEUED, READING, EMBEDDING = "queued", "reading", "embedding"
KEPT = ("added", "updated", "unchanged", "duplicate")  # outcomes that leave the file in the library
FAILED, CANCELLED = "failed", "cancelled"


@dataclass(frozen=True)
class FileJob:
    """One file's indexing, as the library panel shows it."""

    id: int
    path: Path
    state: str = QUEUED     # queued, reading, embedding, then one of KEPT, failed or cancelled
    fraction: float = 0.0   # of this file
    error: str | None = None
    doc_id: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in KEPT or self.state in (FAILED, CANCELLED)


@dataclass(frozen=True)
class PromptRequest:
    question: str
    history: list[dict]
    pinned_doc_ids: list[str]
    search: bool
    system: str | None        # None: rag's default system prompt
    max_context_tokens: int = 6000


class LibraryService(QObject):
    openFailed = Signal(str)
    documentsChanged = Signal(object)  # list[DocumentInfo]
    jobChanged = Signal(object)        # FileJob (a snapshot)
    closed = Signal()                  # after `close`: both workers are done and the library is closed

    def __init__(self, folder: Path, embedder=None, parent: QObject | None = None,
                 engine_busy: Callable[[], bool] | None = None) -> None:
        """`engine_busy()`, asked from the indexing worker before each embedding batch, says
        whether the local engine is answering; while it is, a GPU embedder leaves the GPU to it
        and embeds on the CPU (DESIGN.md: the embedder runs on the engine's device when it is idle)."""
        super().__init__(parent)
        self._engine_busy = engine_busy
        self.folder = folder
        self.library = None            # set on the query worker once open; read-only elsewhere
        self.error: str | None = None
        self.documents: list = []      # the latest list, as the GUI last heard it
        self.listed = False            # whether the GUI has heard the list once (else it is still loading)
        self.failed = False            # whether the GUI has heard that the library cannot be opened
        self._ready = threading.Event()
        self._cancels: dict[int, threading.Event] = {}
        self._cancels_lock = threading.Lock()
        self._job_ids = itertools.count(1)
        self._keys = itertools.count(1)
        self._callbacks: dict[int, Callable] = {}
        self._background = Background(self)
        self._query = Worker("folio-library-query")
        self._indexer = Worker("folio-indexing")
        self._background.run(lambda: self._open(embedder), worker=self._query)

    # ------------------------------------------------------------------ GUI-thread API

    def index(self, paths: list[Path], on_done: Callable[[list[str]], None] | None = None) -> None:
        """Add files and folders; `on_done(doc_ids)` gets the ids of the files now in the library."""
        key = self._remember(on_done)
        self._background.run(lambda: self._index(list(paths), key), worker=self._indexer)

    def cancel(self, job_id: int) -> None:
        with self._cancels_lock:
            flag = self._cancels.get(job_id)
        if flag is not None:
            flag.set()

    def cancel_all(self) -> None:
        with self._cancels_lock:
            flags = list(self._cancels.values())
        for flag in flags:
            flag.set()

    def remove(self, doc_id: str) -> None:
        self._background.run(lambda: self._remove(doc_id), worker=self._query)

    def build_prompt(self, request: PromptRequest, on_done: Callable[[object, str | None], None]) -> int:
        """`on_done(prompt, error)` later, in the GUI thread; returns a key for `forget`."""
        key = self._remember(on_done)
        self._background.run(lambda: self._build_prompt(request, key), worker=self._query)
        return key

    def passage(self, doc_id: str, start: int, end: int, on_done: Callable[[str | None], None]) -> None:
        """The text of [start, end) of a document, or None if it left the library."""
        key = self._remember(on_done)
        self._background.run(lambda: self._passage(doc_id, start, end, key), worker=self._query)

    def forget(self, key: int) -> None:
        """Drop a pending callback (its chat was closed or stopped)."""
        self._callbacks.pop(key, None)

    def close(self, after: Callable[[], object] | None = None) -> None:
        """At exit, without blocking: cancel the indexing, let each worker finish what it holds, and
        close the library on the query worker, once `after()` (called there) has returned. The
        window passes the engine's own wait: the embedder's native runtime (OpenVINO) and chromadb's
        are then torn down when no engine step computes beside them (CI saw the process segfault
        in that teardown while the engine ran a prefill step on the CPU). `closed` follows in the
        GUI thread; `wait_closed` waits where no event loop runs any more."""
        self.cancel_all()
        self._indexer.finish()
        self._background.run(lambda: self._close_library(after), lambda _: self.closed.emit(), worker=self._query)
        self._query.finish()

    def wait_closed(self, timeout: float | None) -> bool:
        """After `close`: True once both workers have ended (the library closed), False if
        `timeout` seconds passed first."""
        return self._indexer.join(timeout) and self._query.join(timeout)

    def _remember(self, callback: Callable | None) -> int:
        key = next(self._keys)
        if callback is not None:
            self._callbacks[key] = callback
        return key

    def _open_failed(self, message: str) -> None:
        self.failed = True
        self.openFailed.emit(message)

    def _documents_listed(self, documents: list) -> None:
        self.documents, self.listed = documents, True
        self.documentsChanged.emit(documents)

    def _call(self, key: int, *args) -> None:
        callback = self._callbacks.pop(key, None)
        if callback is not None:
            callback(*args)

    def _job_changed(self, job: FileJob) -> None:
        self.jobChanged.emit(job)

    def _call_back(self, key: int, *args) -> None:  # worker side
        self._background.call_soon(self._call, key, *args)

    # ------------------------------------------------------------------ query worker

    def _close_library(self, after: Callable[[], object] | None) -> None:
        self._indexer.join(None)  # its last file, cancelled, may still be writing to the library
        if after is not None:
            after()
        if self.library is not None:
            self.library.close()
            self.library = None

    def _open(self, embedder) -> None:
        try:
            heavy_imports.ensure()  # chromadb: not while the engine imports transformers
            from rag import Embedder, Library
            if embedder is None:
                busy = self._engine_busy
                embedder = Embedder(may_use_device=(lambda: not busy()) if busy else None)
            self.library = Library(self.folder, embedder=embedder)
        except Exception as e:  # a damaged library must not stop chatting
            log.exception("opening the library failed")
            self.error = f"The document library at {self.folder} cannot be opened: {e}"
            self._ready.set()  # after `error` is set: the indexing worker reads it once this is set
            self._background.call_soon(self._open_failed, self.error)
            return
        self._ready.set()
        self._background.call_soon(self._documents_listed, self.library.documents())
        try:
            self.library.embedder.count_tokens("warm up")  # the tokenizer: every prompt counts its tokens
            if not self.library.is_empty():
                # the model too, now rather than on the first question: on the first launch that
                # is a conversion that takes the CPU for seconds, which an answer would share.
                # An empty library loads it when the first document is indexed instead.
                self.library.embedder.model  # noqa: B018
        except Exception:
            log.exception("loading the embedding model failed")

    def _build_prompt(self, request: PromptRequest, key: int) -> None:
        try:  # an import failure too must reach the callback, or the chat waits forever
            heavy_imports.ensure()  # the question is embedded: not while the engine imports transformers
            from rag import DEFAULT_SYSTEM_PROMPT, build_prompt
            system = DEFAULT_SYSTEM_PROMPT if request.system is None else request.system
            prompt = build_prompt(request.question, request.history, library=self.library,
                                  pinned_doc_ids=request.pinned_doc_ids, search=request.search,
                                  system=system, max_context_tokens=request.max_context_tokens)
        except Exception as e:
            log.exception("building the prompt failed")
            self._call_back(key, None, f"Searching the library failed: {e}")
            return
        self._call_back(key, prompt, None)

    def _passage(self, doc_id: str, start: int, end: int, key: int) -> None:
        text = None
        if self.library is not None:
            try:
                text = self.library.document_text(doc_id)[0][start:end]
            except KeyError:
                pass
        self._call_back(key, text)

    def _remove(self, doc_id: str) -> None:
        if self.library is None:
            return
        try:
            self.library.remove(doc_id)
        except KeyError:
            pass
        self._background.call_soon(self._documents_listed, self.library.documents())

    # ------------------------------------------------------------------ indexing worker

    def _index(self, paths: list[Path], key: int) -> None:
        self._ready.wait()
        try:  # an import failure too must end the jobs and reach the callback, or the panel waits forever
            heavy_imports.ensure()  # embedding loads MiniLM: not while the engine imports transformers
            from rag.library import expand
        except Exception as e:
            log.exception("indexing could not start")
            for path in paths:
                failed = FileJob(next(self._job_ids), path, FAILED, 1.0, f"Cannot index {path.name}: {e}")
                self._background.call_soon(self._job_changed, failed)
            self._call_back(key, [])
            return
        jobs = [FileJob(next(self._job_ids), p) for p in expand(paths)]
        flags = {job.id: threading.Event() for job in jobs}
        with self._cancels_lock:
            self._cancels.update(flags)
        for job in jobs:
            self._background.call_soon(self._job_changed, job)
        kept: list[str] = []
        for job in jobs:
            job = self._index_file(job, flags[job.id])
            if job.doc_id and job.state in KEPT:
                kept.append(job.doc_id)
            with self._cancels_lock:
                self._cancels.pop(job.id, None)
        self._call_back(key, kept)

    def _index_file(self, job: FileJob, cancel: threading.Event) -> FileJob:
        if self.library is None:
            job = replace(job, state=FAILED, error=self.error or "the document library is not open", fraction=1.0)
        elif cancel.is_set():
            job = replace(job, state=CANCELLED, fraction=1.0)
        else:
            def progress(p) -> None:
                if p.stage in (READING, EMBEDDING):
                    moved = replace(job, state=p.stage, fraction=_overall(p.stage, p.fraction))
                    self._background.call_soon(self._job_changed, moved)

            try:
                result = self.library.add([job.path], progress=progress, cancel=cancel).results[0]
                job = replace(job, state=result.status, error=result.error, doc_id=result.doc_id, fraction=1.0)
            except Exception as e:  # a bug or a full disk: this file fails, the others go on
                log.exception("indexing %s failed", job.path)
                job = replace(job, state=FAILED, error=f"{job.path.name}: {e}", fraction=1.0)
        if job.state in ("added", "updated"):  # the list first: a row that says "added" is in it
            self._background.call_soon(self._documents_listed, self.library.documents())
        self._background.call_soon(self._job_changed, job)
        return job


def _overall(stage: str, fraction: float) -> float:
    """Reading is quick next to embedding: give it the first tenth of the bar."""
    return 0.1 * fraction if stage == READING else 0.1 + 0.9 * fraction
