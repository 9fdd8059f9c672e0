"""Attention over the paged KV cache for one packed step: decode tokens first, then prefill chunks."""
from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from kernels.prefill_attention import gather_kv


@dataclass
class AttentionMetadata:
    """Where each token of the step goes and what it may see.

    Tokens are packed: the first `num_decode` are one token each of decoding sequences, the rest
    are prefill chunks delimited by `prefill_cu_seqlens` (offsets relative to the prefill part).
    `*_context_lens` count cached tokens after this step's tokens are written.
    """

    slot_mapping: torch.Tensor
    num_decode: int
    decode_block_tables: torch.Tensor
    decode_context_lens: torch.Tensor
    prefill_cu_seqlens: list[int]
    prefill_context_lens: list[int]
    prefill_block_tables: torch.Tensor
    # The same on the device, for the CUDA kernels, which also take scratch for split-KV decode.
    prefill_cu_seqlens_t: torch.Tensor | None = None
    prefill_context_lens_t: torch.Tensor | None = None
    max_prefill_len: int = 0
    decode_workspace: torch.Tensor | None = None


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: [N, Hq, D]; k, v: [N, Hkv, D] of this step, already stored in the cache."""
    out = torch.empty_like(q)
    nd = meta.num_decode
    if q.is_cuda:  # Triton: results written in place, nothing read back to the host
        if nd:
            kernels.paged_decode_attention(q[:nd], k_cache, v_cache, meta.decode_block_tables,
                                           meta.decode_context_lens, scale, out=out[:nd],
                                           workspace=meta.decode_workspace)
        if meta.prefill_context_lens:
            kernels.paged_prefill_attention(q[nd:], k_cache, v_cache, meta.prefill_cu_seqlens_t,
                                            meta.prefill_context_lens_t, meta.prefill_block_tables, scale,
                                            out=out[nd:], max_seqlen_q=meta.max_prefill_len)
        return out
    if nd:
        out[:nd] = kernels.paged_decode_attention(
            q[:nd], k_cache, v_cache, meta.decode_block_tables, meta.decode_context_lens, scale)
    cu = meta.prefill_cu_seqlens
    for i, ctx in enumerate(meta.prefill_context_lens):
        start, end = nd + cu[i], nd + cu[i + 1]
        if ctx == end - start:  # nothing cached before: attend to this step's K/V without a gather
            ks, vs = k[start:end], v[start:end]
        else:
            ks, vs = gather_kv(k_cache, v_cache, meta.prefill_block_tables[i], ctx)
        out[start:end] = kernels.attend(q[start:end], ks, vs, scale)
    return out
