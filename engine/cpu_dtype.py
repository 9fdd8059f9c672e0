"""Which dtype the CPU computes in: bf16 where this CPU multiplies it fast, fp32 elsewhere.

On CPUs with bf16 arithmetic (AVX512-BF16, AMX) a bf16 matmul moves half the bytes and runs about
twice as fast as fp32 at the batch sizes a chat app sees; without it, torch converts every
operand and bf16 is slower than fp32 once a few sequences are batched. So the choice is measured,
once per process, on a projection of a small model's shape, batched as decode steps batch them.
FOLIO_CPU_DTYPE=float32|bfloat16 decides instead (the tests pin float32: they compare with
transformers in fp32, on machines with and without bf16 arithmetic).
"""
from __future__ import annotations

import functools
import os
import time

import torch

SHAPE = (1536, 576)  # a SmolLM2 MLP projection
ROWS = 8  # eight chats decoding together
MIN_SPEEDUP = 1.3


@functools.cache
def choose_cpu_dtype() -> torch.dtype:
    forced = os.environ.get("FOLIO_CPU_DTYPE", "auto")  # "float32" or "bfloat16" skip the measurement
    if forced in ("float32", "bfloat16"):
        return getattr(torch, forced)
    if not _has_bf16_arithmetic():
        return torch.float32
    return torch.bfloat16 if _speedup() >= MIN_SPEEDUP else torch.float32


def _has_bf16_arithmetic() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: let the measurement decide
        return True
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def _speedup() -> float:
    def timed(dtype: torch.dtype) -> float:
        w = torch.randn(*SHAPE, dtype=dtype)
        x = torch.randn(ROWS, SHAPE[1], dtype=dtype)
        for _ in range(3):
            torch.nn.functional.linear(x, w)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(10):
                torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - t)
        return best
    return timed(torch.float32) / timed(torch.bfloat16)
