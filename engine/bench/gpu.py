"""GPU-only figures: copy bandwidth, the decode step against its roofline, and the decode step's
kernels from the profiler.

Roofline: a decode step must read every weight once and every live KV row once; nothing can beat
(weight bytes + live KV bytes) / copy bandwidth, with the bandwidth measured here by a large
device-to-device copy (bytes read + written per second).
"""
from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass

import torch

from engine.bench.patterns import forced, random_prompts
from engine.llm import LLM

# Kernel names of matrix products (cuBLAS, CUTLASS, cuBLASLt's nvjet, our quantized GEMMs).
GEMM_KERNELS = re.compile(r"gemm|gemv|cutlass|nvjet|xmma|sm90_|_qmatmul|splitk", re.IGNORECASE)


def copy_bandwidth(device: torch.device, gib: float = 1.0, iters: int = 20) -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * src.numel() / statistics.median(times)


def steady_decode(llm: LLM, batch: int, context: int) -> list[str]:
    """`batch` sequences with `context`-token prompts, stepped until every one decodes."""
    engine = llm.engine
    prompts = random_prompts(batch, context, engine.model_config.vocab_size, 5)
    ids = [engine.add_request(p, forced(4 * context)) for p in prompts]
    while any(engine.requests[r].samples[0].seq.num_generated < 2 for r in ids):
        engine.step()
    for _ in range(3):
        engine.step()
    torch.cuda.synchronize()
    return ids


def weight_bytes(llm: LLM) -> int:
    return sum(t.numel() * t.element_size() for t in llm.engine.runner.model.state_dict().values())


@dataclass
class DecodeRoofline:
    batch: int
    context: int
    step_ms: float
    weight_bytes: int
    kv_bytes: int
    bandwidth_gbs: float

    @property
    def roofline_ms(self) -> float:
        return (self.weight_bytes + self.kv_bytes) / (self.bandwidth_gbs * 1e9) * 1000

    @property
    def ratio(self) -> float:
        return self.step_ms / self.roofline_ms


def decode_roofline(llm: LLM, bandwidth: float, batch: int = 64, context: int = 512, steps: int = 32) -> DecodeRoofline:
    """Wall time per step (host work included) once `batch` sequences all decode, steady state."""
    engine = llm.engine
    ids = steady_decode(llm, batch, context)
    live = sum(s.seq.num_total_tokens for r in ids for s in engine.requests[r].samples)
    t = time.perf_counter()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - t) / steps * 1000
    live += batch * steps // 2  # the context grows during the timed steps: count the middle
    for r in ids:
        engine.abort_request(r)
    while engine.has_unfinished_requests():
        engine.step()
    kv_bytes = live * engine.runner.bytes_per_block() // engine.config.block_size
    return DecodeRoofline(batch, context, step_ms, weight_bytes(llm), kv_bytes, bandwidth / 1e9)


@dataclass
class StepProfile:
    batch: int
    context: int
    num_layers: int
    wall_ms: float  # host-timed period of a steady decode step
    kernels: float  # per step
    gpu_ms: float  # summed kernel time per step
    gemm_ms: float  # of which matrix products
    top: list[tuple[str, float, float]]  # (kernel, count per step, ms per step), the heaviest first

    @property
    def kernels_per_layer(self) -> float:
        return self.kernels / self.num_layers

    @property
    def gpu_over_gemm(self) -> float:
        return self.gpu_ms / self.gemm_ms if self.gemm_ms else float("inf")


def profile_decode_step(llm: LLM, batch: int = 1, context: int = 512, steps: int = 20) -> StepProfile:
    """torch.profiler over `steps` steady decode steps (CUDA graph replays included)."""
    from torch.profiler import ProfilerActivity, profile
    engine = llm.engine
    ids = steady_decode(llm, batch, context)
    t = time.perf_counter()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t) / steps * 1000
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    for r in ids:
        engine.abort_request(r)
    while engine.has_unfinished_requests():
        engine.step()
    per_kernel: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type.name == "CUDA" and "memcpy" not in e.name.lower() and "memset" not in e.name.lower():
            per_kernel.setdefault(e.name, []).append(e.device_time_total if hasattr(e, "device_time_total")
                                                     else e.cuda_time_total)
    count = sum(len(v) for v in per_kernel.values()) / steps
    gpu_us = sum(sum(v) for v in per_kernel.values()) / steps
    gemm_us = sum(sum(v) for k, v in per_kernel.items() if GEMM_KERNELS.search(k)) / steps
    top = sorted(((k[:80], len(v) / steps, sum(v) / steps / 1000) for k, v in per_kernel.items()),
                 key=lambda x: -x[2])[:12]
    return StepProfile(batch, context, engine.model_config.num_layers, wall_ms, count, gpu_us / 1000,
                       gemm_us / 1000, top)
