"""add_rmsnorm: the residual add and RMSNorm of a decoder layer in one pass over the hidden state.

Rounding follows transformers' Llama in the model dtype: the sum is rounded to the dtype, the
normalisation runs in fp32, the normalised value is rounded to the dtype, then multiplied by the
weight and rounded again. The kernel does the same, so bf16 results match transformers' bf16.
"""
from __future__ import annotations

import torch

from kernels._triton import jit, next_pow2, tl


def add_rmsnorm_ref(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                    rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual: [N, H]. Returns (rmsnorm(x + residual) * weight, x + residual).

    With `rows`, only those rows are summed and normalised ([len(rows), H] both), which is how the
    final norm runs on the last token of each sequence only; the residual is then left alone.
    Without `rows`, the sum is written into `residual` in place (a decoder layer's stream).
    """
    if rows is not None:
        x = x.index_select(0, rows)
        residual = None if residual is None else residual.index_select(0, rows)
        total = x if residual is None else x + residual
    elif residual is None:
        total = x
    else:
        total = residual.add_(x)
    x32 = total.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(total.dtype)
    return weight * normed, total


def add_rmsnorm_triton(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                       rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as the reference: one program per output row, no host sync (graph-safe)."""
    num_rows = x.shape[0] if rows is None else rows.shape[0]
    hidden = x.shape[1]
    assert x.stride(1) == 1 and weight.is_contiguous() and weight.dtype == x.dtype
    out = torch.empty(num_rows, hidden, dtype=x.dtype, device=x.device)
    gathered = rows is not None
    if gathered:
        total = torch.empty_like(out)
    else:
        total = x if residual is None else residual
    if num_rows == 0:
        return out, total
    res = x if residual is None else residual
    _add_rmsnorm_kernel[(num_rows,)](
        x, res, weight, out, total, x if rows is None else rows, eps,
        x.stride(0), res.stride(0), out.stride(0), total.stride(0),
        HIDDEN=hidden, BLOCK=next_pow2(hidden), HAS_RESIDUAL=residual is not None, GATHER=gathered,
        num_warps=4 if hidden <= 4096 else 8,
    )
    return out, total


@jit
def _add_rmsnorm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, total_ptr, rows_ptr, eps,
                        stride_x, stride_res, stride_out, stride_total,
                        HIDDEN: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                        GATHER: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    src = tl.load(rows_ptr + i).to(tl.int64) if GATHER else i
    offs = tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    x = tl.load(x_ptr + src * stride_x + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        total = (x.to(tl.float32) + tl.load(res_ptr + src * stride_res + offs, mask=mask, other=0.0).to(tl.float32))
        total = total.to(x.dtype)
        if GATHER:
            tl.store(total_ptr + i * stride_total + offs, total, mask=mask)
        else:
            tl.store(total_ptr + src * stride_total + offs, total, mask=mask)
    else:
        total = x
        if GATHER:
            tl.store(total_ptr + i * stride_total + offs, total, mask=mask)
    t32 = total.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(t32 * t32, 0) / HIDDEN + eps)
    normed = (t32 * rstd).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + i * stride_out + offs, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)
