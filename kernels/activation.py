"""silu_mul: SwiGLU's silu(gate) * up from the fused gate/up projection, in one pass.

`gate_up` is [N, 2 * I] with the gate in the first half, as the fused projection produces it.
Rounding follows transformers: silu's result is rounded to the model dtype before the product.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._triton import cdiv, jit, tl

BLOCK = 1024


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_mul_triton(gate_up: torch.Tensor) -> torch.Tensor:
    num_rows, width = gate_up.shape
    inter = width // 2
    assert gate_up.stride(1) == 1
    out = torch.empty(num_rows, inter, dtype=gate_up.dtype, device=gate_up.device)
    if num_rows:
        _silu_mul_kernel[(num_rows, cdiv(inter, BLOCK))](gate_up, out, inter, gate_up.stride(0), out.stride(0),
                                                          BLOCK=BLOCK, num_warps=4)
    return out


@jit
def _silu_mul_kernel(x_ptr, out_ptr, inter, stride_x, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + inter + offs, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_out + offs, (act * up.to(tl.float32)).to(out_ptr.dtype.element_ty), mask=mask)
