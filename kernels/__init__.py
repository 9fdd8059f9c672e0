"""Attention, cache, norm, activation, embedding and sampling ops. Each op has a Triton kernel for
CUDA tensors and a pure-torch reference for everything else (CPU, tests); the public names pick
one from the first argument. Quantized weights (kernels/quant.py) have their own matmul and
embedding."""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

from kernels.activation import silu_mul_ref, silu_mul_triton
from kernels.decode_attention import decode_attention_ref, decode_attention_triton
from kernels.embedding import embed_tokens_ref, embed_tokens_triton
from kernels.norm import add_rmsnorm_ref, add_rmsnorm_triton
from kernels.prefill_attention import attend, paged_prefill_attention_ref, paged_prefill_attention_triton
from kernels.quant_matmul import quant_embedding_ref, quant_embedding_triton, quant_matmul_ref, quant_matmul_triton
from kernels.rope import rope_store_kv_ref, rope_store_kv_triton
from kernels.sampling import SamplingState, sample_ref, sample_triton


_force_reference = False


def on_triton(t) -> bool:
    """Whether ops on `t` run the Triton kernels (CUDA tensors, unless `reference_ops()` is on)."""
    return t.is_cuda and not _force_reference


@contextlib.contextmanager
def reference_ops():
    """Run the torch references on CUDA tensors too: the unfused model, to compare the fused one with."""
    global _force_reference
    _force_reference = True
    try:
        yield
    finally:
        _force_reference = False


def _by_device(reference: Callable, kernel: Callable) -> Callable:
    """The op with the reference's signature: the Triton kernel when the first tensor is on CUDA.
    Keywords only the kernel knows (`workspace=`, `num_splits=`, `max_seqlen_q=`, `max_context=`)
    are CUDA-only; keywords only the reference knows (`plan=`) are CPU-only."""
    @functools.wraps(reference)
    def op(first, *args, **kwargs):
        if on_triton(first):
            return kernel(first, *args, **kwargs)
        for name in _KERNEL_ONLY:
            kwargs.pop(name, None)
        return reference(first, *args, **kwargs)
    op.__name__ = op.__qualname__ = reference.__name__.removesuffix("_ref")
    return op


_KERNEL_ONLY = ("workspace", "num_splits", "max_seqlen_q", "max_context")


add_rmsnorm = _by_device(add_rmsnorm_ref, add_rmsnorm_triton)
silu_mul = _by_device(silu_mul_ref, silu_mul_triton)
rope_store_kv = _by_device(rope_store_kv_ref, rope_store_kv_triton)
decode_attention = _by_device(decode_attention_ref, decode_attention_triton)
paged_prefill_attention = _by_device(paged_prefill_attention_ref, paged_prefill_attention_triton)
embed_tokens = _by_device(embed_tokens_ref, embed_tokens_triton)
sample = _by_device(sample_ref, sample_triton)
quant_matmul = _by_device(quant_matmul_ref, quant_matmul_triton)
quant_embedding = _by_device(quant_embedding_ref, quant_embedding_triton)

__all__ = ["SamplingState", "on_triton", "reference_ops", "add_rmsnorm", "attend", "decode_attention", "embed_tokens", "paged_prefill_attention", "quant_embedding", "quant_matmul",
           "rope_store_kv", "sample", "silu_mul"]
