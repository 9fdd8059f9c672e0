"""A projection whose weight is dense or quantized, filled in when the checkpoint is read.

Fused projections (q/k/v, gate/up) are assembled from their parts: dense parts become one
matrix; quantized parts of one type become one packed weight (rows concatenated); parts of
different types (a Q4_K_M file keeps v, some layers' down projection, in Q6_K) stay separate
segments, each multiplied into its columns of one output, so no copy joins them afterwards.
On the CPU a projection whose file weights are 4-bit also keeps them in torch's int4 form, which
decode steps of a few rows read at a quarter of bf16's bytes (kernels/cpu_int4.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import kernels
from kernels import cpu_int4
from kernels.quant import QuantWeight, concat_rows


@dataclass
class Segment:
    weight: QuantWeight
    start: int  # first output column


class ProjLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight: nn.Parameter | None = None  # dense
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.segments: list[Segment] = []  # quantized
        self.int4: cpu_int4.Int4Weight | None = None  # CPU: for steps of at most cpu_int4.MAX_ROWS rows

    def set_dense(self, weight: torch.Tensor) -> None:
        self.weight = nn.Parameter(weight, requires_grad=False)

    def set_quantized(self, parts: list[QuantWeight], device: torch.device) -> None:
        """Parts in output order; neighbours of one type are packed together, then moved to `device`."""
        groups: list[list[QuantWeight]] = []
        for part in parts:
            if groups and groups[-1][0].qtype == part.qtype:
                groups[-1].append(part)
            else:
                groups.append([part])
        start = 0
        self.segments = []
        for group in groups:
            weight = group[0] if len(group) == 1 else concat_rows(group)
            self.segments.append(Segment(weight.to(device), start))
            start += weight.shape[0]
        assert start == self.out_features

    def set_int4(self, weight: cpu_int4.Int4Weight | None) -> None:
        self.int4 = weight

    @property
    def quantized(self) -> bool:
        return bool(self.segments)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int4 is not None and x.shape[0] <= cpu_int4.MAX_ROWS:
            out = cpu_int4.matmul(x, self.int4)
            return out if self.bias is None else out + self.bias
        if not self.segments:
            return nn.functional.linear(x, self.weight, self.bias)
        out = torch.empty(x.shape[0], self.out_features, dtype=x.dtype, device=x.device)
        for seg in self.segments:
            kernels.quant_matmul(x, seg.weight, out=out[:, seg.start:seg.start + seg.weight.shape[0]])
        if self.bias is not None:
            out += self.bias
        return out

    def qtypes(self) -> list[str]:
        return [s.weight.qtype for s in self.segments] or [str(self.weight.dtype).removeprefix("torch.")]
