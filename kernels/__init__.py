"""Attention and KV-cache ops. Each op has a pure-torch reference (CPU, tests); the public names
dispatch to it. Triton versions for CUDA sit beside their references."""
from kernels.decode_attention import paged_decode_attention_ref as paged_decode_attention
from kernels.prefill_attention import attend, paged_prefill_attention_ref as paged_prefill_attention
from kernels.store_kv import store_kv_ref as store_kv

__all__ = ["attend", "paged_decode_attention", "paged_prefill_attention", "store_kv"]
