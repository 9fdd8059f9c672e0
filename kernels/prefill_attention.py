"""paged_prefill_attention: a chunk of new tokens per sequence attends to the sequence's cached
prefix (through the block table) and causally to itself. Prefix hits and chunked prefill need it."""
from __future__ import annotations

import math

import torch

from kernels._triton import attend_kv_tile, cdiv, check_attention_layout, dot_precision, jit, next_pow2, tl
from kernels.rope import select_blocks

ATTEND_CHUNK = 256  # query rows per matmul in the CPU path


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
                                   *, max_seqlen_q: int | None = None,
                                   table_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as the reference, FlashAttention-style: one program per (query tile of
    BLOCK_M new tokens, sequence, query head) streams the sequence's K/V through its block table
    in tiles of BLOCK_N keys with an online softmax, stopping at the tile's last visible key.

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
    wide = q.element_size() == 4  # fp32 tiles take twice the shared memory: halve them
    block_m, block_n = (32, 32) if wide else (64, 64)
    _prefill_kernel[(cdiv(max_seqlen_q, block_m), num_seqs, num_q_heads)](
        q, k_cache, v_cache, block_tables, context_lens if table_rows is None else table_rows, cu_seqlens_q,
        context_lens, out,
        scale * math.log2(math.e),
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), block_tables.stride(1), out.stride(0), out.stride(1),
        GROUP=num_q_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=next_pow2(head_dim),
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=block_n, TABLE_ROWS=table_rows is not None,
        PRECISION=dot_precision(q.dtype),
        num_warps=4, num_stages=2,
    )
    return out


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

    The CPU path, as batched matmuls per KV head (its query heads share one matmul, no repeated
    K/V), about 2x faster than SDPA here. Queries go in chunks of ATTEND_CHUNK rows, each against
    only the keys it may see: half the work of a full masked square, and bounded scratch memory.
    """
    m, num_q_heads, head_dim = q.shape
    n, num_kv_heads, _ = k.shape
    group = num_q_heads // num_kv_heads
    kt = k.permute(1, 2, 0).contiguous()  # [Hkv, D, n]
    vt = v.transpose(0, 1).contiguous()  # [Hkv, n, D]
    qt = q.transpose(0, 1).reshape(num_kv_heads, group, m, head_dim)
    out = torch.empty(num_kv_heads, group, m, head_dim, dtype=q.dtype, device=q.device)
    prefix = n - m
    for r0 in range(0, m, ATTEND_CHUNK):
        r1 = min(m, r0 + ATTEND_CHUNK)
        rows, keys = r1 - r0, prefix + r1
        qc = qt[:, :, r0:r1].reshape(num_kv_heads, group * rows, head_dim)
        scores = torch.bmm(qc, kt[:, :, :keys]).float().mul_(scale).view(num_kv_heads, group, rows, keys)
        scores.masked_fill_(~causal_mask(rows, keys, q.device), float("-inf"))
        probs = torch.softmax(scores.view(num_kv_heads, group * rows, keys), dim=-1).to(v.dtype)
        out[:, :, r0:r1] = torch.bmm(probs, vt[:, :keys]).view(num_kv_heads, group, rows, head_dim)
    return out.view(num_q_heads, m, head_dim).transpose(0, 1)


@jit(do_not_specialize=("stride_bt_seq",))
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, table_rows_ptr, cu_seqlens_ptr, context_lens_ptr,
                    out_ptr,
                    qk_scale,
                    stride_q_tok, stride_q_head, stride_c_block, stride_c_slot, stride_c_head,
                    stride_bt_seq, stride_bt_block, stride_o_tok, stride_o_head,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TABLE_ROWS: tl.constexpr, PRECISION: tl.constexpr):
    tile = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // GROUP
    first = tl.load(cu_seqlens_ptr + seq)
    q_len = tl.load(cu_seqlens_ptr + seq + 1) - first
    context = tl.load(context_lens_ptr + seq)
    prefix = context - q_len

    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    tokens = (first + offs_m).to(tl.int64)
    positions = prefix + offs_m  # of the queries, in the sequence
    tile_mask = (offs_m[:, None] < q_len) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_ptr + tokens[:, None] * stride_q_tok + head * stride_q_head + offs_d[None, :],
                mask=tile_mask, other=0.0)
    # Keys past the tile's last query are invisible to all of it; a tile past the chunk has no work.
    hi = tl.minimum(context, prefix + (tile + 1) * BLOCK_M)
    hi = tl.where(tile * BLOCK_M < q_len, hi, 0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    table_row = tl.load(table_rows_ptr + seq).to(tl.int64) if TABLE_ROWS else seq
    table = block_tables_ptr + table_row * stride_bt_seq
    for start in range(0, hi, BLOCK_N):
        pos = start + offs_n
        live = pos < hi
        visible = live[None, :] & (pos[None, :] <= positions[:, None])
        m_i, l_i, acc = attend_kv_tile(q, k_cache_ptr, v_cache_ptr, table, pos, live, visible, offs_d, kv_head,
                                       m_i, l_i, acc, qk_scale, stride_bt_block, stride_c_block, stride_c_slot,
                                       stride_c_head, HEAD_DIM, BLOCK_SIZE, PRECISION)

    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + tokens[:, None] * stride_o_tok + head * stride_o_head + offs_d[None, :],
             o.to(out_ptr.dtype.element_ty), mask=tile_mask)
