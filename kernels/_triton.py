"""Triton, where it is installed, and what the kernel launchers share.

The Makefile's CPU-only torch comes without Triton. There the kernel modules must still import,
because every op runs its torch reference on CPU tensors; `jit` then leaves the kernel functions
undecorated, and they are never launched.

Triton decides once, when it is first imported, whether it compiles or interprets
(TRITON_INTERPRET=1): its own `tl.sum`, `tl.max`, ... are decorated at that moment. So one process
cannot run both; tests/test_kernels_triton.py runs the interpreted CPU cases in a child process.
"""
from __future__ import annotations

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
