"""The GPU memory budget: weights, activations, graphs and the KV pool inside one limit.

With `gpu_memory_limit` the engine plans before it allocates: the weights' size is known from the
file (packed sizes for GGUF, dense or quantized sizes for safetensors), the working memory is
bounded by the largest step (`max_num_batched_tokens`) and the decode graphs' pool
(`working_bytes`), and the rest, less CONTEXT_BYTES for the CUDA context, is KV pool. Under a
tight limit the prefill step, then the number of sequences run at once, give way to context
(`fit_working_memory`): a smaller step reads a long prompt in more chunks at nearly the same
speed, while the memory it frees holds thousands more tokens. A model that cannot fit with room
for even a little context is refused with what it needs, and nothing is allocated. Once loaded,
torch's allocator is capped at the limit less CONTEXT_BYTES, so the whole process keeps it.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from engine.cuda_graphs import prefill_graph_tokens
from engine.errors import ModelLoadError
from engine.model.config import ModelConfig

CONTEXT_BYTES = 832 << 20  # CUDA context, cuBLAS workspaces, Triton's modules, outside torch's count (807 MiB seen: H200, 8B Q4_K_M)
MIN_CONTEXT_TOKENS = 256  # a model that cannot hold this much context is refused
MIN_STEP_TOKENS = 1024  # a tight limit halves the prefill step down to this many tokens,
MIN_SEQS = 32  # then the sequences run at once (their logits, the decode graphs) down to this many,
STEP_SHARE = 4  # while the working memory takes more than 1/STEP_SHARE of what the KV pool would get
ALLOCATOR_SLACK = 512 << 20  # what the activation bound misses, rounding and fragmentation (see working_bytes)
UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
         "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(value: str | int | float) -> int:
    """Bytes from an int or a string like "8GiB", "7.5 GB", "512MiB"."""
    if isinstance(value, bool):
        raise ValueError(f"a memory size must be a number of bytes or a string like '8GiB', got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"a memory size must be positive, got {value!r}")
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if match is None or match.group(2).lower() not in UNITS:
        raise ValueError(f"a memory size must look like '8GiB' or '7.5 GB', got {value!r}")
    size = int(float(match.group(1)) * UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"a memory size must be positive, got {value!r}")
    return size


def activation_bytes(cfg: ModelConfig, max_tokens: int, max_seqs: int, itemsize: int, largest_weight: int) -> int:
    """An upper bound on one step's temporaries: the widest per-token buffers of a full prefill,
    the logits of every sequence, and the dense scratch through which packed weights are
    multiplied when a step has more than one row (`largest_weight`, at most DENSE_CHUNK elements)."""
    per_token = (4 * cfg.hidden_size + (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
                 + 3 * cfg.intermediate_size) * itemsize
    logits = max_seqs * cfg.vocab_size * (itemsize + 4)
    return int(1.25 * (max_tokens * per_token + logits)) + largest_weight


def working_bytes(cfg: ModelConfig, step_tokens: int, max_seqs: int, itemsize: int, largest_weight: int,
                  graphs: bool) -> int:
    """Eager steps' temporaries, the graphs' private pool (the largest graphed step: every
    sequence decoding, or the prefill graphs' largest; eager steps cannot reuse it), and
    ALLOCATOR_SLACK. Measured on an H200 (8B Q4_K_M under 8 GiB, 32 chats of 1,000 tokens, then
    one of 7,000, then a full pool): torch reserved 820 MiB beyond the weights and the KV pool at
    its peak where the bound without slack said 387, and with a slack of 256 MiB the first prefill
    of 32 chats ran out of memory; 512 keeps the limit there."""
    graphed = max(max_seqs, prefill_graph_tokens(step_tokens))
    pool = activation_bytes(cfg, graphed, max_seqs, itemsize, largest_weight) if graphs else 0
    return activation_bytes(cfg, step_tokens, max_seqs, itemsize, largest_weight) + pool + ALLOCATOR_SLACK


@dataclass
class MemoryPlan:
    limit: int
    weights: int
    activations: int
    kv_bytes_per_block: int
    block_size: int

    @property
    def kv_blocks(self) -> int:
        return max(0, (self.limit - CONTEXT_BYTES - self.weights - self.activations) // self.kv_bytes_per_block)

    @property
    def context_tokens(self) -> int:
        return self.kv_blocks * self.block_size

    def kv_bytes(self) -> int:
        return self.kv_blocks * self.kv_bytes_per_block

    def check(self, model: str) -> None:
        """Refuse, before anything is allocated, a model that leaves no room for context."""
        if self.context_tokens >= MIN_CONTEXT_TOKENS:
            return
        need = CONTEXT_BYTES + self.weights + self.activations + MIN_CONTEXT_TOKENS // self.block_size * \
            self.kv_bytes_per_block
        raise ModelLoadError(
            f"{model} needs {gib(need)} of GPU memory (weights {gib(self.weights)}, working memory "
            f"{gib(self.activations + CONTEXT_BYTES)}, {MIN_CONTEXT_TOKENS} tokens of context "
            f"{gib(MIN_CONTEXT_TOKENS // self.block_size * self.kv_bytes_per_block)}) but the limit is "
            f"{gib(self.limit)}: raise the limit, or use a quantized model or an fp8 KV cache")


def fit_working_memory(plan: MemoryPlan, step_tokens: int, max_seqs: int,
                       activations: Callable[[int, int], int]) -> tuple[MemoryPlan, int, int]:
    """The plan, prefill step (tokens) and sequences at once to use: while the working memory
    takes more than 1/STEP_SHARE of what the KV pool would get, halve the step (not below
    MIN_STEP_TOKENS), then the sequences (not below MIN_SEQS). `activations(step, seqs)`."""
    while STEP_SHARE * plan.activations > plan.kv_bytes() and (step_tokens > MIN_STEP_TOKENS or max_seqs > MIN_SEQS):
        if step_tokens > MIN_STEP_TOKENS:
            step_tokens = max(MIN_STEP_TOKENS, step_tokens // 2)
        else:
            max_seqs = max(MIN_SEQS, max_seqs // 2)
        plan = replace(plan, activations=activations(step_tokens, max_seqs))
    return plan, step_tokens, max_seqs


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
