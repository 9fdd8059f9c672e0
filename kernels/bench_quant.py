"""Packed-weight matmuls on the GPU: each path of `quant_matmul` against cuBLAS on the same weight
dense in bf16, for the projections of the Llama-3.2-1B shape.

    python -m kernels.bench_quant [--iters 100] [--json results.json]

For each (type, N, K) and number of rows M: the one-row kernel (once per row, up to M = 8; W row
block widths from --rows, 0 for the default), dequantize + cuBLAS, and cuBLAS on the dense bf16
weight. Time: CUDA events, median of --iters calls, L2 flushed before each call. GB/s counts
the weight's bytes as held (packed or dense) once per call.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import numpy as np
import torch

from kernels.quant_matmul import dense_path, gemv_path, gemv_rows
from kernels.quant import dequantize, from_gguf

SHAPES = [("Q4_K", 3072, 2048), ("Q4_K", 2048, 2048), ("Q4_K", 16384, 2048), ("Q4_K", 2048, 8192),
          ("Q6_K", 2048, 8192), ("Q6_K", 128256, 2048), ("Q8_0", 2048, 2048), ("Q4_0", 16384, 2048)]
ROWS = [1, 8, 32, 64, 512]
GGUF_BLOCK = {"Q4_0": (32, 18), "Q8_0": (32, 34), "Q4_K": (256, 144), "Q6_K": (256, 210)}


def random_weight(qtype: str, n: int, k: int, rng: np.random.Generator):
    per, size = GGUF_BLOCK[qtype]
    raw = rng.integers(0, 256, size=(n, k // per, size), dtype=np.uint8)
    scale_at = 208 if qtype == "Q6_K" else 0
    count = 2 if qtype == "Q4_K" else 1
    raw[:, :, scale_at:scale_at + 2 * count] = (rng.standard_normal((n, k // per, count)) * 0.001).astype(
        np.float16).view(np.uint8)
    return from_gguf(raw.reshape(n, -1), qtype, k).to("cuda")


def median_us(fn: Callable[[], object], iters: int, flush: torch.Tensor) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(iters):
        flush.fill_(0)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--rows", default="0", help="comma-separated widths of W row blocks to try (0: the default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    results = []
    print(f"{'type':5} {'N':>6} {'K':>5} {'M':>4} {'path':12} {'us':>8} {'GB/s':>6} {'dense us':>8} {'vs dense':>8}")
    for qtype, n, k in SHAPES:
        w = random_weight(qtype, n, k, rng)
        dense = dequantize(w).to(torch.bfloat16)
        for m in ROWS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            ref = x @ dense.T
            t_dense = median_us(lambda: torch.matmul(x, dense.T, out=out), args.iters, flush)
            paths: dict[str, Callable[[], object]] = {}
            if m <= 8:
                for rows in [int(r) for r in args.rows.split(",")]:
                    block_n = rows or gemv_rows(n, x.device)
                    paths[f"gemv/{block_n}"] = lambda b=block_n: gemv_path(x, w, out, b)
            paths["dequant+mm"] = lambda: dense_path(x, w, out)
            for name, fn in paths.items():
                fn()
                err = float((out.float() - ref.float()).abs().max() / ref.float().abs().max())
                us = median_us(fn, args.iters, flush)
                gbs = w.nbytes / us / 1e3
                print(f"{qtype:5} {n:6} {k:5} {m:4} {name:12} {us:8.1f} {gbs:6.0f} {t_dense:8.1f} "
                      f"{t_dense / us:7.2f}x{'  ERR %.3g' % err if err > 0.02 else ''}")
                results.append(dict(qtype=qtype, n=n, k=k, m=m, path=name, us=us, gbs=gbs, dense_us=t_dense, err=err))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
