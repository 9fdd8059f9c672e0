"""Engine configuration: one dataclass, validated once, read everywhere."""
from __future__ import annotations

from dataclasses import dataclass
from os import PathLike

import torch


@dataclass
class EngineConfig:
    """How the engine sizes its KV pool and batches.

    `num_kv_blocks` wins over the memory settings when given. On CUDA the pool takes
    `kv_memory_fraction` of the memory left after the weights; on the CPU it takes
    `cpu_kv_memory_bytes` (the CPU has no separate device memory to measure).
    """

    block_size: int = 16
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024
    max_model_len: int | None = None
    num_kv_blocks: int | None = None
    kv_memory_fraction: float = 0.85
    cpu_kv_memory_bytes: int = 2 << 30
    dtype: torch.dtype | None = None
    device: str = "auto"
    enable_prefix_caching: bool = True
    cuda_graphs: bool = True
    # Weight-only quantization of a Hugging Face checkpoint at load: "int8" or "int4" (GGUF files
    # are quantized already and keep their own types).
    quantization: str | None = None
    # "auto": the model dtype; "fp8": float8 e4m3, twice the tokens per byte.
    kv_cache_dtype: str = "auto"
    # Everything the engine allocates on the GPU stays under this ("8GiB", or bytes); None: the
    # free memory, with kv_memory_fraction of what the weights leave for the KV pool.
    gpu_memory_limit: str | int | None = None
    # Compute with a GGUF's packed weights dequantized once (fast on the CPU) or kept packed (a
    # quarter of the memory). None: kept packed on a GPU; on the CPU dequantized when the dense
    # model fits easily in RAM. True on a GPU gives the dense reference that quality checks use.
    dequantize_weights: bool | None = None
    # On the CPU in bf16, projections whose file weights are 4-bit (Q4_0, Q4_1, Q4_K) keep them in
    # torch's int4 form too, for decode steps of a few rows (kernels/cpu_int4.py); False: not.
    cpu_int4_decode: bool = True
    # Launch step N+1 before reading step N's tokens (see llm_engine). None: on where it wins,
    # a GPU, whose work then overlaps the host's; off on the CPU, where both share the cores.
    async_scheduling: bool | None = None
    # KV tiers (engine/kv_tiers): cached blocks evicted from the device are kept in this much host
    # RAM (pinned on CUDA, allocated at the first eviction; "1GiB", bytes, or 0 for none). The
    # disk tier reads through it.
    host_kv_cache: str | int = "1GiB"
    # Blocks of long prompts are also written to disk, in `disk_kv_dir` (default: <cache dir>/kv),
    # capped at this size (LRU); None or 0: no disk tier. Off by default: the app turns it on.
    disk_kv_cache: str | int | None = None
    disk_kv_dir: str | PathLike | None = None
    # Prompts at least this long have their blocks written to disk (documents, long histories).
    disk_kv_min_prefix_tokens: int = 1024
    # Host memory for blocks on their way to disk; blocks beyond it are dropped, not waited for.
    disk_kv_write_buffer: str | int = "256MiB"

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < self.block_size:
            raise ValueError("max_num_batched_tokens must be at least one block")
        if not 0.0 < self.kv_memory_fraction <= 1.0:
            raise ValueError(f"kv_memory_fraction must be in (0, 1], got {self.kv_memory_fraction}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.dtype is None:
            if self.device == "cpu":
                from engine.cpu_dtype import choose_cpu_dtype
                self.dtype = choose_cpu_dtype()
            else:
                self.dtype = torch.bfloat16
        if self.quantization not in (None, "int8", "int4"):
            raise ValueError(f"quantization must be None, 'int8' or 'int4', got {self.quantization!r}")
        if self.kv_cache_dtype not in ("auto", "fp8"):
            raise ValueError(f"kv_cache_dtype must be 'auto' or 'fp8', got {self.kv_cache_dtype!r}")
        if self.gpu_memory_limit is not None:
            from engine.memory import parse_size
            self.gpu_memory_limit = parse_size(self.gpu_memory_limit)
        self.host_kv_cache = _size_or_zero(self.host_kv_cache)
        self.disk_kv_cache = _size_or_zero(self.disk_kv_cache)
        self.disk_kv_write_buffer = _size_or_zero(self.disk_kv_write_buffer)
        if self.disk_kv_cache and not self.host_kv_cache:
            raise ValueError("disk_kv_cache needs host_kv_cache: blocks read from disk go through host RAM")
        if self.disk_kv_min_prefix_tokens < 0:
            raise ValueError(f"disk_kv_min_prefix_tokens must be >= 0, got {self.disk_kv_min_prefix_tokens}")
        if self.async_scheduling is None:
            self.async_scheduling = self.device != "cpu"

    @property
    def kv_dtype(self) -> torch.dtype:
        return torch.float8_e4m3fn if self.kv_cache_dtype == "fp8" else self.dtype



def _size_or_zero(value: str | int | None) -> int:
    """A memory size in bytes, where None and 0 mean none."""
    if value is None or value == 0 or value == "0":
        return 0
    from engine.memory import parse_size
    return parse_size(value)
