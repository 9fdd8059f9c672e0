"""Decode-sized matmuls on the CPU from a GGUF's 4-bit weights, through torch's int4 CPU kernel.

A decode step multiplies a few rows of x by every weight, so on the CPU it is bound by reading
the weights from memory: a bf16 matrix moves 2 bytes per weight, torch's int4 kernel
(`_weight_int4pack_mm_for_cpu`) half a byte plus a bf16 scale and zero per 32. Over SmolLM2's
210 projections on the project's CPU (2 cores, AVX512-BF16) it took 4.1 ms against bf16's 18.9 ms
at one row, 12.5 against 23.3 at 8, and broke even near 24 (BENCHMARKS.md, issue 12). So a
projection whose file weights are 4-bit keeps them in torch's form as well, and steps of at most
`MAX_ROWS` rows use it; prefill keeps the dense (or packed) path, which wins at many rows.

Each 4-bit GGUF type is w = a*q + b per group of 32 with q in [0, 16); torch's form is
w = (q - 8)*s + z, so s = a and z = b + 8a, computed in fp32 from the file's scales as
`kernels.quant.dequantize` computes them, then rounded to bf16 (the dense matrix instead rounds
each weight to bf16). The kernel takes bf16 activations only; in fp32 it is slower than dense.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.quant import QK, QuantWeight, unpack_nibbles

INT4_TYPES = ("Q4_0", "Q4_1", "Q4_K")
MAX_ROWS = 16  # the measured break-even with bf16 is 20-24 rows
ROW_MULTIPLE = 16  # torch's packing needs N % 16 == 0


@dataclass
class Int4Weight:
    packed: torch.Tensor  # uint8 [N, K/2], torch's CPU int4 layout
    scales_zeros: torch.Tensor  # bf16 [K/32, N, 2]: s and z of each group

    @property
    def nbytes(self) -> int:
        return self.packed.numel() + self.scales_zeros.numel() * self.scales_zeros.element_size()


def usable(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype == torch.bfloat16 and hasattr(torch, "_weight_int4pack_mm_for_cpu")


def pack(parts: list[QuantWeight]) -> Int4Weight | None:
    """The parts' rows stacked in order (q, k, v into qkv) in torch's form; None when a part is
    not 4-bit or the shape is not one torch's kernel takes."""
    if any(p.qtype not in INT4_TYPES for p in parts):
        return None
    n = sum(p.shape[0] for p in parts)
    if n % ROW_MULTIPLE or parts[0].shape[1] % QK:
        return None
    q, s, z = (torch.cat(t) for t in zip(*(_int4_form(p) for p in parts)))
    return Int4Weight(torch._convert_weight_to_int4pack_for_cpu(q, 1),
                      torch.stack([s.T, z.T], dim=-1).to(torch.bfloat16).contiguous())


def matmul(x: torch.Tensor, w: Int4Weight) -> torch.Tensor:
    """x: bf16 [M, K] -> bf16 [M, N]."""
    return torch._weight_int4pack_mm_for_cpu(x.contiguous(), w.packed, QK, w.scales_zeros)


def _int4_form(w: QuantWeight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q int32 [N, K], s fp32 [N, K/32], z fp32 [N, K/32]) with w = (q - 8)*s + z."""
    if w.qtype == "Q4_0":  # d*(q - 8)
        return unpack_nibbles(w.qs, 16), w.d.float(), torch.zeros(w.d.shape)
    if w.qtype == "Q4_1":  # d*q + m
        d = w.d.float()
        return unpack_nibbles(w.qs, 16), d, w.m.float() + 8 * d
    # Q4_K: (d*sc)*q - dmin*mn, per sub-block of 32
    a = w.d.float().repeat_interleave(8, dim=1) * w.sc.float()
    b = w.m.float().repeat_interleave(8, dim=1) * w.mn.float()
    return unpack_nibbles(w.qs, 32), a, 8 * a - b
