"""The one place where engine callbacks become Qt signals.

The engine (an `EngineThread`, or anything with its `submit`/`stats`/`wait_ready`/`shutdown`
surface, such as a remote OpenAI-style backend) calls back on its own thread. Those callbacks only
emit the bridge's private signals, which are connected with `Qt.QueuedConnection`, so every slot
runs in the GUI thread, and the GUI thread never blocks on the engine: loading and waiting happen
in a short-lived loader thread, and stats are read from the engine's cached copy.

Callbacks carry a generation key, never the `Generation` QObject itself: a QObject must die in the
thread it lives in, and the engine thread may hold its callbacks longer than the GUI holds the
generation.
"""
from __future__ import annotations

import itertools
import logging
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QObject, Qt, QTimer, Signal

from app.gui import heavy_imports

log = logging.getLogger(__name__)

IDLE, LOADING, READY, FAILED = "idle", "loading", "ready", "failed"
STATS_INTERVAL_MS = 250


@dataclass
class GenerationResult:
    text: str
    finish_reason: str | None  # "stop", "length", "abort"...
    metrics: object | None     # engine.RequestMetrics; None when cancelled before it reached the engine


def user_message(error: BaseException) -> str:
    """An engine error in words for the person at the window (the traceback goes to the log)."""
    torch = sys.modules.get("torch")
    out_of_memory = (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError)) if torch else (MemoryError,)
    if isinstance(error, out_of_memory):
        return ("The device ran out of memory. Try a shorter context length, a smaller KV memory fraction, "
                "or the CPU (Settings).")
    name = type(error).__name__
    if name == "ModelLoadError":
        return f"Cannot load the model: {error}"
    if isinstance(error, (ValueError, RuntimeError)):
        return str(error) or name
    return f"{name}: {error}"


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
        self.params = params
        self.text = ""
        self.done = False
        self.cancelled = False
        self.handle = None  # the engine's RequestHandle, once submitted

    def cancel(self) -> None:
        """Stop generating; `finished` follows with the text so far (finish reason "abort")."""
        if self.done or self.cancelled:
            return
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()
        else:  # never reached the engine: finish now, but from the event loop like every other end
            QTimer.singleShot(0, self, lambda: self._bridge._end(self, GenerationResult(self.text, "abort", None)))

    # GUI-thread side, called by the bridge
    def _delta(self, text: str) -> None:
        if not self.done:
            self.text += text
            self.delta.emit(text)


class EngineBridge(QObject):
    """Owns the current engine-like object, loads and replaces it in the background, submits
    requests, and republishes its stats a few times a second."""

    stateChanged = Signal(str, str)  # state, detail (the model's description, or the error message)
    statsChanged = Signal(object)    # the engine's stats() dict

    _engineEvent = Signal(int, str, object)  # key, "delta" | "finish" | "error", payload
    _loadDone = Signal(int, object, str, bool)  # epoch, engine or None, error message, owned

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = None
        self.state = IDLE
        self.detail = ""
        self.last_stats: dict = {}
        self._owned = False
        self._epoch = 0
        self._keys = itertools.count()
        self._active: dict[int, Generation] = {}  # submitted or waiting for the engine
        self._engineEvent.connect(self._on_engine_event, Qt.ConnectionType.QueuedConnection)
        self._loadDone.connect(self._on_load_done, Qt.ConnectionType.QueuedConnection)
        self._stats_timer = QTimer(self)
        self._stats_timer.setInterval(STATS_INTERVAL_MS)
        self._stats_timer.timeout.connect(self._poll_stats)

    # ------------------------------------------------------------------ engine lifetime

    def start(self, factory: Callable[[], object], description: str = "", owned: bool = True) -> None:
        """Load a new engine in the background (`factory` runs off the GUI thread: importing
        torch and constructing the engine take seconds), replacing the current one."""
        self._retire_engine()
        self._epoch += 1
        self._owned = owned
        self._set_state(LOADING, description)
        threading.Thread(target=self._load, args=(self._epoch, factory, owned), name="folio-engine-loader",
                         daemon=True).start()

    def use(self, engine, description: str = "") -> None:
        """Adopt an engine made elsewhere (shared by tests); the bridge never shuts it down."""
        self.start(lambda: engine, description, owned=False)

    def shutdown(self, timeout: float = 2.0) -> None:
        """At exit: cancel everything, stop an engine this bridge made."""
        self._stats_timer.stop()
        for generation in list(self._active.values()):
            generation.cancel()
        engine, owned = self.engine, self._owned
        self.engine = None
        self._epoch += 1  # a load still in flight is thrown away when it lands
        if engine is not None and owned:
            engine.shutdown(timeout)

    def _load(self, epoch: int, factory: Callable[[], object], owned: bool) -> None:  # loader thread
        engine, error = None, ""
        try:
            heavy_imports.ensure()  # not while the indexing worker imports the same libraries
            engine = factory()
            engine.wait_ready()
        except BaseException as e:  # shown to the user; the window stays usable
            log.exception("loading the engine failed")
            if engine is not None:
                _shutdown_quietly(engine, owned)
            engine, error = None, user_message(e)
        try:
            self._loadDone.emit(epoch, engine, error, owned)
        except RuntimeError:  # the window closed while the model loaded
            if engine is not None:
                _shutdown_quietly(engine, owned)

    def _on_load_done(self, epoch: int, engine, error: str, owned: bool) -> None:
        if epoch != self._epoch:  # replaced while loading
            if engine is not None:
                _stop_in_background(engine, owned)
            return
        if engine is None:
            self._set_state(FAILED, error)
            for generation in list(self._active.values()):
                self._end(generation, error=f"No model is loaded. {error}")
            return
        self.engine = engine
        self._set_state(READY, _describe(engine) or self.detail)
        self._stats_timer.start()
        self._poll_stats(always=True)  # even unchanged or empty (a remote's): the window's status line waits on it
        for generation in list(self._active.values()):
            if generation.handle is None and not generation.cancelled:
                self._submit(generation)

    def _retire_engine(self) -> None:
        """Cancel what runs on the current engine and stop it off the GUI thread. Requests not
        yet submitted stay queued for the next engine."""
        old, owned = self.engine, self._owned
        self.engine = None
        self.last_stats = {}  # the old engine's context length and KV pool no longer apply
        self._stats_timer.stop()
        for generation in list(self._active.values()):
            if generation.handle is not None:
                generation.cancel()
        if old is not None:
            _stop_in_background(old, owned)

    def _set_state(self, state: str, detail: str) -> None:
        log.info("engine %s: %s", state, detail)
        self.state, self.detail = state, detail
        self.stateChanged.emit(state, detail)

    # ------------------------------------------------------------------ requests

    def submit(self, messages: list[dict], params: dict) -> Generation:
        """Start an answer now, or as soon as the engine is ready. Never blocks. `params` are
        `SamplingParams` keyword arguments: the object is made once the engine (and torch) is
        loaded, so the GUI thread never imports torch."""
        generation = Generation(next(self._keys), messages, params, self)
        self._active[generation.key] = generation
        if self.state == FAILED:
            QTimer.singleShot(0, self, lambda: self._fail_unloaded(generation))
        elif self.engine is not None:
            self._submit(generation)
        return generation

    def _fail_unloaded(self, generation: Generation) -> None:
        self._end(generation, error=f"No model is loaded. {self.detail}")

    def _end(self, generation: Generation, result: GenerationResult | None = None, error: str | None = None) -> None:
        """Every way a generation ends comes here: it leaves `_active`, fires its one last signal,
        lets go of its prompt (pinned documents and all) and its engine handle (which queues every
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
        key, event = generation.key, self._engineEvent

        def post(kind: str, payload) -> None:  # engine thread: must never raise into the engine
            try:
                event.emit(key, kind, payload)
            except RuntimeError:  # the bridge is gone (its window closed): nobody is listening
                pass

        try:
            from engine import SamplingParams  # already imported by the loader: instant
            generation.handle = self.engine.submit(
                generation.messages, SamplingParams(**generation.params),
                on_delta=lambda text: post("delta", text),
                on_finish=lambda output: post("finish", output),
                on_error=lambda error: post("error", error))
        except Exception as e:  # e.g. a remote backend refusing at once
            log.exception("submit failed")
            self._end(generation, error=user_message(e))

    def _on_engine_event(self, key: int, kind: str, payload) -> None:
        generation = self._active.get(key)
        if generation is None:
            return
        if kind == "delta":
            generation._delta(payload)
            return
        if kind == "finish":
            self._end(generation, GenerationResult(payload.text, payload.finish_reason, payload.metrics))
        else:
            if not isinstance(payload, (ValueError, MemoryError)):
                log.error("generation failed", exc_info=payload)
            self._end(generation, error=user_message(payload))

    # ------------------------------------------------------------------ stats

    def _poll_stats(self, always: bool = False) -> None:
        if self.engine is None:
            return
        stats = self.engine.stats()
        if always or stats != self.last_stats:
            self.last_stats = stats
            self.statsChanged.emit(stats)


def _describe(engine) -> str:
    """"model on device" for an EngineThread; remote backends may offer `describe()`."""
    describe = getattr(engine, "describe", None)
    if callable(describe):
        return str(describe())
    inner = getattr(engine, "engine", None)
    path, config = getattr(inner, "model_path", None), getattr(inner, "config", None)
    if path is None or config is None:
        return ""
    name = re.sub(r"-[0-9a-f]{16}$", "", path.name)  # a converted GGUF's cache folder ends in its hash
    return f"{name} on {config.device}"


def _stop_in_background(engine, owned: bool) -> None:
    """`shutdown` joins the engine thread: never in the GUI thread."""
    if owned:
        threading.Thread(target=_shutdown_quietly, args=(engine, owned), name="folio-engine-stop", daemon=True).start()


def _shutdown_quietly(engine, owned: bool) -> None:
    if not owned:
        return
    try:
        engine.shutdown()
    except Exception:
        log.exception("stopping the engine failed")
