"""The one place where backend callbacks become Qt signals.

The backend (local or remote, see `app.backends`) calls back on its own thread. Those callbacks
go through the bridge's `Background`, so every slot runs in the GUI thread, and the GUI thread
never blocks on the backend: loading and stopping happen on the bridge's lifetime worker, in
order, and stats are read from the backend's cached copy.

Every backend the bridge opens is stopped and joined on that worker before `closed` fires: an
engine thread still stepping when the interpreter exits aborts the process (CPython ends a daemon
thread that wants the GIL back after finalization began with pthread_exit, whose unwinding through
torch's C++ frames calls std::terminate: "terminate called without an active exception").

Callbacks carry a generation key, never the `Generation` QObject itself: a QObject must die in the
thread it lives in, and the engine thread may hold its callbacks longer than the GUI holds the
generation.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from functools import partial

from PySide6.QtCore import QObject, QTimer, Signal

from app.backends import Backend, BackendSpec, is_user_error, open_backend, user_message
from app.gui import heavy_imports
from app.gui.background import Background, Worker

log = logging.getLogger(__name__)

IDLE, LOADING, READY, FAILED = "idle", "loading", "ready", "failed"
STATS_INTERVAL_MS = 250


@dataclass
class GenerationResult:
    text: str
    finish_reason: str | None  # "stop", "length", "abort"...
    metrics: object | None     # engine.RequestMetrics; None when cancelled before it reached the engine


class Generation(QObject):
    """One answer being generated. Its signals always fire in the GUI thread, in order: any number
    of `delta`, then exactly one of `finished` (also after `cancel`) or `failed`."""

    delta = Signal(str)
    finished = Signal(object)  # GenerationResult
    failed = Signal(str, str)  # user-facing message, the text streamed before the failure

    def __init__(self, key: int, messages: list[dict], params, bridge: EngineBridge) -> None:
        super().__init__(bridge)
        self.key = key
        self._bridge = bridge
        self.messages = messages
        self.params = params       # engine.SamplingParams
        self.text = ""
        self.done = False
        self.cancelled = False
        self.handle = None  # the backend's AnswerHandle, once submitted

    def cancel(self) -> None:
        """Stop generating; `finished` follows with the text so far (finish reason "abort")."""
        if self.done or self.cancelled:
            return
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()
        else:  # never reached the backend: finish now, but from the event loop like every other end
            QTimer.singleShot(0, self, lambda: self._bridge._end(self, GenerationResult(self.text, "abort", None)))

    # GUI-thread side, called by the bridge
    def _delta(self, text: str) -> None:
        if not self.done:
            self.text += text
            self.delta.emit(text)


class EngineBridge(QObject):
    """Owns the current backend, loads and replaces it in the background, submits requests, and
    republishes its stats a few times a second."""

    stateChanged = Signal(str, str)  # state, detail (the backend's description, or the error message)
    statsChanged = Signal(object)    # the backend's stats() dict
    closed = Signal()                # after `close`: every backend this bridge opened has stopped

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.backend: Backend | None = None
        self.state = IDLE
        self.detail = ""
        self.last_stats: dict = {}
        self._owned = False
        self._epoch = 0
        self._keys = itertools.count()
        self._active: dict[int, Generation] = {}  # submitted or waiting for the backend
        self._background = Background(self)
        self._lifetime = Worker("folio-engine-lifetime")  # loads and stops backends, one after another
        self._live: set[Backend] = set()  # opened by this bridge and not yet stopped; lifetime worker only
        self._stats_timer = QTimer(self)
        self._stats_timer.setInterval(STATS_INTERVAL_MS)
        self._stats_timer.timeout.connect(self._poll_stats)

    @property
    def remote(self) -> bool:
        """Whether answers come from another machine (whose KV memory is not ours to draw)."""
        return self.backend is not None and self.backend.remote

    def answering_on_gpu(self) -> bool:
        """Whether the local engine is answering on a GPU, so the library's embedder should leave
        that GPU to it (issue 14). Asked from the indexing worker before each embedding batch: it
        reads one reference and one dict's truth, both safe off the GUI thread."""
        backend = self.backend
        return (backend is not None and not backend.remote
                and str(getattr(backend, "device", "")).startswith("cuda") and bool(self._active))

    # ------------------------------------------------------------------ backend lifetime

    def start(self, spec: BackendSpec, description: str = "") -> None:
        """Open the backend `spec` names in the background (importing torch and loading a model
        take seconds), replacing the current one."""
        self._retire_backend()
        self._epoch += 1
        self._owned = True
        self._set_state(LOADING, description)
        epoch = self._epoch
        self._background.run(partial(self._load, epoch, spec), partial(self._on_loaded, epoch),
                             partial(self._on_load_failed, epoch), worker=self._lifetime)

    def use(self, backend: Backend, description: str = "") -> None:
        """Adopt a ready backend made elsewhere (shared by tests); the bridge never shuts it down."""
        self._retire_backend()
        self._epoch += 1
        self._owned = False
        self._set_state(LOADING, description)
        self._adopt(backend)

    def close(self) -> None:
        """At exit, without blocking: cancel every answer first (the engine then stops within a
        step), then stop every backend this bridge opened, a load still running included, on the
        lifetime worker. `closed` follows in the GUI thread; `wait_closed` waits where no event
        loop runs any more."""
        for generation in list(self._active.values()):
            generation.cancel()
        self._retire_backend()
        self._epoch += 1  # a load still in flight is stopped when it lands
        self._background.run(self._stop_all, lambda _: self.closed.emit(), worker=self._lifetime)
        self._lifetime.finish()

    def wait_closed(self, timeout: float | None) -> bool:
        """After `close`: wait until every backend this bridge opened has stopped (True) or
        `timeout` seconds have passed (False)."""
        return self._lifetime.join(timeout)

    # lifetime worker
    def _load(self, epoch: int, spec: BackendSpec) -> Backend | None:
        heavy_imports.ensure()  # not while the indexing worker imports the same libraries
        backend = open_backend(spec)
        self._live.add(backend)
        if epoch != self._epoch:  # replaced, or the window closed, while loading
            self._stop(backend)
            return None
        return backend

    def _stop(self, backend: Backend) -> None:
        """Stop and join `backend`, once (a retired backend and `close` may both ask)."""
        if backend in self._live:
            self._live.discard(backend)
            try:
                backend.shutdown(None)  # joined however long the engine's current step takes: it cannot be cut short
            except Exception:
                log.exception("stopping the backend failed")

    def _stop_all(self) -> None:
        for backend in list(self._live):  # e.g. one whose load landed after the window closed
            self._stop(backend)

    # GUI thread
    def _on_loaded(self, epoch: int, backend: Backend | None) -> None:
        if backend is None:
            return
        if epoch != self._epoch:  # replaced after the load's own check; `close` stops it if it came first
            self._lifetime.post(partial(self._stop, backend))
            return
        self._adopt(backend)

    def _on_load_failed(self, epoch: int, error: Exception) -> None:
        if epoch != self._epoch:
            return
        if not is_user_error(error):
            log.error("loading the backend failed", exc_info=error)
        message = user_message(error)
        self._set_state(FAILED, message)
        for generation in list(self._active.values()):
            self._end(generation, error=f"No model is loaded. {message}")

    def _adopt(self, backend: Backend) -> None:
        self.backend = backend
        self._set_state(READY, backend.describe() or self.detail)
        self._stats_timer.start()
        self._poll_stats(always=True)  # even unchanged or empty (a remote's): the window's status line waits on it
        for generation in list(self._active.values()):
            if generation.handle is None and not generation.cancelled:
                self._submit(generation)

    def _retire_backend(self) -> None:
        """Cancel what runs on the current backend and stop it on the lifetime worker (before the
        next one loads, so the two never share the memory). Requests not yet submitted stay
        queued for the next backend."""
        old, owned = self.backend, self._owned
        self.backend = None
        self.last_stats = {}  # the old backend's context length and KV pool no longer apply
        self._stats_timer.stop()
        for generation in list(self._active.values()):
            if generation.handle is not None:
                generation.cancel()
        if old is not None and owned:
            self._lifetime.post(partial(self._stop, old))

    def _set_state(self, state: str, detail: str) -> None:
        log.info("engine %s: %s", state, detail)
        self.state, self.detail = state, detail
        self.stateChanged.emit(state, detail)

    # ------------------------------------------------------------------ requests

    def submit(self, messages: list[dict], params) -> Generation:
        """Start an answer now, or as soon as the backend is ready. Never blocks. `params` is an
        `engine.SamplingParams` (importing it loads no torch)."""
        generation = Generation(next(self._keys), messages, params, self)
        self._active[generation.key] = generation
        if self.state == FAILED:
            QTimer.singleShot(0, self, lambda: self._fail_unloaded(generation))
        elif self.backend is not None:
            self._submit(generation)
        return generation

    def _fail_unloaded(self, generation: Generation) -> None:
        self._end(generation, error=f"No model is loaded. {self.detail}")

    def _end(self, generation: Generation, result: GenerationResult | None = None, error: str | None = None) -> None:
        """Every way a generation ends comes here: it leaves `_active`, fires its one last signal,
        lets go of its prompt (pinned documents and all) and its handle (which queues every
        delta), and is deleted once the event loop is back."""
        if generation.done:
            return
        generation.done = True
        self._active.pop(generation.key, None)
        if error is None:
            generation.finished.emit(result)
        else:
            generation.failed.emit(error, generation.text)
        generation.handle = None
        generation.messages = []
        generation.deleteLater()

    def _submit(self, generation: Generation) -> None:
        post = partial(self._background.call_soon, self._on_backend_event, generation.key)  # never raises
        try:
            generation.handle = self.backend.submit(
                generation.messages, generation.params, on_delta=partial(post, "delta"),
                on_finish=partial(post, "finish"), on_error=partial(post, "error"))
        except Exception as e:  # a bug: the contract says errors reach the handle
            log.exception("submit failed")
            self._end(generation, error=user_message(e))

    def _on_backend_event(self, key: int, kind: str, payload) -> None:
        generation = self._active.get(key)
        if generation is None:
            return
        if kind == "delta":
            generation._delta(payload)
        elif kind == "finish":
            self._end(generation, GenerationResult(payload.text, payload.finish_reason, payload.metrics))
        else:
            if not is_user_error(payload):
                log.error("generation failed", exc_info=payload)
            self._end(generation, error=user_message(payload))

    # ------------------------------------------------------------------ stats

    def _poll_stats(self, always: bool = False) -> None:
        if self.backend is None:
            return
        stats = self.backend.stats()
        if always or stats != self.last_stats:
            self.last_stats = stats
            self.statsChanged.emit(stats)
