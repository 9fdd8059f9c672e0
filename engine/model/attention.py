"""Attention over the paged KV cache for one packed step: decode tokens first, then prefill chunks."""
from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from kernels.decode_attention import DecodePlan
from kernels.prefill_attention import gather_kv
from kernels.rope import split_rotate_ref, store_ref


@dataclass
class AttentionMetadata:
    """Where each token of the step goes and what it may see.

    Tokens are packed: the first `num_decode` are one token each of decoding sequences, the rest
    are prefill chunks delimited by `prefill_cu_seqlens` (offsets relative to the prefill part).
    `*_context_lens` count cached tokens after this step's tokens are written.
    """

    positions: torch.Tensor
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
    max_prefill_context: int | None = None  # the longest a prefilling sequence's context may be: splits its keys
    decode_workspace: torch.Tensor | None = None
    decode_num_splits: int | None = None
    decode_plan: DecodePlan | None = None  # CPU: how to read each decoding sequence's keys
    decode_table_rows: torch.Tensor | None = None  # GPU: decode tables are these rows of the persistent ones
    prefill_table_rows: torch.Tensor | None = None  # the same for prefill (CUDA graphs of one prefill)


@dataclass
class AttentionWeights:
    """What a layer's attention needs besides its inputs."""

    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    cos: torch.Tensor
    sin: torch.Tensor
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    eps: float


def paged_attention(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                    w: AttentionWeights) -> torch.Tensor:
    """qkv: [N, (Hq + 2 Hkv) * D], the step's fused projection. Rotates q and k, stores k and v
    in the cache, attends. Returns [N, Hq, D]."""
    n, nd = qkv.shape[0], meta.num_decode
    out = torch.empty(n, w.num_q_heads, w.head_dim, dtype=qkv.dtype, device=qkv.device)
    heads = (w.num_q_heads, w.num_kv_heads, w.q_norm, w.k_norm, w.eps)
    if nd:
        extra = (dict(workspace=meta.decode_workspace, num_splits=meta.decode_num_splits,
                      table_rows=meta.decode_table_rows) if qkv.is_cuda else dict(plan=meta.decode_plan))
        if qkv.is_cuda and not kernels.on_triton(qkv):  # the reference on the device's tables
            extra = dict(table_rows=meta.decode_table_rows)
        kernels.decode_attention(qkv[:nd], meta.positions[:nd], w.cos, w.sin, k_cache, v_cache,
                                 meta.slot_mapping[:nd], meta.decode_block_tables, meta.decode_context_lens,
                                 w.scale, *heads, out=out[:nd], **extra)
    if n == nd:
        return out
    if qkv.is_cuda:  # Triton: results written in place, nothing read back to the host
        q = kernels.rope_store_kv(qkv[nd:], meta.positions[nd:], w.cos, w.sin, k_cache, v_cache,
                                  meta.slot_mapping[nd:], *heads)
        kernels.paged_prefill_attention(q, k_cache, v_cache, meta.prefill_cu_seqlens_t, meta.prefill_context_lens_t,
                                        meta.prefill_block_tables, w.scale, out=out[nd:],
                                        max_seqlen_q=meta.max_prefill_len, table_rows=meta.prefill_table_rows,
                                        max_context=meta.max_prefill_context)
        return out
    q, k, v = split_rotate_ref(qkv[nd:], meta.positions[nd:], w.cos, w.sin, *heads)
    store_ref(k, v, k_cache, v_cache, meta.slot_mapping[nd:])
    cu = meta.prefill_cu_seqlens
    for i, ctx in enumerate(meta.prefill_context_lens):
        start, end = cu[i], cu[i + 1]
        if ctx == end - start and k_cache.dtype == q.dtype:  # nothing cached before: this step's K/V, no gather
            ks, vs = k[start:end], v[start:end]
        else:
            ks, vs = gather_kv(k_cache, v_cache, meta.prefill_block_tables[i], ctx)
        out[nd + start:nd + end] = kernels.attend(q[start:end], ks.to(q.dtype), vs.to(q.dtype), w.scale)
    return out
