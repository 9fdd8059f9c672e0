"""paged_decode_attention: one new query token per sequence against its paged KV."""
from __future__ import annotations

import torch


def paged_decode_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, context_lens: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """q: [num_seqs, num_q_heads, head_dim]; caches: [num_blocks, block_size, num_kv_heads, head_dim];
    block_tables: [num_seqs, max_blocks] int32 (entries past a sequence's length are ignored);
    context_lens: [num_seqs] int32. Returns [num_seqs, num_q_heads, head_dim].

    Decode reads every live KV row once, so on the CPU the cost is memory traffic: the blocks are
    gathered with one `index_select` (whole contiguous blocks), and each KV head's query group is
    multiplied against the gathered rows in place (strided BLAS, no transposed copies).
    """
    num_seqs, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    num_blocks = -(-int(context_lens.max()) // block_size)
    length = num_blocks * block_size
    table = block_tables[:, :num_blocks].reshape(-1).long().clamp_min(0)
    k = k_cache.index_select(0, table).view(num_seqs, length, num_kv_heads, head_dim)
    v = v_cache.index_select(0, table).view(num_seqs, length, num_kv_heads, head_dim)
    pad = torch.arange(length, device=q.device)[None, :] >= context_lens[:, None].long()
    out = torch.empty_like(q)
    for h in range(num_kv_heads):
        heads = slice(h * group, (h + 1) * group)
        scores = torch.bmm(q[:, heads], k[:, :, h].transpose(1, 2)).float() * scale  # [S, G, T]
        scores.masked_fill_(pad[:, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out[:, heads] = torch.bmm(probs, v[:, :, h])
    return out
