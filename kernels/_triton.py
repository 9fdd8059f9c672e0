"""Triton, where it is installed, and what the kernel launchers share.

The Makefile's CPU-only torch comes without Triton. There the kernel modules must still import,
because every op runs its torch reference on CPU tensors; `jit` then leaves the kernel functions
undecorated, and they are never launched.

Triton decides once, when it is first imported, whether it compiles or interprets
(TRITON_INTERPRET=1): its own `tl.sum`, `tl.max`, ... are decorated at that moment. So one process
cannot run both; tests/test_kernels_triton.py runs the interpreted CPU cases in a child process.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None


def jit(fn=None, *, do_not_specialize: tuple[str, ...] = ()):
    """`triton.jit` when Triton is installed; the plain function otherwise.

    Triton compiles a variant per integer argument that is 1 or a multiple of 16; arguments that
    change from step to step (a block table's width, a split size) are named in
    `do_not_specialize`, so a new batch never stalls a step on a compile."""
    if fn is None:
        return lambda f: jit(f, do_not_specialize=do_not_specialize)
    return fn if triton is None else triton.jit(fn, do_not_specialize=list(do_not_specialize))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    """Triton tiles have power-of-two sides; masks cover the excess."""
    return 1 << max(n - 1, 0).bit_length()


@functools.cache
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere): what split-K and split-KV
    heuristics fill."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


@dataclass
class SplitWorkspace:
    """Scratch of a kernel that splits its reduction over programs: fp32 partial results, and one
    int32 counter per output tile that the last program to finish resets (zero between calls)."""

    partials: torch.Tensor
    counters: torch.Tensor


_split_workspaces: dict[tuple[str, torch.device], SplitWorkspace] = {}
_retired_workspaces: list[SplitWorkspace] = []


def split_workspace(user: str, device: torch.device, partials: int, counters: int) -> SplitWorkspace | None:
    """`user`'s workspace on `device`, grown (at least doubled) to fit; None inside a CUDA-graph
    capture that would need it to grow (the caller then runs unsplit). A replaced workspace is
    kept, never freed: graphs captured before still read and write it."""
    key = (user, device)
    ws = _split_workspaces.get(key)
    if ws is not None and ws.partials.numel() >= partials and ws.counters.numel() >= counters:
        return ws
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    old_p, old_c = (ws.partials.numel(), ws.counters.numel()) if ws else (0, 0)
    if ws is not None:
        _retired_workspaces.append(ws)
    ws = SplitWorkspace(torch.empty(max(partials, 2 * old_p), dtype=torch.float32, device=device),
                        torch.zeros(max(counters, 2 * old_c), dtype=torch.int32, device=device))
    _split_workspaces[key] = ws
    return ws


def check_attention_layout(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           out: torch.Tensor) -> None:
    """What the attention kernels assume: one set of strides addresses both caches, head_dim has
    unit stride, and the query heads split evenly over the KV heads."""
    assert k_cache.shape == v_cache.shape and k_cache.stride() == v_cache.stride()
    assert out.shape == q.shape and out.dtype == q.dtype
    assert q.stride(-1) == k_cache.stride(-1) == out.stride(-1) == 1
    assert q.shape[1] % k_cache.shape[2] == 0


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products in `tl.dot`; Triton's default would round them to tf32."""
    return "ieee" if dtype == torch.float32 else "tf32"


@jit
def attend_kv_tile(q, k_cache_ptr, v_cache_ptr, table, pos, live, visible, offs_d, kv_head, m_i, l_i, acc, qk_scale,
                   stride_bt_block, stride_c_block, stride_c_slot, stride_c_head,
                   HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr):
    """One online-softmax step of the attention kernels: load the K/V rows of positions `pos`
    (through the block table; `live` masks positions past the context), score them against the
    query tile, keep the `visible` pairs, and fold them into the running max, sum and output."""
    page = tl.load(table + (pos // BLOCK_SIZE) * stride_bt_block, mask=live, other=0).to(tl.int64)
    rows = page * stride_c_block + (pos % BLOCK_SIZE) * stride_c_slot + kv_head * stride_c_head
    kv_mask = live[:, None] & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(k_cache_ptr + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0).to(q.dtype)
    v = tl.load(v_cache_ptr + rows[:, None] + offs_d[None, :], mask=kv_mask, other=0.0).to(q.dtype)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    return online_softmax_step(tl.where(visible, s, float("-inf")), v, m_i, l_i, acc, PRECISION)


@jit
def online_softmax_step(s, v, m_i, l_i, acc, PRECISION: tl.constexpr):
    """Fold scores `s` (log2 units, -inf where hidden) of one K/V tile and its values `v` into the
    running max `m_i`, sum `l_i` and output `acc`: the step every attention kernel shares."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_ref = _finite_max(m_new)
    alpha = tl.exp2(m_i - m_ref)
    p = tl.exp2(s - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@jit
def _finite_max(m):
    """The running max to subtract: 0 for a row that has seen no key yet (max -inf), so its
    weights come out 0 rather than exp2(-inf - -inf), NaN."""
    return tl.where(m == float("-inf"), 0.0, m)


@jit
def merge_split(m_all, l_all, acc_all, m_s, l_s, a_s):
    """Fold one split's partial (running max `m_s`, sum `l_s`, unnormalized output `a_s`) into the
    combined ones: the last program of a split-KV tile does this for every split in order. Rows
    that no split so far has a key for stay at zero, not NaN."""
    m_new = tl.maximum(m_all, m_s)
    m_ref = _finite_max(m_new)
    alpha = tl.exp2(m_all - m_ref)
    beta = tl.exp2(m_s - m_ref)
    return m_new, l_all * alpha + l_s * beta, acc_all * alpha[:, None] + a_s * beta[:, None]
