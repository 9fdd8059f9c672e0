"""One step's inputs, built on the host with array operations, and moved to the device in few copies.

`build_step` turns a scheduled batch into flat arrays: token ids (or the row whose sampled token
the device already holds), positions, KV slots, block tables and context lengths, and which
logits rows are sampled for which sequences. Per-token work is numpy, not Python lists.

`StagingBuffers` packs a step's int64 arrays into one pinned buffer (two, alternating, so a copy
still queued behind the running step is never overwritten) and copies it to the device at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence


@dataclass
class Sample:
    """Sequence `seq` draws its next token from the logits of ready sequence `logits_index`
    (itself, or the parent a fork shares its prompt with)."""

    seq: Sequence
    logits_index: int


@dataclass
class StepInputs:
    host_ids: np.ndarray  # [T] int64 token ids known on the host (0 where src_rows says otherwise)
    src_rows: np.ndarray  # [T] int64 row whose last sampled token is the input, or -1
    positions: np.ndarray  # [T] int64
    slots: np.ndarray  # [T] int64 KV slot of each token
    num_decode: int
    decode_context_lens: np.ndarray  # [num_decode] int64
    decode_tables: list[list[int]]
    decode_seqs: list[Sequence]
    prefill_cu_seqlens: list[int]
    prefill_context_lens: list[int]
    prefill_tables: list[list[int]]
    last_rows: np.ndarray  # [R] int64 token index of each ready sequence's last token
    sample_logits: np.ndarray  # [S] int64 index into last_rows
    sample_rows: np.ndarray  # [S] int64 persistent row of each sampling sequence
    sample_counters: np.ndarray  # [S] int64 position of the token each draws

    @property
    def num_tokens(self) -> int:
        return len(self.positions)

    @property
    def is_decode_only(self) -> bool:
        return self.num_decode == self.num_tokens and len(self.sample_rows) == self.num_decode

    @property
    def is_prefill_only(self) -> bool:
        """Every sequence ends its prompt in this step and samples once, in batch order: no decode
        rows, no forks, no input token left on the device."""
        count = len(self.prefill_context_lens)
        return (self.num_decode == 0 and len(self.last_rows) == count
                and np.array_equal(self.sample_logits, np.arange(count)) and bool((self.src_rows < 0).all()))


def build_step(batch: ScheduledBatch, samples: list[Sample], block_size: int) -> StepInputs:
    """Inputs for `batch`, whose sequences' `num_computed_tokens` are still those before the step."""
    bs = block_size
    nd = batch.num_decode
    count = len(batch.seqs)
    starts = np.fromiter((s.num_computed_tokens for s in batch.seqs), dtype=np.int64, count=count)
    lengths = np.asarray(batch.num_new_tokens, dtype=np.int64)
    tables = [s.block_table for s in batch.seqs]
    if batch.num_tokens == nd:  # decode only: one token each, most likely from the device
        positions = starts
        slots = np.fromiter((t[p // bs] for t, p in zip(tables, starts.tolist())), dtype=np.int64, count=count)
        slots = slots * bs + positions % bs
        src_rows = np.fromiter((_device_row(s, p) for s, p in zip(batch.seqs, starts.tolist())), dtype=np.int64,
                               count=count)
        host_ids = np.zeros(count, dtype=np.int64)
        for i in np.flatnonzero(src_rows < 0).tolist():
            host_ids[i] = batch.seqs[i].token_at(int(starts[i]))
        last_rows = np.arange(count, dtype=np.int64)
    else:
        pieces_ids, pieces_rows, pieces_pos, pieces_slots = [], [], [], []
        for seq, start, n, table in zip(batch.seqs, starts.tolist(), lengths.tolist(), tables):
            pos = np.arange(start, start + n, dtype=np.int64)
            row = _device_row(seq, start) if n == 1 else -1
            pieces_rows.append(np.full(n, row, dtype=np.int64))
            pieces_ids.append(np.zeros(1, dtype=np.int64) if row >= 0 else seq.tokens_between(start, start + n))
            pieces_pos.append(pos)
            table_arr = np.asarray(table, dtype=np.int64)
            pieces_slots.append(table_arr[pos // bs] * bs + pos % bs)
        host_ids, src_rows = np.concatenate(pieces_ids), np.concatenate(pieces_rows)
        positions, slots = np.concatenate(pieces_pos), np.concatenate(pieces_slots)
        ends = np.cumsum(lengths)
        ready = (starts + lengths) == np.fromiter((s.num_total_tokens for s in batch.seqs), dtype=np.int64,
                                                  count=count)
        last_rows = ends[ready] - 1
    cu = [0]
    for n in batch.num_new_tokens[nd:]:
        cu.append(cu[-1] + n)
    context = starts + lengths
    ready_index = _ready_index(batch, starts, lengths)
    sample_logits = np.fromiter((s.logits_index for s in samples), dtype=np.int64, count=len(samples))
    sample_rows = np.fromiter((s.seq.row for s in samples), dtype=np.int64, count=len(samples))
    sample_counters = context[ready_index][sample_logits] if len(samples) else np.zeros(0, dtype=np.int64)
    return StepInputs(host_ids, src_rows, positions, slots, nd, context[:nd], tables[:nd], batch.seqs[:nd], cu,
                      context[nd:].tolist(), tables[nd:], last_rows, sample_logits, sample_rows, sample_counters)


def _device_row(seq: Sequence, position: int) -> int:
    """The row whose `last_token` holds the token at `position`, if it is the sequence's newest
    sampled token; -1 if the host has to send it."""
    if seq.row_has_token and position == seq.num_total_tokens - 1 and position >= seq.num_prompt_tokens:
        return seq.row
    return -1


def _ready_index(batch: ScheduledBatch, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Batch positions of the sequences that finish their known tokens this step (they sample)."""
    totals = np.fromiter((s.num_total_tokens for s in batch.seqs), dtype=np.int64, count=len(batch.seqs))
    return np.flatnonzero(starts + lengths == totals)


def pad_tables(tables: list[list[int]], width: int | None = None) -> np.ndarray:
    """Block tables as a rectangle [len, width] int32, padded with zeros."""
    width = max((len(t) for t in tables), default=0) if width is None else width
    out = np.zeros((len(tables), width), dtype=np.int32)
    for i, t in enumerate(tables):
        out[i, :len(t)] = t
    return out


class StagingBuffers:
    """Host -> device copies of a step's int64 arrays through pinned memory.

    Each step writes its arrays one after another into one of two pinned buffers (alternating
    by step), so a copy still queued behind the running step is never overwritten."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.device = device
        self.capacity = capacity
        pin = device.type == "cuda"
        self._host = [torch.empty(capacity, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        self._dev = [torch.empty(capacity, dtype=torch.int64, device=device) for _ in range(2)]
        self._turn = 0
        self._offset = 0

    def next_step(self) -> None:
        self._turn ^= 1
        self._offset = 0

    def upload(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        """The arrays as device tensors (views of one buffer), after one asynchronous copy.

        Each view starts 16 bytes aligned: Triton compiles a kernel variant per pointer alignment,
        so views at odd offsets (a batch of another parity) would compile kernels in a step."""
        sizes = [a.size + (a.size & 1) for a in arrays]  # whole pairs of int64
        total = sum(sizes)
        start = self._offset
        if start + total <= self.capacity:
            host, dev = self._host[self._turn], self._dev[self._turn]
            self._offset += total
        else:  # larger than a step ever needs in the steady state: a buffer of its own
            host = torch.empty(total, dtype=torch.int64, pin_memory=self.device.type == "cuda")
            dev = torch.empty(total, dtype=torch.int64, device=self.device)
            start = 0
        view = host.numpy()
        offset, spans = start, []
        for a, size in zip(arrays, sizes):
            view[offset:offset + a.size] = a.reshape(-1)
            spans.append((offset, a.size, a.shape))
            offset += size
        dev[start:start + total].copy_(host[start:start + total], non_blocking=True)
        return [dev[o:o + n].view(shape) for o, n, shape in spans]


def upload_table(tables: list[list[int]], device: torch.device, width: int | None = None) -> torch.Tensor:
    arr = torch.from_numpy(pad_tables(tables, width))
    if device.type != "cuda":
        return arr
    return arr.pin_memory().to(device, non_blocking=True)
