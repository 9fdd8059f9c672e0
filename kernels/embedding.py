"""embed_tokens: the step's input embeddings, with decode tokens read from where the sampler left them.

A step's token ids come from two places: prompt tokens from the host, and each decoding
sequence's newest token from `last_token[row]` on the device, written by the previous step's
sampler and never read back first. `src_rows[i] >= 0` picks the device token of that row,
otherwise `host_ids[i]` is used. One gather kernel does both.
"""
from __future__ import annotations

import torch

from kernels._triton import cdiv, jit, next_pow2, tl

BLOCK = 1024


def resolve_ids(host_ids: torch.Tensor, src_rows: torch.Tensor, last_token: torch.Tensor) -> torch.Tensor:
    from_device = src_rows >= 0
    return torch.where(from_device, last_token[src_rows.clamp_min(0).long()], host_ids).long()


def embed_tokens_ref(weight: torch.Tensor, host_ids: torch.Tensor, src_rows: torch.Tensor,
                     last_token: torch.Tensor) -> torch.Tensor:
    return weight.index_select(0, resolve_ids(host_ids, src_rows, last_token))


def embed_tokens_triton(weight: torch.Tensor, host_ids: torch.Tensor, src_rows: torch.Tensor,
                        last_token: torch.Tensor) -> torch.Tensor:
    num, hidden = host_ids.shape[0], weight.shape[1]
    assert weight.stride(1) == 1
    out = torch.empty(num, hidden, dtype=weight.dtype, device=weight.device)
    if num:
        block = min(BLOCK, next_pow2(hidden))
        _embed_kernel[(num, cdiv(hidden, block))](weight, host_ids, src_rows, last_token, out, hidden,
                                                  weight.stride(0), out.stride(0), BLOCK=block, num_warps=4)
    return out


@jit
def _embed_kernel(w_ptr, ids_ptr, rows_ptr, last_ptr, out_ptr, hidden, stride_w, stride_out, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    src = tl.load(rows_ptr + i)
    host = tl.load(ids_ptr + i)
    token = tl.where(src >= 0, tl.load(last_ptr + tl.maximum(src, 0)), host).to(tl.int64)
    mask = offs < hidden
    tl.store(out_ptr + i * stride_out + offs, tl.load(w_ptr + token * stride_w + offs, mask=mask), mask=mask)
