"""One step's inputs on the host, and the helpers that move them to the device without stalls."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.sequence import Sequence


@dataclass
class StepInputs:
    """One step described on the host; `to_device` turns it into tensors."""

    input_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    num_decode: int = 0
    decode_context_lens: list[int] = field(default_factory=list)
    decode_tables: list[list[int]] = field(default_factory=list)
    prefill_cu_seqlens: list[int] = field(default_factory=lambda: [0])
    prefill_context_lens: list[int] = field(default_factory=list)
    prefill_tables: list[list[int]] = field(default_factory=list)
    last_rows: list[int] = field(default_factory=list)
    last_seqs: list[Sequence] = field(default_factory=list)


def host_tensor(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host tensor that copies to `device` without stalling the host: pinned when the device is a GPU."""
    t = torch.tensor(values, dtype=dtype)
    return t.pin_memory() if device.type == "cuda" else t


def to_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return host_tensor(values, dtype, device).to(device, non_blocking=True)


def pad_rows(rows: list[list[int]]) -> list[list[int]]:
    """Block tables of one step as a rectangle, padded with zeros to the longest."""
    width = max((len(r) for r in rows), default=0)
    return [r + [0] * (width - len(r)) for r in rows]


def table_tensor(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """[len(rows), longest] int32 on the device (shape kept when there are no rows)."""
    padded = pad_rows(rows)
    return to_device(padded, torch.int32, device).view(len(rows), len(padded[0]) if padded else 0)
