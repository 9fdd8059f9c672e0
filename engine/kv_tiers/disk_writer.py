"""The background thread that writes blocks to disk, so that no step ever waits for the disk.

The engine copies a block into one of a fixed number of staging rows (pinned on CUDA, filled by
an asynchronous copy whose event the thread waits for) and queues it. When every row is taken
the block is dropped, not waited for: it stays on the device, and a later request over the same
prefix offers it again.
"""
from __future__ import annotations

import atexit
import logging
import queue
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from engine.kv_tiers.disk_store import DiskKVStore

log = logging.getLogger(__name__)
EXIT_DRAIN_S = 10.0  # at interpreter exit, blocks still queued get this long to reach the disk


@dataclass
class WriteJob:
    row: int
    key: int
    parent_key: int
    digest: bytes
    tokens: np.ndarray
    event: torch.cuda.Event | None = None  # the copy into the row; None when it was synchronous


class DiskWriter:
    def __init__(self, store: DiskKVStore, num_rows: int, pin: bool) -> None:
        self.store = store
        self.num_rows = num_rows
        self.pin = pin
        self.staging: torch.Tensor | None = None  # uint8 [num_rows, block bytes]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for row in range(num_rows):
            self._free.put(row)
        self._jobs: queue.Queue[WriteJob | None] = queue.Queue()
        self.num_written = self.num_dropped = self.num_failed = 0
        self._thread = threading.Thread(target=self._run, name="folio-kv-writer", daemon=True)
        self._thread.start()
        ref = weakref.ref(self)
        atexit.register(lambda: (w := ref()) is not None and w.drain(EXIT_DRAIN_S))

    def rows(self) -> torch.Tensor:
        if self.staging is None:
            self.staging = torch.empty((self.num_rows, self.store.layout.nbytes), dtype=torch.uint8,
                                       pin_memory=self.pin)
        return self.staging

    def take_row(self) -> int | None:
        """A free staging row, or None (the caller drops the block)."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            self.num_dropped += 1
            return None

    def submit(self, job: WriteJob) -> None:
        self._jobs.put(job)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued block is written; False on timeout."""
        with self._jobs.all_tasks_done:
            return self._jobs.all_tasks_done.wait_for(lambda: self._jobs.unfinished_tasks == 0, timeout)

    def close(self, timeout: float | None = None) -> None:
        self.drain(timeout)
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if job.event is not None:
                    job.event.synchronize()
                ok = self.store.write(job.key, job.parent_key, job.digest, job.tokens, self.staging[job.row].numpy())
                self.num_written += ok
                self.num_failed += not ok
            except Exception:  # a bug here must not take the engine down: the block stays off disk
                log.exception("writing a KV block to disk failed")
                self.num_failed += 1
            finally:
                self._free.put(job.row)
                self._jobs.task_done()
        self._jobs.task_done()
