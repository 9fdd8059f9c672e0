"""Quantized weights kept as the GGUF file holds them, repacked into separate arrays per part.

A GGUF quantized tensor is rows of blocks, each block a few scale bytes followed by packed
quants. `from_gguf` splits every row into one array per part (quants, high bits, scales, mins),
which a kernel can load with wide, aligned reads; nothing is rounded or dropped, so the weights
are the file's, bit for bit (`dequantize` equals `gguf.dequantize` exactly). The 6-bit scales
of the K types are unpacked to one byte each: +2.8% for Q4_K, no change for the others.

Layouts, per row of K elements (lo/hi = low/high nibble of a quant byte):
- Q4_0, Q4_1, Q5_0, Q5_1 (blocks of 32): byte 16b+t holds elements 32b+t (lo) and 32b+16+t (hi);
  Q5 types keep a uint32 of 5th bits per block (bit t = element 32b+t). w = d*(q-8), d*q+m,
  d*(q-16), d*q+m.
- Q8_0 (blocks of 32): one int8 per element; w = q*d.
- Q4_K, Q5_K (super-blocks of 256, sub-blocks of 32): byte 128s+32g+t holds elements
  256s+64g+t (lo) and 256s+64g+32+t (hi); Q5_K's 5th bit of element 256s+32i+t is bit i of high
  byte 32s+t. w = (d*sc)*q - dmin*m per sub-block.
- Q6_K (super-blocks of 256, sub-blocks of 16): low-nibble byte 128s+64h+t holds elements
  256s+128h+t (lo) and 256s+128h+64+t (hi); bits 2j..2j+1 of high byte 64s+32h+t are the top bits
  of element 256s+128h+32j+t. w = (d*sc)*(q-32).

`quantize` makes the Q8_0 and Q4_1 forms from dense weights (the int8 and int4 quantization
of Hugging Face checkpoints at load): weight-only, group-wise in groups of 32.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

PACKED_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
QK = 32  # elements per block of the simple types
QK_K = 256  # elements per super-block of the K types
GGUF_BLOCK = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
              "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}  # elements, bytes


@dataclass
class QuantWeight:
    """One quantized [N, K] weight. Arrays not used by `qtype` are None."""

    qtype: str
    shape: tuple[int, int]
    qs: torch.Tensor  # uint8 [N, K/2] packed nibbles (int8 [N, K] for Q8_0; the low nibbles for Q6_K)
    d: torch.Tensor  # float16 [N, K/32] (K types: [N, K/256])
    qh: torch.Tensor | None = None  # Q5_0/Q5_1: int32 [N, K/32]; Q5_K: uint8 [N, K/8]; Q6_K: uint8 [N, K/4]
    m: torch.Tensor | None = None  # Q4_1/Q5_1: float16 [N, K/32]; K types: dmin float16 [N, K/256]
    sc: torch.Tensor | None = None  # Q4_K/Q5_K: uint8 [N, K/32]; Q6_K: int8 [N, K/16]
    mn: torch.Tensor | None = None  # Q4_K/Q5_K: uint8 [N, K/32]

    def arrays(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def to(self, device: torch.device | str) -> QuantWeight:
        return QuantWeight(self.qtype, self.shape, **{k: v.to(device) for k, v in self.arrays().items()})

    def narrow_rows(self, start: int, length: int) -> QuantWeight:
        """Rows [start, start + length): a view, as for the q, k, v parts of a fused projection."""
        return QuantWeight(self.qtype, (length, self.shape[1]),
                           **{k: v.narrow(0, start, length) for k, v in self.arrays().items()})

    def index_rows(self, index: torch.Tensor) -> QuantWeight:
        return QuantWeight(self.qtype, (len(index), self.shape[1]),
                           **{k: v.index_select(0, index) for k, v in self.arrays().items()})

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.arrays().values())

    @property
    def device(self) -> torch.device:
        return self.qs.device


def concat_rows(parts: list[QuantWeight]) -> QuantWeight:
    """Stack weights of one type along N (q, k, v into qkv)."""
    qtype, k = parts[0].qtype, parts[0].shape[1]
    assert all(p.qtype == qtype and p.shape[1] == k for p in parts)
    names = parts[0].arrays().keys()
    return QuantWeight(qtype, (sum(p.shape[0] for p in parts), k),
                       **{n: torch.cat([getattr(p, n) for p in parts]) for n in names})


# ----------------------------------------------------------------------------- from the file

def from_gguf(raw: np.ndarray, qtype: str, k: int) -> QuantWeight:
    """raw: uint8 [N, K / block_elements * block_bytes], as gguf.GGUFReader gives a tensor."""
    n = raw.shape[0]
    per, size = GGUF_BLOCK[qtype]
    blocks = np.ascontiguousarray(raw).reshape(n, k // per, size)

    def part(start: int, stop: int, dtype=np.uint8) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(blocks[:, :, start:stop]).view(dtype).reshape(n, -1))

    if qtype == "Q4_0":
        return QuantWeight(qtype, (n, k), qs=part(2, 18), d=part(0, 2, np.float16))
    if qtype == "Q4_1":
        return QuantWeight(qtype, (n, k), qs=part(4, 20), d=part(0, 2, np.float16), m=part(2, 4, np.float16))
    if qtype == "Q5_0":
        return QuantWeight(qtype, (n, k), qs=part(6, 22), d=part(0, 2, np.float16), qh=part(2, 6, np.int32))
    if qtype == "Q5_1":
        return QuantWeight(qtype, (n, k), qs=part(8, 24), d=part(0, 2, np.float16), m=part(2, 4, np.float16),
                           qh=part(4, 8, np.int32))
    if qtype == "Q8_0":
        return QuantWeight(qtype, (n, k), qs=part(2, 34, np.int8), d=part(0, 2, np.float16))
    if qtype in ("Q4_K", "Q5_K"):
        sc, mn = _k_scales(np.ascontiguousarray(blocks[:, :, 4:16]))
        qs_start = 16 if qtype == "Q4_K" else 48
        w = QuantWeight(qtype, (n, k), qs=part(qs_start, qs_start + 128), d=part(0, 2, np.float16),
                        m=part(2, 4, np.float16), sc=torch.from_numpy(sc.reshape(n, -1)),
                        mn=torch.from_numpy(mn.reshape(n, -1)))
        if qtype == "Q5_K":
            w.qh = part(16, 48)
        return w
    if qtype == "Q6_K":
        return QuantWeight(qtype, (n, k), qs=part(0, 128), qh=part(128, 192), sc=part(192, 208, np.int8),
                           d=part(208, 210, np.float16))
    raise ValueError(f"{qtype} is not a packed type")


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins of each K-type super-block, one byte each (gguf's layout)."""
    s = scales.reshape(*scales.shape[:-1], 3, 4)
    d, m, m_d = s[..., 0, :], s[..., 1, :], s[..., 2, :]
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return np.ascontiguousarray(sc), np.ascontiguousarray(mn)


# ----------------------------------------------------------------------------- reference

def unpack_nibbles(qs: torch.Tensor, group: int) -> torch.Tensor:
    """[N, B] bytes -> [N, 2B] values: each run of `group` bytes gives `group` low nibbles, then
    `group` high nibbles."""
    n = qs.shape[0]
    b = qs.view(n, -1, 1, group).to(torch.int32)
    return torch.cat([b & 0x0F, b >> 4], dim=2).view(n, -1)


def dequantize(w: QuantWeight) -> torch.Tensor:
    """fp32 [N, K], the same bits as `gguf.dequantize` (the same operations in the same order)."""
    n, k = w.shape
    t = w.qtype
    if t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        q = unpack_nibbles(w.qs, 16)
        if t in ("Q5_0", "Q5_1"):
            bits = (w.qh.view(n, -1, 1).to(torch.int64) >> torch.arange(32, device=w.device)) & 1
            q = q | (bits.view(n, -1).to(torch.int32) << 4)
        d = w.d.float().repeat_interleave(QK, dim=1)
        if t == "Q4_0":
            return d * (q - 8).float()
        if t == "Q5_0":
            return d * (q - 16).float()
        return d * q.float() + w.m.float().repeat_interleave(QK, dim=1)
    if t == "Q8_0":
        return w.qs.float() * w.d.float().repeat_interleave(QK, dim=1)
    if t in ("Q4_K", "Q5_K"):
        q = unpack_nibbles(w.qs, 32)
        if t == "Q5_K":
            bits = (w.qh.view(n, -1, 1, 32).to(torch.int32) >> torch.arange(8, device=w.device)[:, None]) & 1
            q = q | (bits.reshape(n, -1) << 4)
        d = (w.d.float().repeat_interleave(8, dim=1) * w.sc.float()).repeat_interleave(QK, dim=1)
        dm = (w.m.float().repeat_interleave(8, dim=1) * w.mn.float()).repeat_interleave(QK, dim=1)
        return d * q.float() - dm
    if t == "Q6_K":
        ql = unpack_nibbles(w.qs, 64)
        qh = (w.qh.view(n, -1, 1, 32).to(torch.int32) >> (2 * torch.arange(4, device=w.device))[:, None]) & 3
        q = (ql | (qh.reshape(n, -1) << 4)) - 32
        d = (w.d.float().repeat_interleave(16, dim=1) * w.sc.float()).repeat_interleave(16, dim=1)
        return d * q.float()
    raise ValueError(f"unknown packed type {t}")


# ----------------------------------------------------------------------------- quantize at load

def quantize(weight: torch.Tensor, qtype: str) -> QuantWeight:
    """Weight-only, group-wise (32) round-to-nearest: "Q8_0" (int8, symmetric) or "Q4_1" (int4,
    a scale and a minimum per group). Runs on the weight's device."""
    n, k = weight.shape
    if k % QK:
        raise ValueError(f"quantization needs K to be a multiple of {QK}, got {k}")
    w = weight.float().view(n, k // QK, QK)
    if qtype == "Q8_0":
        d = w.abs().amax(dim=-1) / 127
        inv = torch.where(d == 0, 0.0, 1.0 / d)
        scaled = w * inv[..., None]  # rounded half away from zero, as ggml does
        q = (torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)).clamp(-127, 127).to(torch.int8)
        return QuantWeight(qtype, (n, k), qs=q.view(n, k), d=d.to(torch.float16))
    if qtype == "Q4_1":
        lo, hi = w.amin(dim=-1), w.amax(dim=-1)
        d = (hi - lo) / 15
        inv = torch.where(d == 0, 0.0, 1.0 / d)
        q = torch.trunc((w - lo[..., None]) * inv[..., None] + 0.5).clamp(0, 15).to(torch.uint8)
        packed = q[..., :16] | (q[..., 16:] << 4)  # element t low, t + 16 high, as the file's layout
        return QuantWeight(qtype, (n, k), qs=packed.reshape(n, k // 2).contiguous(), d=d.to(torch.float16),
                           m=lo.to(torch.float16))
    raise ValueError(f"quantize makes Q8_0 or Q4_1, not {qtype}")
