"""Decode attention: one new token per sequence, straight from the fused qkv projection.

`decode_attention` rotates the token's q and k (RoPE, and Qwen3's per-head norm), writes its k and
v into the paged cache, and attends over the sequence's context, new token included, in one
launch: the plain version needed a split, a norm, a rotation through `cat`, a store and the
attention. With split-KV (few sequences, so few programs) each sequence's context is cut into
partitions read in parallel, and the last program to finish combines them: still one launch.

`paged_decode_attention_ref` is the attention alone, over what the cache holds. It is the CPU
path, which is bound by copying keys: sequences are gathered in groups of similar length with one
index_select each for K and V; long contexts are then multiplied straight from the gathered
[tokens, Hkv * D] rows with no further copy (see `_decode_gathered`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels._triton import cdiv, dot_precision, jit, merge_split, next_pow2, online_softmax_step, sm_count, tl
from kernels.rope import (head_rmsnorm_halves, rope_cos_sin, rope_rows, rotate_halves, select_blocks,
                          split_rotate_ref, store_ref, to_cache_tl)

BLOCK_N = 64  # keys per inner iteration: one 16 KB K tile at head_dim 128 in 16 bits
# Split-KV heuristics (`python -m kernels.bench --num-splits N` measures others):
WAVES = 2  # split until there are about this many programs per SM
MIN_KEYS = 128  # fewest keys per split of one sequence: a shorter context uses fewer of its splits
MAX_SPLITS = 64
DECODE_GROUP = 8  # CPU path: sequences padded together (sorted by length) when gathered
BLOCK_DIAGONAL_MIN_KEYS = 256  # CPU path: from this many keys on, scores from K's rows as they lie


# ----------------------------------------------------------------------------- CPU path / reference

@dataclass
class DecodeGroup:
    """Sequences whose keys are gathered together, padded to the longest, and attended together.
    Built once per step, so the layers only read it."""

    rows: torch.Tensor | None  # which rows of the step's q (None: all of them, in order)
    index: torch.Tensor  # their blocks, [len(rows) * width], padded with block 0
    pad: torch.Tensor | None  # bool [rows, width * block_size, 1]: keys past a sequence's end


@dataclass
class DecodePlan:
    """How the CPU path reads each sequence's keys, worked out once per step for every layer."""

    lens: list[int]
    groups: list[DecodeGroup]
    # cos and sin of the tokens' positions: every layer rotates the same positions, so the first
    # layer gathers them and the others read them
    rope_rows: tuple[torch.Tensor, torch.Tensor] | None = None


def plan_decode(tables: list[list[int]], lens: list[int], block_size: int,
                device: torch.device | str = "cpu") -> DecodePlan:
    order = sorted(range(len(lens)), key=lens.__getitem__)
    groups = []
    for start in range(0, len(order), DECODE_GROUP):
        rows = order[start:start + DECODE_GROUP]
        width = cdiv(max(lens[r] for r in rows), block_size)
        index = torch.tensor([(tables[r][:width] + [0] * width)[:width] for r in rows], dtype=torch.long)
        seq_lens = torch.tensor([lens[r] for r in rows])
        pad = torch.arange(width * block_size)[None, :] >= seq_lens[:, None]
        groups.append(DecodeGroup(None if rows == list(range(len(lens))) else torch.tensor(rows, device=device),
                                  index.view(-1).to(device), pad[:, :, None].to(device) if bool(pad.any()) else None))
    return DecodePlan(lens, groups)


def paged_decode_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, context_lens: torch.Tensor,
                               scale: float, out: torch.Tensor | None = None,
                               plan: DecodePlan | None = None) -> torch.Tensor:
    """q: [num_seqs, num_q_heads, head_dim]; caches: [num_blocks, block_size, num_kv_heads, head_dim];
    block_tables: [num_seqs, max_blocks] int32 (entries past a sequence's length are ignored);
    context_lens: [num_seqs] int32. Returns [num_seqs, num_q_heads, head_dim], in `out` if given.
    `plan` (from `plan_decode`) saves re-reading the tables in every layer."""
    out = torch.empty_like(q) if out is None else out
    if plan is None:
        lens = context_lens.tolist()
        tables = [row[:cdiv(n, k_cache.shape[1])] for row, n in zip(block_tables.tolist(), lens)]
        plan = plan_decode(tables, lens, k_cache.shape[1], q.device)
    for group in plan.groups:
        if group.rows is None:
            out.copy_(_decode_gathered(q, k_cache, v_cache, group.index, group.pad, scale))
        else:
            out[group.rows] = _decode_gathered(q[group.rows], k_cache, v_cache, group.index, group.pad, scale)
    return out


def _decode_gathered(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, index: torch.Tensor,
                     pad: torch.Tensor | None, scale: float) -> torch.Tensor:
    """q [S, Hq, D] over the gathered blocks `index` of each sequence; `pad` ([S, T, 1]) masks
    the keys past each sequence's end.

    Long contexts: each sequence's gathered K is a [T, Hkv * D] matrix as it lies in memory.
    Multiplying it by a block-diagonal [Hkv * D, Hq] matrix of the queries (each query head's
    column non-zero only in its KV head's D rows) gives every head's scores in one batched matmul
    with no copy of K into a per-head layout: the zeros cost arithmetic, which is cheap here, not
    memory traffic, which is not. V goes the same way (every head's probabilities against every
    head's V rows, of which the diagonal blocks are kept). Short contexts, where the copy is small,
    multiply per-head views instead: fewer operations. Measured at 8 sequences on the project's
    CPU: equal up to 128 keys, 1.3x at 256, 1.5x at 512 and beyond (BENCHMARKS.md, issue 12)."""
    num_seqs, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    k = select_blocks(k_cache, index).view(num_seqs, -1, num_kv_heads * head_dim).to(q.dtype)
    v = select_blocks(v_cache, index).view(num_seqs, -1, num_kv_heads * head_dim).to(q.dtype)
    if k.shape[1] < BLOCK_DIAGONAL_MIN_KEYS:
        qg = q.view(num_seqs, num_kv_heads, group, head_dim)
        k, v = (x.view(num_seqs, -1, num_kv_heads, head_dim) for x in (k, v))
        scores = torch.matmul(qg, k.permute(0, 2, 3, 1)).float().mul_(scale)  # [S, Hkv, group, T]
        if pad is not None:
            scores.masked_fill_(pad.view(num_seqs, 1, 1, -1), float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(q.dtype)
        return torch.matmul(probs, v.permute(0, 2, 1, 3)).view(num_seqs, num_q_heads, head_dim)
    queries = q.new_zeros(num_seqs, num_kv_heads, head_dim, num_kv_heads, group)
    torch.diagonal(queries, dim1=1, dim2=3).copy_(q.view(num_seqs, num_kv_heads, group, head_dim).permute(0, 3, 2, 1))
    scores = torch.bmm(k, queries.view(num_seqs, num_kv_heads * head_dim, num_q_heads)).float().mul_(scale)
    if pad is not None:  # scores: [S, T, Hq]
        scores.masked_fill_(pad, float("-inf"))
    probs = torch.softmax(scores, dim=1).to(q.dtype)
    every = torch.bmm(probs.transpose(1, 2), v).view(num_seqs, num_kv_heads, group, num_kv_heads, head_dim)
    return torch.diagonal(every, dim1=1, dim2=3).permute(0, 3, 1, 2).reshape(num_seqs, num_q_heads, head_dim)


def decode_attention_ref(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                         block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                         num_q_heads: int, num_kv_heads: int, q_norm: torch.Tensor | None = None,
                         k_norm: torch.Tensor | None = None, eps: float = 1e-6,
                         out: torch.Tensor | None = None, plan: DecodePlan | None = None,
                         table_rows: torch.Tensor | None = None) -> torch.Tensor:
    """qkv: [num_seqs, (Hq + 2 Hkv) * D], one new token per sequence at `positions` (= context - 1),
    stored at `slot_mapping`. Rotates it, stores its k and v, attends over context_lens tokens.
    Returns [num_seqs, Hq, D]; rows with context 0 (padding) get zeros. `qkv` is left as it was."""
    if table_rows is not None:
        block_tables = block_tables[table_rows.long()]
    rows = None
    if plan is not None:
        if plan.rope_rows is None:
            plan.rope_rows = rope_rows(cos, sin, positions, qkv.dtype)
        rows = plan.rope_rows
    q, k, v = split_rotate_ref(qkv, positions, cos, sin, num_q_heads, num_kv_heads, q_norm, k_norm, eps, rows)
    store_ref(k, v, k_cache, v_cache, slot_mapping)
    live = context_lens > 0
    if bool(live.all()):
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if out is None else out
        return paged_decode_attention_ref(q, k_cache, v_cache, block_tables, context_lens, scale, out, plan)
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device) if out is None else out.zero_()
    idx = live.nonzero().view(-1)
    if idx.numel():
        out[idx] = paged_decode_attention_ref(q[idx], k_cache, v_cache, block_tables[idx], context_lens[idx], scale)
    return out


# ----------------------------------------------------------------------------- Triton

def decode_attention_triton(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                            k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                            block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                            num_q_heads: int, num_kv_heads: int, q_norm: torch.Tensor | None = None,
                            k_norm: torch.Tensor | None = None, eps: float = 1e-6,
                            out: torch.Tensor | None = None, *, workspace: torch.Tensor | None = None,
                            num_splits: int | None = None, table_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as the reference; `qkv` is left as it was. With `table_rows`, sequence i's
    block table is row `table_rows[i]` of `block_tables` (the persistent batch's tables).

    One program per (sequence, KV head, split) holds that KV head's query group as one tile, so
    each K/V row is read once for the whole group. With several splits (few sequences), each
    sequence's context is cut on the device into partitions of at least MIN_KEYS keys, as many as
    its length allows; each program writes its partial (acc, max, sum) rows to the workspace and
    counts itself done on an atomic counter, and the last of a sequence's programs combines the
    partials and writes the output: one launch, whatever the split. The program whose partition
    holds the new token rotates and stores its k and v and folds it in from registers. Grid and
    split count depend on shapes only, so the call can be captured in a CUDA graph: pass `out`,
    and a `workspace` from `decode_workspace` allocated outside the graph (a larger one is fine;
    its counters start at zero and the kernel leaves them so).
    """
    num_seqs = qkv.shape[0]
    _, block_size, _, head_dim = k_cache.shape
    max_context = block_tables.shape[1] * block_size
    if num_splits is None:
        num_splits = decode_num_splits(num_seqs, num_kv_heads, max_context, qkv.device)
    if out is None:
        out = torch.empty(num_seqs, num_q_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    assert out.shape == (num_seqs, num_q_heads, head_dim) and out.stride(-1) == 1 and qkv.stride(1) == 1
    assert k_cache.shape == v_cache.shape and k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    assert num_q_heads % num_kv_heads == 0 and cos.is_contiguous() and sin.is_contiguous()
    if num_seqs == 0:
        return out
    if workspace is None:
        workspace = decode_workspace(num_seqs, num_q_heads, num_kv_heads, head_dim, num_splits, qkv.device)
    partials, counters = workspace.view_for(num_seqs, num_q_heads, num_kv_heads, head_dim, num_splits)
    group = num_q_heads // num_kv_heads
    norm = q_norm is not None
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        qkv, positions, cos, sin, k_cache, v_cache, slot_mapping, block_tables,
        context_lens if table_rows is None else table_rows, context_lens, out, partials, counters,
        q_norm if norm else cos, k_norm if norm else cos, eps, scale * math.log2(math.e), num_splits,
        qkv.stride(0), cos.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), block_tables.stride(1), out.stride(0), out.stride(1),
        partials.stride(0), partials.stride(1), partials.stride(2),
        NUM_Q=num_q_heads, NUM_KV=num_kv_heads, GROUP=group, GROUP_PAD=max(16, next_pow2(group)),
        HALF=head_dim // 2, HALF_PAD=max(16, next_pow2(head_dim // 2)), BLOCK_D=max(16, next_pow2(head_dim)),
        BLOCK_SIZE=block_size, BLOCK_N=BLOCK_N, MIN_KEYS=MIN_KEYS, SPLIT=num_splits > 1, QK_NORM=norm,
        TABLE_ROWS=table_rows is not None, PRECISION=dot_precision(qkv.dtype), num_warps=4,
        num_stages=2 if qkv.element_size() == 4 else 3,
    )
    return out


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_context: int, device: torch.device) -> int:
    """How many programs to give each (sequence, KV head), from shapes only (CUDA-graph safe).

    Enough (sequence, KV head, split) programs for about WAVES per SM, as long as the longest
    possible context keeps MIN_KEYS keys a split. Under the interpreter (CPU tensors) there are no
    SMs to fill: one split unless the caller forces more.
    """
    programs = num_seqs * num_kv_heads
    if device.type != "cuda" or programs == 0:
        return 1
    wanted = cdiv(WAVES * sm_count(device), programs)
    return max(1, min(wanted, max_context // MIN_KEYS, MAX_SPLITS))


@dataclass
class DecodeWorkspace:
    """Scratch for split-KV: fp32 partials [num_seqs, num_q_heads, num_splits, head_dim + 2] (each
    row the unnormalized output, then the running max in log2 units, then the sum), and one int32
    counter per (sequence, KV head), zero between calls."""

    partials: torch.Tensor
    counters: torch.Tensor

    def view_for(self, num_seqs: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                 num_splits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views for one call (a graph may reuse a workspace sized for its largest batch)."""
        need = num_seqs * num_q_heads * num_splits * (head_dim + 2)
        assert self.partials.numel() >= need and self.counters.numel() >= num_seqs * num_kv_heads
        partials = self.partials.view(-1)[:need].view(num_seqs, num_q_heads, num_splits, head_dim + 2)
        return partials, self.counters[:num_seqs * num_kv_heads]


def decode_workspace(num_seqs: int, num_q_heads: int, num_kv_heads: int, head_dim: int, num_splits: int,
                     device: torch.device) -> DecodeWorkspace:
    return DecodeWorkspace(
        torch.empty(num_seqs, num_q_heads, max(num_splits, 1), head_dim + 2, dtype=torch.float32, device=device),
        torch.zeros(num_seqs * num_kv_heads, dtype=torch.int32, device=device))


@jit
def _score_tile(q1, q2, k_cache_ptr, v_cache_ptr, table, pos, live, offs_h, offs_d, kv_head, m_i, l_i, acc,
                qk_scale, stride_bt_block, stride_c_block, stride_c_slot, stride_c_head,
                HALF: tl.constexpr, BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):
    """One online-softmax step over cached positions `pos` (`live` masks the rest): k is read in
    the same two halves as the rotated query, v whole."""
    page = tl.load(table + (pos // BLOCK_SIZE) * stride_bt_block, mask=live, other=0).to(tl.int64)
    rows = page * stride_c_block + (pos % BLOCK_SIZE) * stride_c_slot + kv_head * stride_c_head
    half_mask = live[:, None] & (offs_h[None, :] < HALF)
    k1 = tl.load(k_cache_ptr + rows[:, None] + offs_h[None, :], mask=half_mask, other=0.0).to(q1.dtype)
    k2 = tl.load(k_cache_ptr + rows[:, None] + HALF + offs_h[None, :], mask=half_mask, other=0.0).to(q1.dtype)
    v = tl.load(v_cache_ptr + rows[:, None] + offs_d[None, :], mask=live[:, None] & (offs_d[None, :] < 2 * HALF),
                other=0.0).to(q1.dtype)
    s = tl.dot(q1, tl.trans(k1), input_precision=PRECISION) + tl.dot(q2, tl.trans(k2), input_precision=PRECISION)
    return online_softmax_step(tl.where(live[None, :], s * qk_scale, float("-inf")), v, m_i, l_i, acc, PRECISION)


@jit(do_not_specialize=("num_splits", "stride_bt_seq", "stride_p_seq", "stride_p_head", "stride_p_split"))
def _decode_kernel(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, block_tables_ptr,
                   table_rows_ptr, context_lens_ptr, out_ptr, partials_ptr, counters_ptr, q_norm_ptr, k_norm_ptr,
                   eps, qk_scale, num_splits,
                   stride_qkv, stride_cos, stride_c_block, stride_c_slot, stride_c_head,
                   stride_bt_seq, stride_bt_block, stride_o_seq, stride_o_head,
                   stride_p_seq, stride_p_head, stride_p_split,
                   NUM_Q: tl.constexpr, NUM_KV: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                   HALF: tl.constexpr, HALF_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, MIN_KEYS: tl.constexpr, SPLIT: tl.constexpr,
                   QK_NORM: tl.constexpr, TABLE_ROWS: tl.constexpr, PRECISION: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    dtype = qkv_ptr.dtype.element_ty
    context = tl.load(context_lens_ptr + seq)
    new_pos = context - 1  # the new token's position: it comes from registers, not the cache
    # this sequence's partitions: at most num_splits, of at least MIN_KEYS keys, whole key tiles
    used = tl.maximum(tl.minimum(num_splits, tl.cdiv(context, MIN_KEYS)), 1)
    partition = tl.maximum(tl.cdiv(tl.cdiv(context, used), BLOCK_N) * BLOCK_N, BLOCK_N)
    used = tl.cdiv(context, partition)  # partitions that hold keys (0 for an empty context)
    lo = split * partition
    hi = tl.minimum(context, lo + partition)
    owns_new = (new_pos >= lo) & (new_pos < hi)

    row = qkv_ptr + seq * stride_qkv
    offs_g = tl.arange(0, GROUP_PAD)
    offs_h = tl.arange(0, HALF_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    pos = tl.load(pos_ptr + seq).to(tl.int64)
    c, s = rope_cos_sin(cos_ptr, sin_ptr, pos * stride_cos, offs_h, HALF, dtype)
    q_mask = (offs_g[:, None] < GROUP) & (offs_h[None, :] < HALF)
    q_base = row + (kv_head * GROUP + offs_g[:, None]) * (2 * HALF) + offs_h[None, :]
    q1 = tl.load(q_base, mask=q_mask, other=0.0).to(tl.float32)
    q2 = tl.load(q_base + HALF, mask=q_mask, other=0.0).to(tl.float32)
    k_base = row + (NUM_Q + kv_head) * (2 * HALF) + offs_h[None, :]
    k_mask = (offs_g[:, None] < 1) & (offs_h[None, :] < HALF)  # one row: the KV head's own
    k1 = tl.load(k_base + offs_g[:, None] * 0, mask=k_mask, other=0.0).to(tl.float32)
    k2 = tl.load(k_base + offs_g[:, None] * 0 + HALF, mask=k_mask, other=0.0).to(tl.float32)
    if QK_NORM:
        q1, q2 = head_rmsnorm_halves(q1, q2, q_norm_ptr, offs_h, eps, HALF, dtype)
        k1, k2 = head_rmsnorm_halves(k1, k2, k_norm_ptr, offs_h, eps, HALF, dtype)
    q1, q2 = rotate_halves(q1, q2, c, s, dtype)
    k1, k2 = rotate_halves(k1, k2, c, s, dtype)
    v_new = tl.load(row + (NUM_Q + NUM_KV + kv_head) * (2 * HALF) + offs_d, mask=offs_d < 2 * HALF, other=0.0)

    slot = tl.load(slot_ptr + seq).to(tl.int64)
    if owns_new & (slot >= 0):
        dst = ((slot // BLOCK_SIZE) * stride_c_block + (slot % BLOCK_SIZE) * stride_c_slot
               + kv_head * stride_c_head)
        cache_dtype = k_cache_ptr.dtype.element_ty
        tl.store(k_cache_ptr + dst + offs_g[:, None] * 0 + offs_h[None, :], to_cache_tl(k1, cache_dtype), mask=k_mask)
        tl.store(k_cache_ptr + dst + HALF + offs_g[:, None] * 0 + offs_h[None, :], to_cache_tl(k2, cache_dtype),
                 mask=k_mask)
        tl.store(v_cache_ptr + dst + offs_d, to_cache_tl(v_new, cache_dtype), mask=offs_d < 2 * HALF)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.full([GROUP_PAD], 0.0, tl.float32)
    acc = tl.full([GROUP_PAD, BLOCK_D], 0.0, tl.float32)
    table_row = tl.load(table_rows_ptr + seq).to(tl.int64) if TABLE_ROWS else seq
    table = block_tables_ptr + table_row * stride_bt_seq
    cached_hi = tl.minimum(hi, new_pos)
    for start in range(lo, cached_hi, BLOCK_N):
        pos_n = start + offs_n
        m_i, l_i, acc = _score_tile(q1, q2, k_cache_ptr, v_cache_ptr, table, pos_n, pos_n < cached_hi, offs_h,
                                    offs_d, kv_head, m_i, l_i, acc, qk_scale, stride_bt_block, stride_c_block,
                                    stride_c_slot, stride_c_head, HALF, BLOCK_SIZE, PRECISION)
    if owns_new:
        # the new token: k1/k2 hold it in row 0 only; sum over that row for every query head
        k1_row = tl.sum(k1.to(tl.float32), 0)
        k2_row = tl.sum(k2.to(tl.float32), 0)
        s_new = (tl.sum(q1.to(tl.float32) * k1_row[None, :], 1)
                 + tl.sum(q2.to(tl.float32) * k2_row[None, :], 1)) * qk_scale
        m_new = tl.maximum(m_i, s_new)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s_new - m_new)
        l_i = l_i * alpha + p
        p_v = p.to(dtype).to(tl.float32)
        acc = acc * alpha[:, None] + p_v[:, None] * v_new.to(tl.float32)[None, :]
        m_i = m_new

    heads = kv_head * GROUP + offs_g
    tile_mask = (offs_g[:, None] < GROUP) & (offs_d[None, :] < 2 * HALF)
    o_ptrs = out_ptr + seq * stride_o_seq + heads[:, None] * stride_o_head + offs_d[None, :]
    if SPLIT:
        prows = partials_ptr + seq * stride_p_seq + heads * stride_p_head
        if split < used:
            prow = prows + split * stride_p_split
            tl.store(prow[:, None] + offs_d[None, :], acc, mask=tile_mask)
            tl.store(prow + 2 * HALF, m_i, mask=offs_g < GROUP)
            tl.store(prow + 2 * HALF + 1, l_i, mask=offs_g < GROUP)
        tl.debug_barrier()  # every thread's partial is written before this program counts itself done
        done = tl.atomic_add(counters_ptr + seq * NUM_KV + kv_head, 1, sem="acq_rel", scope="gpu")
        if done == num_splits - 1:  # the last of this sequence's programs: combine the partitions
            m_all = tl.full([GROUP_PAD], float("-inf"), tl.float32)
            l_all = tl.full([GROUP_PAD], 0.0, tl.float32)
            acc_all = tl.full([GROUP_PAD, BLOCK_D], 0.0, tl.float32)
            for part in range(0, used):
                prow = prows + part * stride_p_split
                m_s = tl.load(prow + 2 * HALF, mask=offs_g < GROUP, other=float("-inf"), cache_modifier=".cg")
                l_s = tl.load(prow + 2 * HALF + 1, mask=offs_g < GROUP, other=0.0, cache_modifier=".cg")
                a_s = tl.load(prow[:, None] + offs_d[None, :], mask=tile_mask, other=0.0, cache_modifier=".cg")
                m_all, l_all, acc_all = merge_split(m_all, l_all, acc_all, m_s, l_s, a_s)
            o = acc_all / tl.where(l_all > 0, l_all, 1.0)[:, None]
            tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=tile_mask)
            tl.atomic_xchg(counters_ptr + seq * NUM_KV + kv_head, 0, sem="relaxed")  # ready for the next call
    else:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=tile_mask)
