"""paged_decode_attention: one new query token per sequence against its paged KV."""
from __future__ import annotations

import functools
import math

import torch

from kernels._triton import attend_kv_tile, cdiv, check_attention_layout, dot_precision, jit, next_pow2, tl

BLOCK_N = 64  # keys per inner iteration: one 16 KB K tile at head_dim 128 in 16 bits
# Split-KV heuristics, first guesses until measured (`python -m kernels.bench --num-splits N`):
WAVES = 2  # split until there are about this many programs per SM
MIN_PARTITION = 512  # fewest keys per split: shorter partitions cost more in partials than they add in parallelism
MAX_SPLITS = 64
DECODE_GROUP = 8  # reference path: sequences padded together (sorted by length)


def paged_decode_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, context_lens: torch.Tensor,
                               scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """q: [num_seqs, num_q_heads, head_dim]; caches: [num_blocks, block_size, num_kv_heads, head_dim];
    block_tables: [num_seqs, max_blocks] int32 (entries past a sequence's length are ignored);
    context_lens: [num_seqs] int32. Returns [num_seqs, num_q_heads, head_dim], in `out` if given.

    Decode reads every live KV row once, so on the CPU the cost is memory traffic. Sequences are
    taken in groups of similar length (sorted), so padding a group to its longest member copies
    little; each group's blocks are gathered with one `index_select` (whole contiguous blocks), and
    each KV head's query group is multiplied against the gathered rows in place (strided BLAS, no
    transposed copies).
    """
    out = torch.empty_like(q) if out is None else out
    lens = context_lens.tolist()
    order = sorted(range(len(lens)), key=lens.__getitem__)
    for start in range(0, len(order), DECODE_GROUP):
        rows = order[start:start + DECODE_GROUP]
        idx = torch.tensor(rows, device=q.device)
        out[idx] = _decode_group(q[idx], k_cache, v_cache, block_tables[idx], context_lens[idx],
                                 max(lens[r] for r in rows), scale)
    return out


def _decode_group(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                  context_lens: torch.Tensor, max_len: int, scale: float) -> torch.Tensor:
    num_seqs, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    num_blocks = -(-max_len // block_size)
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


def paged_decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                  block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                                  out: torch.Tensor | None = None, *, workspace: torch.Tensor | None = None,
                                  num_splits: int | None = None) -> torch.Tensor:
    """Same contract as the reference; a sequence with context 0 (CUDA-graph padding) gets zeros.

    One program per (sequence, KV head, split) holds that KV head's query group as one tile, so
    each K/V row is read once for the whole group. With several splits (flash-decoding) each
    program covers one partition of the context and writes partial (acc, max, sum) rows to the
    workspace, which a second kernel combines. Everything is sized from shapes, never from
    `context_lens` values, so the call can be captured in a CUDA graph: pass `out`, and a
    `workspace` allocated once outside the graph with `decode_workspace(..., decode_num_splits(...))`
    for the graph's batch size and block-table width (a larger one is fine).
    """
    num_seqs, num_q_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    max_context = block_tables.shape[1] * block_size
    if num_splits is None:
        num_splits = decode_num_splits(num_seqs, num_kv_heads, max_context, q.device)
    out = torch.empty_like(q) if out is None else out
    check_attention_layout(q, k_cache, v_cache, out)
    if num_seqs == 0:
        return out
    partials = _partials(workspace, q, num_splits)
    group = num_q_heads // num_kv_heads
    partition = cdiv(cdiv(max_context, num_splits), BLOCK_N) * BLOCK_N
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, partials,
        scale * math.log2(math.e), partition,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), block_tables.stride(1), out.stride(0), out.stride(1),
        partials.stride(0), partials.stride(1), partials.stride(2),
        GROUP=group, GROUP_PAD=max(16, next_pow2(group)), HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim),
        BLOCK_SIZE=block_size, BLOCK_N=BLOCK_N, SPLIT=num_splits > 1, PRECISION=dot_precision(q.dtype),
        num_warps=4, num_stages=2 if q.element_size() == 4 else 3,
    )
    if num_splits > 1:
        _decode_reduce_kernel[(num_seqs, num_q_heads)](
            partials, out, num_splits, partials.stride(0), partials.stride(1), partials.stride(2),
            out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim), SPLITS_PAD=next_pow2(num_splits), num_warps=4,
        )
    return out


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_context: int, device: torch.device) -> int:
    """How many partitions to split each context into, from shapes only (CUDA-graph safe).

    Enough (sequence, KV head, split) programs for about WAVES per SM, as long as each partition of
    the longest possible context keeps MIN_PARTITION keys. Under the interpreter (CPU tensors)
    there are no SMs to fill: one split unless the caller forces more.
    """
    programs = num_seqs * num_kv_heads
    if device.type != "cuda" or programs == 0:
        return 1
    wanted = cdiv(WAVES * _sm_count(device), programs)
    return max(1, min(wanted, max_context // MIN_PARTITION, MAX_SPLITS))


def decode_workspace(num_seqs: int, num_q_heads: int, head_dim: int, num_splits: int,
                     device: torch.device) -> torch.Tensor:
    """Scratch for split-KV partials, fp32 [num_seqs, num_q_heads, num_splits, head_dim + 2]:
    each row is the unnormalized output, then the running max (log2 units), then the sum."""
    return torch.empty(num_seqs, num_q_heads, num_splits, head_dim + 2, dtype=torch.float32, device=device)


def _partials(workspace: torch.Tensor | None, q: torch.Tensor, num_splits: int) -> torch.Tensor:
    """The workspace viewed for this call (a graph may reuse a larger one), or a fresh one."""
    num_seqs, num_q_heads, head_dim = q.shape
    if num_splits == 1:
        return q  # unused by the kernel, any pointer will do
    if workspace is None:
        return decode_workspace(num_seqs, num_q_heads, head_dim, num_splits, q.device)
    need = num_seqs * num_q_heads * num_splits * (head_dim + 2)
    assert workspace.dtype == torch.float32 and workspace.is_contiguous() and workspace.numel() >= need
    return workspace.view(-1)[:need].view(num_seqs, num_q_heads, num_splits, head_dim + 2)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@jit(do_not_specialize=("partition_size", "stride_bt_seq", "stride_p_seq", "stride_p_head", "stride_p_split"))
def _decode_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, out_ptr, partials_ptr,
                   qk_scale, partition_size,
                   stride_q_seq, stride_q_head, stride_c_block, stride_c_slot, stride_c_head,
                   stride_bt_seq, stride_bt_block, stride_o_seq, stride_o_head,
                   stride_p_seq, stride_p_head, stride_p_split,
                   GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    context = tl.load(context_lens_ptr + seq)
    lo = split * partition_size
    hi = tl.minimum(context, lo + partition_size)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + offs_g
    tile_mask = (offs_g[:, None] < GROUP) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + seq * stride_q_seq + heads[:, None] * stride_q_head + offs_d[None, :],
                mask=tile_mask, other=0.0)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.full([GROUP_PAD], 0.0, tl.float32)
    acc = tl.full([GROUP_PAD, BLOCK_D], 0.0, tl.float32)
    table = block_tables_ptr + seq * stride_bt_seq
    for start in range(lo, hi, BLOCK_N):
        pos = start + offs_n
        live = pos < hi
        m_i, l_i, acc = attend_kv_tile(q, k_cache_ptr, v_cache_ptr, table, pos, live, live[None, :], offs_d, kv_head,
                                       m_i, l_i, acc, qk_scale, stride_bt_block, stride_c_block, stride_c_slot,
                                       stride_c_head, HEAD_DIM, BLOCK_SIZE, PRECISION)

    if SPLIT:
        row = partials_ptr + seq * stride_p_seq + heads * stride_p_head + split * stride_p_split
        tl.store(row[:, None] + offs_d[None, :], acc, mask=tile_mask)
        tl.store(row + HEAD_DIM, m_i, mask=offs_g < GROUP)
        tl.store(row + HEAD_DIM + 1, l_i, mask=offs_g < GROUP)
    else:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + seq * stride_o_seq + heads[:, None] * stride_o_head + offs_d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=tile_mask)


@jit(do_not_specialize=("num_splits", "stride_p_seq", "stride_p_head", "stride_p_split"))
def _decode_reduce_kernel(partials_ptr, out_ptr, num_splits,
                          stride_p_seq, stride_p_head, stride_p_split, stride_o_seq, stride_o_head,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS_PAD: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    live = offs_s < num_splits
    rows = partials_ptr + seq * stride_p_seq + head * stride_p_head + offs_s * stride_p_split
    m = tl.load(rows + HEAD_DIM, mask=live, other=float("-inf"))
    l = tl.load(rows + HEAD_DIM + 1, mask=live, other=0.0)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max > float("-inf"), m_max, 0.0)  # all partitions empty: context 0
    weight = tl.exp2(m - m_max)  # empty partitions (max -inf) weigh nothing
    total = tl.sum(l * weight, 0)
    acc = tl.load(rows[:, None] + offs_d[None, :], mask=live[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    o = tl.sum(acc * weight[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq * stride_o_seq + head * stride_o_head + offs_d, o.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)
