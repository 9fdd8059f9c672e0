"""Rotary position embedding applied where q and k are read, never through `cat`.

`rope_store_kv` takes the fused qkv projection of the step's tokens, rotates q in place, and
writes rotated k and plain v into their KV cache slots (slot -1 = padding, skipped): one kernel
instead of the split, norm, cos/sin gather, rotate_half, cat and store of the plain version. The
decode attention kernel does the same for decode tokens itself (kernels/decode_attention.py).

The rotation is transformers' `q * cos + rotate_half(q) * sin` on the two halves of each head,
with its rounding: cos and sin are cast to the model dtype, each product and the sum rounded.
Qwen3 normalises q and k per head first (`q_norm`, `k_norm`), also done here.
"""
from __future__ import annotations

import torch

from kernels._triton import jit, next_pow2, tl


FP8_MAX = 448.0  # float8 e4m3's largest finite value: K and V saturate there rather than turn NaN


def to_cache(x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """x in the cache's dtype; an fp8 cache saturates at its range."""
    if cache.dtype == torch.float8_e4m3fn:
        return x.float().clamp(-FP8_MAX, FP8_MAX).to(cache.dtype)
    return x.to(cache.dtype)


def store_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              slot_mapping: torch.Tensor) -> None:
    """k, v [N, Hkv, D] into their cache slots (slot -1 = padding, skipped)."""
    valid = slot_mapping >= 0
    every = bool(valid.all())  # the CPU's steps have no padding: no masked copies then
    slots = slot_mapping.long() if every else slot_mapping[valid].long()
    for x, cache in ((k, k_cache), (v, v_cache)):
        rows = to_cache(x if every else x[valid], cache)
        if cache.dtype == torch.float8_e4m3fn:  # torch copies fp8 only as its bytes
            cache, rows = cache.view(torch.uint8), rows.view(torch.uint8)
        cache.view(-1, *cache.shape[2:]).index_copy_(0, slots, rows)


def select_blocks(cache: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """cache.index_select(0, index), for fp8 caches too (torch gathers fp8 only as its bytes)."""
    if cache.dtype == torch.float8_e4m3fn:
        return cache.view(torch.uint8).index_select(0, index).view(cache.dtype)
    return cache.index_select(0, index)


def rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [N, H, D]; cos, sin: [N, D] in x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def head_rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rope_rows(cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos and sin rows of `positions`, in the model dtype: the same for every layer of a step."""
    return cos[positions].to(dtype), sin[positions].to(dtype)


def split_rotate_ref(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     num_q_heads: int, num_kv_heads: int, q_norm: torch.Tensor | None = None,
                     k_norm: torch.Tensor | None = None, eps: float = 1e-6,
                     rows: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k (rotated, normalised first where the model says so) and v as [N, heads, D] views or
    copies. `rows`: `rope_rows` of `positions`, when the caller already has them."""
    n = qkv.shape[0]
    head_dim = qkv.shape[1] // (num_q_heads + 2 * num_kv_heads)
    heads = qkv.view(n, num_q_heads + 2 * num_kv_heads, head_dim)
    c, s = rows if rows is not None else rope_rows(cos, sin, positions, qkv.dtype)
    v = heads[:, num_q_heads + num_kv_heads:]
    if q_norm is None:  # q and k side by side: one rotation for both
        qk = rotate_ref(heads[:, :num_q_heads + num_kv_heads], c, s)
        return qk[:, :num_q_heads], qk[:, num_q_heads:], v
    q = head_rmsnorm_ref(heads[:, :num_q_heads], q_norm, eps)
    k = head_rmsnorm_ref(heads[:, num_q_heads:num_q_heads + num_kv_heads], k_norm, eps)
    return rotate_ref(q, c, s), rotate_ref(k, c, s), v


def rope_store_kv_ref(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                      num_q_heads: int, num_kv_heads: int, q_norm: torch.Tensor | None = None,
                      k_norm: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """qkv: [N, (Hq + 2 Hkv) * D]; positions, slot_mapping: [N]; cos, sin: [max_positions, D] fp32
    tables. Rotates q in place in `qkv` and returns it as [N, Hq, D]; stores rotated k and v."""
    q, k, v = split_rotate_ref(qkv, positions, cos, sin, num_q_heads, num_kv_heads, q_norm, k_norm, eps)
    n, head_dim = qkv.shape[0], q.shape[-1]
    qkv[:, :num_q_heads * head_dim] = q.reshape(n, -1)
    store_ref(k, v, k_cache, v_cache, slot_mapping)
    return qkv[:, :num_q_heads * head_dim].view(n, num_q_heads, head_dim)


def rope_store_kv_triton(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                         num_q_heads: int, num_kv_heads: int, q_norm: torch.Tensor | None = None,
                         k_norm: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Same contract as the reference; one program per token, no host sync (graph-safe)."""
    n = qkv.shape[0]
    head_dim = qkv.shape[1] // (num_q_heads + 2 * num_kv_heads)
    assert qkv.stride(1) == 1 and k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    assert cos.is_contiguous() and sin.is_contiguous() and head_dim % 2 == 0
    if n:
        norm = q_norm is not None
        _rope_store_kernel[(n,)](
            qkv, positions, cos, sin, k_cache, v_cache, slot_mapping,
            q_norm if norm else cos, k_norm if norm else cos, eps,
            qkv.stride(0), cos.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            NUM_Q=num_q_heads, NUM_KV=num_kv_heads, Q_PAD=next_pow2(num_q_heads), KV_PAD=next_pow2(num_kv_heads),
            HALF=head_dim // 2, HALF_PAD=next_pow2(head_dim // 2), BLOCK_SIZE=k_cache.shape[1], QK_NORM=norm,
            num_warps=4,
        )
    return qkv[:, :num_q_heads * head_dim].view(n, num_q_heads, head_dim)


@jit
def to_cache_tl(x, CACHE_DTYPE: tl.constexpr):
    """`to_cache` in a kernel: saturate at fp8's range, round to the cache's dtype."""
    if CACHE_DTYPE == tl.float8e4nv:
        x = tl.minimum(tl.maximum(x.to(tl.float32), -448.0), 448.0)
    return x.to(CACHE_DTYPE)


@jit
def rope_cos_sin(cos_ptr, sin_ptr, pos, offs_d, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """cos and sin of one position, first half of the table row, rounded to the model dtype."""
    mask = offs_d < HALF
    c = tl.load(cos_ptr + pos + offs_d, mask=mask, other=0.0).to(DTYPE).to(tl.float32)
    s = tl.load(sin_ptr + pos + offs_d, mask=mask, other=0.0).to(DTYPE).to(tl.float32)
    return c, s


@jit
def rotate_halves(x1, x2, c, s, DTYPE: tl.constexpr):
    """[heads, HALF] halves (fp32 holding model-dtype values) -> rotated halves in the model dtype."""
    o1 = (x1 * c[None, :]).to(DTYPE).to(tl.float32) + (-x2 * s[None, :]).to(DTYPE).to(tl.float32)
    o2 = (x2 * c[None, :]).to(DTYPE).to(tl.float32) + (x1 * s[None, :]).to(DTYPE).to(tl.float32)
    return o1.to(DTYPE), o2.to(DTYPE)


@jit
def head_rmsnorm_halves(x1, x2, w_ptr, offs_d, eps, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """Per-head RMSNorm (Qwen3's q_norm / k_norm) of [heads, HALF] halves, in fp32 holding model-dtype values."""
    var = (tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / (2 * HALF)
    rstd = 1.0 / tl.sqrt(var + eps)
    mask = offs_d < HALF
    w1 = tl.load(w_ptr + offs_d, mask=mask, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + HALF + offs_d, mask=mask, other=0.0).to(tl.float32)
    n1 = (x1 * rstd[:, None]).to(DTYPE).to(tl.float32)
    n2 = (x2 * rstd[:, None]).to(DTYPE).to(tl.float32)
    return (w1[None, :] * n1).to(DTYPE).to(tl.float32), (w2[None, :] * n2).to(DTYPE).to(tl.float32)


@jit
def load_heads(row_ptr, first_head, offs_h, offs_d, num_heads, HALF: tl.constexpr):
    """Both halves of heads first_head + offs_h of one token's packed projection, as fp32."""
    mask = (offs_h[:, None] < num_heads) & (offs_d[None, :] < HALF)
    base = row_ptr + (first_head + offs_h[:, None]) * (2 * HALF) + offs_d[None, :]
    x1 = tl.load(base, mask=mask, other=0.0)
    x2 = tl.load(base + HALF, mask=mask, other=0.0)
    return x1.to(tl.float32), x2.to(tl.float32), mask


@jit
def _rope_store_kernel(qkv_ptr, pos_ptr, cos_ptr, sin_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                       q_norm_ptr, k_norm_ptr, eps,
                       stride_qkv, stride_cos, stride_c_block, stride_c_slot, stride_c_head,
                       NUM_Q: tl.constexpr, NUM_KV: tl.constexpr, Q_PAD: tl.constexpr, KV_PAD: tl.constexpr,
                       HALF: tl.constexpr, HALF_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                       QK_NORM: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    dtype = qkv_ptr.dtype.element_ty
    row = qkv_ptr + tok * stride_qkv
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    offs_d = tl.arange(0, HALF_PAD)
    c, s = rope_cos_sin(cos_ptr, sin_ptr, pos * stride_cos, offs_d, HALF, dtype)

    offs_q = tl.arange(0, Q_PAD)
    q1, q2, q_mask = load_heads(row, 0, offs_q, offs_d, NUM_Q, HALF)
    if QK_NORM:
        q1, q2 = head_rmsnorm_halves(q1, q2, q_norm_ptr, offs_d, eps, HALF, dtype)
    q1, q2 = rotate_halves(q1, q2, c, s, dtype)
    q_dst = row + offs_q[:, None] * (2 * HALF) + offs_d[None, :]
    tl.store(q_dst, q1, mask=q_mask)
    tl.store(q_dst + HALF, q2, mask=q_mask)

    offs_k = tl.arange(0, KV_PAD)
    k1, k2, kv_mask = load_heads(row, NUM_Q, offs_k, offs_d, NUM_KV, HALF)
    if QK_NORM:
        k1, k2 = head_rmsnorm_halves(k1, k2, k_norm_ptr, offs_d, eps, HALF, dtype)
    k1, k2 = rotate_halves(k1, k2, c, s, dtype)
    v1, v2, _ = load_heads(row, NUM_Q + NUM_KV, offs_k, offs_d, NUM_KV, HALF)
    store_mask = kv_mask & (slot >= 0)
    dst = ((slot // BLOCK_SIZE) * stride_c_block + (slot % BLOCK_SIZE) * stride_c_slot
           + offs_k[:, None] * stride_c_head + offs_d[None, :])
    cache_dtype = k_cache_ptr.dtype.element_ty
    tl.store(k_cache_ptr + dst, to_cache_tl(k1, cache_dtype), mask=store_mask)
    tl.store(k_cache_ptr + dst + HALF, to_cache_tl(k2, cache_dtype), mask=store_mask)
    tl.store(v_cache_ptr + dst, to_cache_tl(v1, cache_dtype), mask=store_mask)
    tl.store(v_cache_ptr + dst + HALF, to_cache_tl(v2, cache_dtype), mask=store_mask)
