"""Copies of whole KV blocks between the device cache and host rows (RAM slots, disk staging).

The cache is `[2, layers, blocks, block_size, kv_heads, head_dim]`; a host row is one block's
bytes in that order with the block axis taken out. Copies are of bytes (fp8 included).

On CUDA every copy runs on a side stream that first waits for the work already queued on the
compute stream (a block evicted now may still be written by the step in flight). The compute
stream waits for the side stream only when the next step depends on it: a block copied out
before it is overwritten, or loaded before it is read. Copies to disk staging do not hold the
next step back; the disk writer waits on their event. Host rows that an asynchronous copy still
reads or writes are "pending": the host must not write one (a disk read into a RAM slot) before
that copy is done.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class CopyPlan:
    """Copies decided while scheduling, run together by `KVCopier.run`, in this order."""

    offload: list[tuple[int, int]] = field(default_factory=list)  # (device block, RAM slot): evicted
    load: list[tuple[int, int]] = field(default_factory=list)  # (RAM slot, device block): a tier hit
    stage: list[tuple[int, int]] = field(default_factory=list)  # (device block, staging row): to disk

    def __bool__(self) -> bool:
        return bool(self.offload or self.load or self.stage)


def _runs(rows: list[int]) -> list[tuple[int, int, int]]:
    """(index into rows, first row, length) of each run of consecutive rows."""
    out: list[tuple[int, int, int]] = []
    for i, r in enumerate(rows):
        if out and out[-1][1] + out[-1][2] == r:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + 1)
        else:
            out.append((i, r, 1))
    return out


class KVCopier:
    def __init__(self, kv_cache: torch.Tensor) -> None:
        self.kv = kv_cache.view(torch.uint8)  # [2, layers, blocks, block_size, kv_heads, head_dim * itemsize]
        two, layers, _, bs, heads, width = self.kv.shape
        self.block_shape = (two, layers, bs, heads, width)
        self.block_bytes = two * layers * bs * heads * width
        self.device = kv_cache.device
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._event: torch.cuda.Event | None = None
        self._pending: set[int] = set()

    def run(self, plan: CopyPlan, host: torch.Tensor | None, staging: torch.Tensor | None) -> torch.cuda.Event | None:
        """Run (CPU) or enqueue (CUDA) the plan's copies; on CUDA, returns the event after them."""
        if not self.cuda:
            self._copy(plan, host, staging)
            return None
        compute = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(compute)
        with torch.cuda.stream(self.stream):
            self._copy(plan, host, staging)
            event = torch.cuda.Event()
            event.record(self.stream)
        if plan.offload or plan.load:
            compute.wait_stream(self.stream)
        self._event = event
        self._pending.update(s for _, s in plan.offload)
        self._pending.update(s for s, _ in plan.load)
        return event

    def before_host_write(self, slot: int) -> None:
        """Wait for the copies still using RAM slot `slot` (rare: it was reused within a step or two)."""
        if slot in self._pending:
            self._event.synchronize()
            self._pending.clear()

    @torch.inference_mode()
    def _copy(self, plan: CopyPlan, host: torch.Tensor | None, staging: torch.Tensor | None) -> None:
        if plan.offload:
            self._out([b for b, _ in plan.offload], host, [s for _, s in plan.offload])
        if plan.load:
            self._in(host, [s for s, _ in plan.load], [b for _, b in plan.load])
        if plan.stage:
            self._out([b for b, _ in plan.stage], staging, [r for _, r in plan.stage])

    def _index(self, blocks: list[int]) -> torch.Tensor:
        return torch.tensor(blocks, dtype=torch.int64).to(self.device, non_blocking=True)

    def _out(self, blocks: list[int], dst: torch.Tensor, rows: list[int]) -> None:
        n = len(blocks)
        src = self.kv.index_select(2, self._index(blocks)).permute(2, 0, 1, 3, 4, 5).reshape(n, self.block_bytes)
        for i, row, k in _runs(rows):
            dst[row:row + k].copy_(src[i:i + k], non_blocking=self.cuda)

    def _in(self, src: torch.Tensor, rows: list[int], blocks: list[int]) -> None:
        n = len(blocks)
        if self.cuda:
            tmp = torch.empty((n, self.block_bytes), dtype=torch.uint8, device=self.device)
            for i, row, k in _runs(rows):
                tmp[i:i + k].copy_(src[row:row + k], non_blocking=True)
        else:
            tmp = src[torch.tensor(rows, dtype=torch.int64)]
        self.kv.index_copy_(2, self._index(blocks), tmp.view(n, *self.block_shape).permute(1, 2, 0, 3, 4, 5))
