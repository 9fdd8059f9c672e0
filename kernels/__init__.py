"""Attention and KV-cache ops. Each op has a Triton kernel for CUDA tensors and a pure-torch
reference for everything else (CPU, tests); the public names pick one from the first argument."""
from __future__ import annotations

import functools
from collections.abc import Callable

from kernels.decode_attention import paged_decode_attention_ref, paged_decode_attention_triton
from kernels.prefill_attention import attend, paged_prefill_attention_ref, paged_prefill_attention_triton
from kernels.store_kv import store_kv_ref, store_kv_triton


def _by_device(reference: Callable, kernel: Callable) -> Callable:
    """The op with the reference's signature: the Triton kernel when the first tensor is on CUDA.
    Keywords only the kernel knows (`workspace=`, `num_splits=`, `max_seqlen_q=`) are CUDA-only."""
    @functools.wraps(reference)
    def op(first, *args, **kwargs):
        return (kernel if first.is_cuda else reference)(first, *args, **kwargs)
    op.__name__ = op.__qualname__ = reference.__name__.removesuffix("_ref")
    return op


store_kv = _by_device(store_kv_ref, store_kv_triton)
paged_decode_attention = _by_device(paged_decode_attention_ref, paged_decode_attention_triton)
paged_prefill_attention = _by_device(paged_prefill_attention_ref, paged_prefill_attention_triton)

__all__ = ["attend", "paged_decode_attention", "paged_prefill_attention", "store_kv"]
