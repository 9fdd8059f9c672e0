"""The background thread that reads blocks from disk into RAM slots, so that no step waits for it.

A prefix found on disk is read in one `DiskRead`: consecutive blocks, each into a RAM slot the
engine reserved for it beforehand. The engine thread owns the slots' bookkeeping; this thread only
fills their bytes and counts how many of the blocks it read whole and checked (`num_read`). It
stops at the first block it cannot read (missing, damaged, another model's, or any error): the
blocks from there on are computed, as a miss. The engine collects finished reads with
`completed()` once per schedule.

The queue is bounded by the RAM slots: a read is queued only with its slots reserved, so at most
that many blocks are ever waiting to be read.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from engine.kv_tiers.disk_store import DiskKVStore

log = logging.getLogger(__name__)


@dataclass
class BlockRead:
    """One block of a read: which file (key and what it must hold) and the RAM slot it goes to."""

    key: int
    parent_key: int
    digest: bytes
    tokens: np.ndarray
    slot: int
    row: np.ndarray  # the slot's bytes (uint8), taken by the engine thread


@dataclass
class DiskRead:
    """Blocks of one prefix, in order. `num_read` is written by the reader only; `cancelled`,
    `waiters` and `collected` by the engine thread only."""

    blocks: list[BlockRead]
    num_read: int = 0  # blocks[:num_read] are in their slots, whole and checked
    cancelled: bool = False  # nobody waits for it any more: stop after the block being read
    waiters: int = 0  # sequences waiting for it (see KVTiers)
    collected: bool = False  # the engine has taken its result: its slots are ordinary RAM slots

    @property
    def slots(self) -> list[int]:
        return [b.slot for b in self.blocks]


@dataclass
class _Queue:
    reads: deque[DiskRead] = field(default_factory=deque)  # queued or being read, oldest first
    done: list[DiskRead] = field(default_factory=list)  # finished, not collected yet
    closed: bool = False


class DiskReader:
    def __init__(self, store: DiskKVStore, start_thread: bool = True) -> None:
        """Without the thread (`start_thread=False`, tests) queued reads advance only in
        `run_queued`, block by block, on the caller's thread."""
        self.store = store
        self._q = _Queue()
        self._cond = threading.Condition()
        self.num_reads = self.num_blocks_read = self.num_failed = 0
        self._thread = None
        if start_thread:
            self._thread = threading.Thread(target=self._run, name="folio-kv-reader", daemon=True)
            self._thread.start()

    @property
    def num_in_flight(self) -> int:
        """Reads queued, being read, or finished and not collected."""
        with self._cond:
            return len(self._q.reads) + len(self._q.done)

    def submit(self, read: DiskRead) -> None:
        with self._cond:
            self._q.reads.append(read)
            self._cond.notify_all()

    def run(self, read: DiskRead) -> None:
        """Read it here and now (the caller waits: the benchmark's baseline)."""
        self._read_all(read)
        with self._cond:
            self._q.done.append(read)
            self.num_reads += 1

    def run_queued(self, max_blocks: int | None = None) -> None:
        """Without the thread: read up to `max_blocks` blocks (all when None) of the queued reads."""
        assert self._thread is None, "the reader thread reads the queue"
        n = 0
        while self._q.reads and (max_blocks is None or n < max_blocks):
            read = self._q.reads[0]
            if read.num_read == 0:
                self._prefetch(read)
            more = self._read_block(read)
            n += 1
            if not more:
                self._finish(read)

    def completed(self) -> list[DiskRead]:
        """The reads finished since the last call (engine thread)."""
        with self._cond:
            done, self._q.done = self._q.done, []
        return done

    def wait(self, timeout: float) -> bool:
        """Wait until a read finishes (or `timeout`); whether one is finished and not collected."""
        with self._cond:
            return self._cond.wait_for(lambda: self._q.done or self._q.closed, timeout) and bool(self._q.done)

    def close(self) -> None:
        with self._cond:
            self._q.closed = True
            for read in self._q.reads:
                read.cancelled = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ reading

    def _prefetch(self, read: DiskRead) -> None:
        self.store.prefetch([b.key for b in read.blocks])

    def _read_all(self, read: DiskRead) -> None:
        """Every block of `read` it can (it stops at the first it cannot read, or when cancelled)."""
        self._prefetch(read)
        while self._read_block(read):
            pass

    def _read_block(self, read: DiskRead) -> bool:
        """Read the next block of `read`; whether there is one more to read after it."""
        if read.cancelled or read.num_read >= len(read.blocks):
            return False
        b = read.blocks[read.num_read]
        try:
            ok = self.store.read_into(b.key, b.parent_key, b.digest, b.tokens, b.row)
        except Exception:  # a bug or an odd disk error: a miss, never a stuck request
            log.exception("reading a KV block from disk failed")
            ok = False
        if not ok:
            self.num_failed += 1
            return False
        read.num_read += 1
        self.num_blocks_read += 1
        return read.num_read < len(read.blocks)

    def _finish(self, read: DiskRead) -> None:
        with self._cond:
            self._q.reads.popleft()
            self._q.done.append(read)
            self.num_reads += 1
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._q.reads or self._q.closed)
                if self._q.closed and not self._q.reads:
                    return
                read = self._q.reads[0]
            self._read_all(read)
            self._finish(read)
