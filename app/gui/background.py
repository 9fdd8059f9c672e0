"""Work off the GUI thread, results back on it: the one way the window's services do either.

In the way of Anki's `TaskManager.run_in_background`: `Background(owner).run(fn, on_done,
on_error)` calls `fn` on another thread (a `Worker`, in order with that worker's other jobs, or a
thread of its own) and then `on_done(result)` or `on_error(exception)` in the GUI thread.
`call_soon(fn, *args)` is the same delivery for callbacks that arrive on someone else's thread
(the engine's). Deliveries go through a queued signal of a QObject that is the owner's child, so
once the owner is deleted they are dropped, never run against a dead widget.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from functools import partial

from PySide6.QtCore import QObject, Qt, Signal, Slot

log = logging.getLogger(__name__)


class Worker:
    """A thread that runs posted jobs one after another, for work that must keep its order."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def post(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def finish(self) -> None:
        """End the thread once the jobs already posted have run (jobs posted later never run).
        Returns at once, so the GUI thread can call it; `join` waits."""
        self._jobs.put(None)

    def join(self, timeout: float | None) -> bool:
        """Wait for a `finish`ed worker's thread to end; True once it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()  # `Background.run` jobs never raise: their errors are delivered


class Background(QObject):
    _deliver = Signal(object)  # a callable to run in the GUI thread

    def __init__(self, owner: QObject) -> None:
        """Must be made in the GUI thread."""
        super().__init__(owner)
        self._deliver.connect(self._call, Qt.ConnectionType.QueuedConnection)

    def call_soon(self, fn: Callable, *args) -> None:
        """From any thread: `fn(*args)` in the GUI thread, unless the owner is gone by then."""
        try:
            self._deliver.emit(partial(fn, *args))
        except RuntimeError:  # the owner (and this object) was deleted: nobody is listening
            pass

    def run(self, fn: Callable[[], object], on_done: Callable[[object], None] | None = None,
            on_error: Callable[[Exception], None] | None = None, *, worker: Worker | None = None,
            name: str = "folio-background") -> None:
        """`fn()` off the GUI thread, then `on_done(result)` or `on_error(error)` in it. Without
        `on_error`, a failure is logged with its traceback."""

        def job() -> None:
            try:
                result = fn()
            except Exception as e:
                if on_error is None:
                    log.error("background job %s failed", name, exc_info=e)
                else:
                    self.call_soon(on_error, e)
                return
            if on_done is not None:
                self.call_soon(on_done, result)

        if worker is not None:
            worker.post(job)
        else:
            threading.Thread(target=job, name=name, daemon=True).start()

    @Slot(object)
    def _call(self, job: Callable[[], None]) -> None:
        """A declared slot: a plain method is reached through PySide's shared receiver objects,
        which the GUI thread changes as it deletes objects while other threads emit into them
        (a crash seen at window close; PYSIDE-3124)."""
        job()
