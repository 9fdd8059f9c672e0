"""The persistent batch: one row per running sequence, holding what its steps share on the device.

A row keeps a sequence's sampling parameters, its seen-token mask (for the repetition penalty)
and its newest sampled token, from admission to finish. So a step sends the device only what
changed: rows that were assigned since the last step, and the step's own positions and slots.
Host mirrors of the parameter arrays are copied over in one go when a row changes.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from kernels.sampling import SamplingState
from engine.sequence import Sequence


class InputBatch:
    def __init__(self, max_rows: int, vocab: int, device: torch.device, max_blocks_per_seq: int,
                 block_size: int) -> None:
        self.device = device
        self.max_rows = max_rows
        self.scratch_row = max_rows  # CUDA-graph padding samples write here
        self.state = SamplingState.allocate(max_rows + 1, vocab, device)
        # Each row's block table on the device, kept in step with the sequence's by sending only
        # what changed: new rows whole, grown tables their new entries, copied-on-write ones whole.
        self.width = max_blocks_per_seq + 1
        self.block_tables = torch.zeros(max_rows + 1, self.width, dtype=torch.int32, device=device)
        # The keys a row's table can address: what the attention kernels' key splits are sized for,
        # the same for eager steps and graphs so that both compute the same bits.
        self.max_context = self.width * block_size
        self._synced_len = [0] * (max_rows + 1)
        self._synced_version = [-1] * (max_rows + 1)
        pin = device.type == "cuda"
        names = [name for name, t in vars(self.state).items() if t.dim() == 1 and name != "last_token"]
        self._host = {name: torch.zeros(max_rows + 1, dtype=getattr(self.state, name).dtype) for name in names}
        # Copies to the device go from one of two pinned snapshots: a copy still queued behind the
        # running step reads its snapshot, never a row changed for the next step.
        self._staging = [{name: torch.empty_like(t, pin_memory=pin) for name, t in self._host.items()}
                         for _ in range(2)]
        self._turn = 0
        self._host["top_p"].fill_(1.0)
        self._host["penalty"].fill_(1.0)
        self._free = list(range(max_rows - 1, -1, -1))
        self._dirty = False
        self._seen_inits: list[tuple[int, Sequence | int]] = []  # (row, sequence to read, or row to copy)
        self._rng = random.Random()

    @property
    def num_free(self) -> int:
        return len(self._free)

    def assign(self, seq: Sequence) -> None:
        """Give a sequence a row and record its sampling parameters there."""
        row = self._take(seq)
        if seq.params.repetition_penalty != 1.0:
            self._seen_inits.append((row, seq))

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """A row for a sample forked from `parent`: same parameters, its own seed, parent's seen tokens."""
        row = self._take(child)
        if child.params.repetition_penalty != 1.0:
            self._seen_inits.append((row, parent.row))

    def release(self, seq: Sequence) -> None:
        if seq.row is not None:
            self._free.append(seq.row)
            seq.row = None
            seq.row_has_token = False

    def _take(self, seq: Sequence) -> int:
        assert seq.row is None and self._free, "no free row: max_num_seqs is enforced by the scheduler"
        row = self._free.pop()
        seq.row, seq.row_has_token = row, False
        self._synced_version[row] = -1
        p, h = seq.params, self._host
        h["temperature"][row] = p.temperature
        h["top_k"][row] = min(p.top_k, 2**31 - 1)
        h["top_p"][row] = p.top_p
        h["min_p"][row] = p.min_p
        h["penalty"][row] = p.repetition_penalty
        h["seed"][row] = (p.seed + seq.sample_index) if p.seed is not None else self._rng.getrandbits(63)
        self._dirty = True
        return row

    def table_updates(self, seqs: list[Sequence]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(rows, columns, block ids) to write so the device tables match these sequences'."""
        rows, cols, blocks = [], [], []
        for seq in seqs:
            row, table = seq.row, seq.block_table
            start = 0 if self._synced_version[row] != seq.table_version else self._synced_len[row]
            if start < len(table):
                rows.append(np.full(len(table) - start, row, dtype=np.int64))
                cols.append(np.arange(start, len(table), dtype=np.int64))
                blocks.append(np.asarray(table[start:], dtype=np.int64))
            self._synced_len[row], self._synced_version[row] = len(table), seq.table_version
        if not rows:
            return None
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(blocks)

    def sync(self) -> None:
        """Enqueue what changed since the last step (before that step's kernels run)."""
        if self._dirty:
            staging = self._staging[self._turn]
            self._turn ^= 1
            for name, host in self._host.items():
                staging[name].copy_(host)
                getattr(self.state, name).copy_(staging[name], non_blocking=True)
            self._dirty = False
        for row, source in self._seen_inits:
            seen = self.state.seen[row]
            if isinstance(source, int):
                seen.copy_(self.state.seen[source])
            else:
                seen.zero_()
                ids = torch.from_numpy(np.asarray(source.token_ids, dtype=np.int64))
                if self.device.type == "cuda":
                    ids = ids.pin_memory().to(self.device, non_blocking=True)
                seen[ids] = 1
        self._seen_inits.clear()
