"""paged_prefill_attention: a chunk of new tokens per sequence attends to the sequence's cached
prefix (through the block table) and causally to itself. Prefix hits and chunked prefill need it."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels._triton import (SplitWorkspace, attend_kv_tile, cdiv, check_attention_layout, dot_precision, jit,
                             merge_split, next_pow2, sm_count, split_workspace, tl)
from kernels.rope import select_blocks

ATTEND_CHUNK = 256  # query rows per matmul in the CPU path
# Split-KV for short chunks over long prefixes (the decode kernel's heuristics):
WAVES = 2  # split until there are about this many programs per SM
MIN_KEYS = 128  # fewest keys per split
MAX_SPLITS = 32
ROWS = 64  # query rows (tokens x the query heads of one KV head) a program takes in 16 bits; half in fp32
# Under Triton's interpreter there are no SMs to fill: small splits of tiny contexts exercise the path.
INTERPRET_SPLITS, INTERPRET_MIN_KEYS = 3, 32


def causal_mask(q_len: int, ctx_len: int, device: torch.device) -> torch.Tensor:
    """True where query i (the (ctx_len - q_len + i)-th token) may see key j."""
    rows = torch.arange(q_len, device=device)[:, None] + (ctx_len - q_len)
    return torch.arange(ctx_len, device=device)[None, :] <= rows


def paged_prefill_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor,
                                block_tables: torch.Tensor, scale: float,
                                out: torch.Tensor | None = None, table_rows: torch.Tensor | None = None) -> torch.Tensor:
    """q: [num_tokens, num_q_heads, head_dim], packed per sequence by cu_seqlens_q [num_seqs + 1];
    context_lens [num_seqs]: tokens in cache after this step (prefix + new), the new K/V already stored.
    With `table_rows`, sequence i's block table is row `table_rows[i]` of `block_tables`."""
    out = torch.empty_like(q) if out is None else out
    if table_rows is not None:
        block_tables = block_tables[table_rows.long()]
    cu = cu_seqlens_q.tolist()
    ctx = context_lens.tolist()
    for i in range(len(ctx)):
        start, end, n = cu[i], cu[i + 1], ctx[i]
        k, v = gather_kv(k_cache, v_cache, block_tables[i], n)
        out[start:end] = attend(q[start:end], k.to(q.dtype), v.to(q.dtype), scale)
    return out


def paged_prefill_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                   cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor,
                                   block_tables: torch.Tensor, scale: float, out: torch.Tensor | None = None,
                                   *, max_seqlen_q: int | None = None, table_rows: torch.Tensor | None = None,
                                   max_context: int | None = None) -> torch.Tensor:
    """Same contract as the reference, FlashAttention-style: one program per (query tile,
    sequence, KV head) streams the sequence's K/V through its block table in tiles of BLOCK_N keys
    with an online softmax, stopping at the tile's last visible key. A query tile is the query
    heads of one KV head for a few consecutive tokens, so each K/V tile is read once for all the
    query heads that share it (GQA).

    A short chunk over a long cached prefix (a new question over a document) makes few programs,
    each walking thousands of keys: given `max_context` (the longest context a sequence may
    have), the keys are split over enough programs to fill the GPU, and the last program of a
    tile to finish combines the parts (`split_workspace`). The split depends on shapes only, so a
    CUDA graph can capture it.

    The grid needs the longest query chunk. Without `max_seqlen_q` it is read from `cu_seqlens_q`
    on the host, a device sync; a caller that knows the bound (the engine has its chunk lengths on
    the host, a CUDA graph its token count) passes it and never syncs. With `table_rows`, sequence
    i's block table is row `table_rows[i]` of `block_tables` (the persistent batch's tables).
    """
    num_tokens, num_q_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    num_seqs = context_lens.shape[0]
    out = torch.empty_like(q) if out is None else out
    check_attention_layout(q, k_cache, v_cache, out)
    if max_seqlen_q is None:
        max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) if num_seqs else 0
    if num_tokens == 0 or max_seqlen_q == 0:
        return out
    group = num_q_heads // num_kv_heads
    wide = q.element_size() == 4  # fp32 tiles take twice the shared memory: halve them
    rows, block_n = max(ROWS // 2 if wide else ROWS, next_pow2(group)), 32 if wide else 64
    if q.is_cuda and _busy_tiles(num_tokens, num_seqs, rows // group) * num_kv_heads < sm_count(q.device):
        rows = max(rows // 2, next_pow2(group), 16)  # a small grid: more, shorter query tiles
    block_t = rows // group
    tiles = cdiv(max_seqlen_q, block_t)
    block_d = next_pow2(head_dim)
    splits, min_keys = prefill_num_splits(_busy_tiles(num_tokens, num_seqs, block_t) * num_kv_heads, max_context,
                                          q.device)
    ws = (split_workspace("prefill_attention", q.device, tiles * num_seqs * num_kv_heads * splits * rows * (block_d + 2),
                          tiles * num_seqs * num_kv_heads) if splits > 1 else None)
    if ws is None:
        splits = 1
        ws = SplitWorkspace(out, out)  # unread stand-ins: unsplit programs store directly
    _prefill_kernel[(tiles, num_seqs, num_kv_heads * splits)](
        q, k_cache, v_cache, block_tables, context_lens if table_rows is None else table_rows, cu_seqlens_q,
        context_lens, out, ws.partials, ws.counters,
        scale * math.log2(math.e), splits,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), block_tables.stride(1), out.stride(0), out.stride(1),
        GROUP=group, NUM_KV=num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_SIZE=block_size, ROWS=rows,
        BLOCK_T=block_t, BLOCK_N=block_n, MIN_KEYS=min_keys, SPLIT=splits > 1, TABLE_ROWS=table_rows is not None,
        PRECISION=dot_precision(q.dtype),
        num_warps=4, num_stages=2,
    )
    return out


def _busy_tiles(num_tokens: int, num_seqs: int, block_t: int) -> int:
    """Query tiles that can hold tokens (the grid has more where chunks differ in length). It
    depends on the packed shape only, so an eager step and a graph of the same shape choose the
    same tiles and splits, and compute the same bits."""
    return cdiv(num_tokens, block_t) + num_seqs - 1


def warm_up_prefill_attention(q_dtype: torch.dtype, k_cache: torch.Tensor, v_cache: torch.Tensor, num_q_heads: int,
                              max_context: int) -> None:
    """Compile, before any step needs them, the kernel variants an eager step can take on this
    GPU (short query grids with split keys in short or full tiles, long grids unsplit), so that a
    chat joining others mid-answer never waits a second for the compiler. The indices are int64,
    as the engine's staged inputs are; CUDA graphs compile their own variants when captured."""
    device = k_cache.device
    kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    sm = sm_count(device)
    for seqs in (1, cdiv(sm, kv_heads), cdiv(2 * sm, kv_heads)):
        q = torch.zeros(seqs, num_q_heads, head_dim, dtype=q_dtype, device=device)
        cu = torch.arange(seqs + 1, dtype=torch.int64, device=device)
        ctx = torch.ones(seqs, dtype=torch.int64, device=device)
        tables = torch.zeros(seqs, 1, dtype=torch.int32, device=device)
        paged_prefill_attention_triton(q, k_cache, v_cache, cu, ctx, tables, 1.0, max_seqlen_q=1, max_context=max_context)


def prefill_num_splits(programs: int, max_context: int | None, device: torch.device) -> tuple[int, int]:
    """(programs per (query tile, sequence, KV head), fewest keys a split): enough programs for
    about WAVES per SM while each split of the longest context keeps MIN_KEYS keys; one split
    without `max_context`."""
    cuda = device.type == "cuda"
    min_keys = MIN_KEYS if cuda else INTERPRET_MIN_KEYS
    if max_context is None or programs == 0:
        return 1, min_keys
    wanted = cdiv(WAVES * sm_count(device), programs) if cuda else INTERPRET_SPLITS
    return max(1, min(wanted, cdiv(max_context, min_keys), MAX_SPLITS)), min_keys


def gather_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
              length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `length` K/V rows of one sequence, contiguous: [length, Hkv, D] each."""
    block_size, num_kv_heads, head_dim = k_cache.shape[1:]
    blocks = block_table[:-(-length // block_size)].long()
    k = select_blocks(k_cache, blocks).view(-1, num_kv_heads, head_dim)[:length]
    v = select_blocks(v_cache, blocks).view(-1, num_kv_heads, head_dim)[:length]
    return k, v


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of q [m, Hq, D], the last m of n positions, over k, v [n, Hkv, D] with GQA.

    The CPU path: torch's SDPA, whose CPU flash kernel takes GQA without repeating K/V and, for a
    whole prompt, skips the masked half. In bf16 it ran a 1024-token prompt 1.65x faster than the
    batched matmuls this used before (2.5x in fp32). A chunk after a cached prefix goes
    ATTEND_CHUNK query rows at a time, each masked against only the keys it may see, so the mask
    stays small.
    """
    m, n = q.shape[0], k.shape[0]
    qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # [1, heads, tokens, D]

    def sdpa(rows: torch.Tensor, keys: int, mask: torch.Tensor | None) -> torch.Tensor:
        return F.scaled_dot_product_attention(rows, kt[:, :, :keys], vt[:, :, :keys], attn_mask=mask,
                                              is_causal=mask is None, scale=scale, enable_gqa=True)
    if m == n:
        return sdpa(qt, n, None)[0].transpose(0, 1)
    out = torch.empty_like(qt)
    for r0 in range(0, m, ATTEND_CHUNK):
        r1 = min(m, r0 + ATTEND_CHUNK)
        keys = n - m + r1
        out[:, :, r0:r1] = sdpa(qt[:, :, r0:r1], keys, causal_mask(r1 - r0, keys, q.device))
    return out[0].transpose(0, 1)


@jit(do_not_specialize=("num_splits", "stride_bt_seq"))
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, table_rows_ptr, cu_seqlens_ptr, context_lens_ptr,
                    out_ptr, partials_ptr, counters_ptr, qk_scale, num_splits,
                    stride_q_tok, stride_q_head, stride_c_block, stride_c_slot, stride_c_head,
                    stride_bt_seq, stride_bt_block, stride_o_tok, stride_o_head,
                    GROUP: tl.constexpr, NUM_KV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_SIZE: tl.constexpr, ROWS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
                    MIN_KEYS: tl.constexpr, SPLIT: tl.constexpr, TABLE_ROWS: tl.constexpr,
                    PRECISION: tl.constexpr):
    """Rows of the query tile are (token, head) pairs: row r is token r // GROUP of the tile and
    query head kv_head * GROUP + r % GROUP."""
    tile = tl.program_id(0)
    seq = tl.program_id(1)
    kv_head = tl.program_id(2) // num_splits
    split = tl.program_id(2) % num_splits
    first = tl.load(cu_seqlens_ptr + seq)
    q_len = tl.load(cu_seqlens_ptr + seq + 1) - first
    context = tl.load(context_lens_ptr + seq)
    prefix = context - q_len

    offs_r = tl.arange(0, ROWS)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    tok = tile * BLOCK_T + offs_r // GROUP
    heads = kv_head * GROUP + offs_r % GROUP
    row_live = (offs_r < BLOCK_T * GROUP) & (tok < q_len)
    tokens = (first + tok).to(tl.int64)
    positions = prefix + tok  # of the queries, in the sequence
    tile_mask = row_live[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + tokens[:, None] * stride_q_tok + heads[:, None] * stride_q_head + offs_d[None, :],
                mask=tile_mask, other=0.0)
    # Keys past the tile's last query are invisible to all of it; a tile past the chunk has no work.
    hi = tl.minimum(context, prefix + (tile + 1) * BLOCK_T)
    hi = tl.where(tile * BLOCK_T < q_len, hi, 0)
    if SPLIT:  # this program's part of [0, hi): whole key tiles, at least MIN_KEYS keys a part
        used = tl.maximum(tl.minimum(num_splits, tl.cdiv(hi, MIN_KEYS)), 1)
        part = tl.maximum(tl.cdiv(tl.cdiv(hi, used), BLOCK_N) * BLOCK_N, BLOCK_N)
        used = tl.cdiv(hi, part)  # parts that hold keys (0 for a tile past the chunk)
        lo = split * part
        end = tl.minimum(hi, lo + part)
    else:
        lo = 0
        end = hi

    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.full([ROWS], 0.0, tl.float32)
    acc = tl.full([ROWS, BLOCK_D], 0.0, tl.float32)
    table_row = tl.load(table_rows_ptr + seq).to(tl.int64) if TABLE_ROWS else seq
    table = block_tables_ptr + table_row * stride_bt_seq
    for start in range(lo, end, BLOCK_N):
        pos = start + offs_n
        live = pos < end
        visible = live[None, :] & (pos[None, :] <= positions[:, None])
        m_i, l_i, acc = attend_kv_tile(q, k_cache_ptr, v_cache_ptr, table, pos, live, visible, offs_d, kv_head,
                                       m_i, l_i, acc, qk_scale, stride_bt_block, stride_c_block, stride_c_slot,
                                       stride_c_head, HEAD_DIM, BLOCK_SIZE, PRECISION)

    o_ptrs = out_ptr + tokens[:, None] * stride_o_tok + heads[:, None] * stride_o_head + offs_d[None, :]
    if SPLIT:
        tile_id = (seq * NUM_KV + kv_head) * tl.num_programs(0) + tile
        parts = partials_ptr + (tile_id * num_splits * ROWS + offs_r) * (BLOCK_D + 2)  # [split, row, D + 2]
        if split < used:
            at = parts + split * ROWS * (BLOCK_D + 2)
            tl.store(at[:, None] + offs_d[None, :], acc)
            tl.store(at + BLOCK_D, m_i)
            tl.store(at + BLOCK_D + 1, l_i)
        tl.debug_barrier()  # every thread's partial is written before this program counts itself done
        done = tl.atomic_add(counters_ptr + tile_id, 1, sem="acq_rel", scope="gpu")
        if done == num_splits - 1:  # the last of the tile's programs: combine the parts in order
            m_all = tl.full([ROWS], float("-inf"), tl.float32)
            l_all = tl.full([ROWS], 0.0, tl.float32)
            acc_all = tl.full([ROWS, BLOCK_D], 0.0, tl.float32)
            for p in range(0, used):
                at = parts + p * ROWS * (BLOCK_D + 2)
                m_s = tl.load(at + BLOCK_D, cache_modifier=".cg")
                l_s = tl.load(at + BLOCK_D + 1, cache_modifier=".cg")
                a_s = tl.load(at[:, None] + offs_d[None, :], cache_modifier=".cg")
                m_all, l_all, acc_all = merge_split(m_all, l_all, acc_all, m_s, l_s, a_s)
            o = acc_all / tl.where(l_all > 0, l_all, 1.0)[:, None]
            tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=tile_mask)
            tl.atomic_xchg(counters_ptr + tile_id, 0, sem="relaxed")  # ready for the next call
    else:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=tile_mask)
