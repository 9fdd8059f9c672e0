"""One background thread that owns the engine (and the device), for callers that must not block.

Any thread may `submit`; it returns at once with a `RequestHandle`. Loading, tokenizing, every
step and every callback happen on the engine thread, so callbacks must be quick and must not
touch GUI objects directly (the app marshals them with queued signals). Errors reach the
handle; nothing is swallowed.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from os import PathLike

from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)
Prompt = str | list[int] | list[dict]
_DONE = object()


class StepFailed(RuntimeError):
    """A step failed as a whole (the device ran out of memory, a CUDA error): every request in
    flight ends with this error, and the engine goes on with the next ones."""


class RequestHandle:
    """Streams one request's text. Use the callbacks, or iterate for deltas, or `result()`."""

    def __init__(self, request_id: str, engine_thread: EngineThread,
                 on_delta: Callable[[str], None] | None, on_finish: Callable[[RequestOutput], None] | None,
                 on_error: Callable[[BaseException], None] | None) -> None:
        self.request_id = request_id
        self._engine_thread = engine_thread
        self._on_delta, self._on_finish, self._on_error = on_delta, on_finish, on_error
        self._events: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self.output: RequestOutput | None = None
        self.error: BaseException | None = None

    def cancel(self) -> None:
        """Stop generating; the handle then finishes with reason "abort" and the text so far."""
        self._engine_thread._post(("cancel", self.request_id))

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> RequestOutput:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} still running after {timeout}s")
        if self.error is not None:
            raise self.error
        assert self.output is not None
        return self.output

    def __iter__(self) -> Iterator[str]:
        while (event := self._events.get()) is not _DONE:
            yield event
        if self.error is not None:
            raise self.error

    # engine-thread side
    def _delta(self, text: str) -> None:
        self._events.put(text)
        if self._on_delta:
            self._on_delta(text)

    def _finish(self, output: RequestOutput) -> None:
        self.output = output
        self._done.set()
        self._events.put(_DONE)
        if self._on_finish:
            try:
                self._on_finish(output)
            except Exception:  # the output is on the handle already; only the engine must go on
                log.exception("the on_finish callback of %s failed", self.request_id)

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self._done.set()
        self._events.put(_DONE)
        if self._on_error:
            try:
                self._on_error(error)
            except Exception:  # the error is on the handle already; only the engine must go on
                log.exception("the on_error callback of %s failed", self.request_id)


@dataclass
class _Submit:
    handle: RequestHandle
    prompt: Prompt
    params: SamplingParams


class EngineThread:
    """`EngineThread(model, **config)` starts loading in the background; `wait_ready()` waits
    for it (and raises a load error); `submit` works before that and queues."""

    STATS_INTERVAL_S = 0.2
    CLOSE_DRAIN_S = 5.0  # at shutdown, blocks on their way to disk get this long

    def __init__(self, model: str | PathLike | None = None, **config) -> None:
        self._commands: queue.Queue = queue.Queue()
        self._handles: dict[str, RequestHandle] = {}
        self._ids = itertools.count()
        self._ready = threading.Event()
        self._stats: dict[str, float] = {}
        self.engine: LLMEngine | None = None
        self.load_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(model, config), name="folio-engine", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> LLMEngine:
        if not self._ready.wait(timeout):
            raise TimeoutError("the engine is still loading")
        if self.load_error is not None:
            raise self.load_error
        assert self.engine is not None
        return self.engine

    def submit(self, prompt: Prompt, params: SamplingParams | None = None, *,
               on_delta: Callable[[str], None] | None = None,
               on_finish: Callable[[RequestOutput], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None) -> RequestHandle:
        """Queue a prompt: text, token ids, or chat messages ({"role", "content"} dicts)."""
        handle = RequestHandle(f"chat-{next(self._ids)}", self, on_delta, on_finish, on_error)
        self._post(_Submit(handle, prompt, params or SamplingParams()))
        return handle

    def stats(self) -> dict[str, float]:
        """The latest KV and scheduler numbers, refreshed a few times a second."""
        return dict(self._stats)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop after the step in flight and wait for the thread (by default for as long as that
        step takes: a process that exits while the thread is inside torch aborts)."""
        self._post(("stop", None))
        self._thread.join(timeout)

    def _post(self, command) -> None:
        self._commands.put(command)

    # ------------------------------------------------------------------ engine thread

    def _run(self, model, config) -> None:
        try:
            self.engine = LLMEngine(model, **config)
            self._stats = self.engine.stats()
        except BaseException as e:  # reported to every caller, never raised into the void
            self.load_error = e
        self._ready.set()
        last_stats = 0.0
        while True:
            engine_busy = self.engine is not None and self.engine.has_unfinished_requests()
            try:
                commands = [self._commands.get(block=not engine_busy)]
            except queue.Empty:
                commands = []
            while not self._commands.empty():
                commands.append(self._commands.get_nowait())
            for command in commands:
                if command == ("stop", None):
                    self._abort_all(RuntimeError("the engine was shut down"))
                    if self.engine is not None:
                        self.engine.close(self.CLOSE_DRAIN_S)
                    return
                self._handle(command)
            if self.engine is not None and self.engine.has_unfinished_requests():
                self._step()
            now = time.monotonic()
            if self.engine is not None and (not self.engine.has_unfinished_requests()
                                            or now - last_stats > self.STATS_INTERVAL_S):
                self._stats = self.engine.stats()  # refreshed before going idle, never left stale
                last_stats = now

    def _handle(self, command) -> None:
        if isinstance(command, _Submit):
            handle = command.handle
            if self.engine is None:
                handle._fail(self.load_error or RuntimeError("the engine is not loaded"))
                return
            try:
                ids = self.engine.tokenizer.prompt_ids(command.prompt)
                self.engine.add_request(ids, command.params, handle.request_id, stream=True)
            except Exception as e:
                handle._fail(e)
                return
            self._handles[handle.request_id] = handle
        else:
            _, request_id = command
            handle = self._handles.pop(request_id, None)
            if handle is not None and self.engine is not None:
                output = self.engine.abort_request(request_id)
                if output is not None:
                    handle._finish(output)

    def _step(self) -> None:
        assert self.engine is not None
        try:
            outputs = self.engine.step()
        except Exception as e:  # the device or the batch as a whole failed: nothing can go on
            log.exception("an engine step failed")
            what = "the device ran out of memory" if "out of memory" in str(e).lower() else "the engine step failed"
            failure = StepFailed(f"{what} while generating; every answer in progress stopped ({e})")
            self._abort_all(failure)
            return
        for out in outputs:
            handle = self._handles.get(out.request_id)
            if handle is None:
                continue
            if out.error is not None:  # this request alone failed; the engine freed it already
                del self._handles[out.request_id]
                handle._fail(out.error)
                continue
            try:
                if out.outputs[0].delta:
                    handle._delta(out.outputs[0].delta)
                if out.finished:
                    del self._handles[out.request_id]
                    handle._finish(out)
            except Exception as e:  # the caller's on_delta failed: stop that request, keep the engine
                self._handles.pop(out.request_id, None)
                self.engine.abort_request(out.request_id)
                handle._fail(e)

    def _abort_all(self, error: BaseException) -> None:
        """A failed step fails every request in it, and gives all their blocks back."""
        for request_id, handle in list(self._handles.items()):
            if self.engine is not None:
                self.engine.abort_request(request_id)
            handle._fail(error)
        self._handles.clear()
