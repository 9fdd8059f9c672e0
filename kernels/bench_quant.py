"""Packed-weight matmuls on the GPU: the decode kernel's shapes and dequantize + cuBLAS against
cuBLAS on the same weight dense in bf16, for the matrices of Llama-3.2-1B and -3.1-8B in Q4_K_M.

    python -m kernels.bench_quant [--iters 15] [--rows 1,2,4,8,16,32] [--json results.json] [--write-configs]
                                  [--matrices "Q6_K 128256 2048,Q6_K 2048 8192"]

For each (type, N, K) and number of rows M: what `quant_matmul` does where nothing was measured
("untuned": the one-row kernel for one row, else dequantize + cuBLAS), the best of a sweep of
the decode kernels' shapes (rows of W and of x per program, K splits, tile bytes, warps),
dequantize + cuBLAS, and cuBLAS on the dense bf16 weight. Time: GPU time per call from CUDA
graphs of --iters calls (`median_us`), L2 flushed before each call. GB/s counts the weight's
bytes as held (packed or dense) once per call. --write-configs records, per matrix and number of
rows, the fastest decode shape, or dequantize + cuBLAS where that was faster, in the table that
`quant_matmul` reads for this GPU (kernels/gemv_configs/<GPU>.json). The whole sweep takes more
than 300 s on an H200, most of it compiling.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import numpy as np
import torch

from kernels.quant_matmul import (
    GemvConfig, config_file, dense_path, gemv_path, one_row_config, tuned_gemv_configs)
from kernels.quant import dequantize, from_gguf

# The matrices of Llama-3.2-1B and Llama-3.1-8B in Q4_K_M (q and k fused, v, o, gate and up fused,
# down in Q4_K in some layers and Q6_K in others, the tied lm_head / output), with the rows of x
# measured: every batch size of the 1B; the 8B at one and eight.
SHAPES_1B = [("Q4_K", 2560, 2048), ("Q6_K", 512, 2048), ("Q4_K", 2048, 2048), ("Q4_K", 16384, 2048),
             ("Q4_K", 2048, 8192), ("Q6_K", 2048, 8192), ("Q6_K", 128256, 2048)]
SHAPES_8B = [("Q4_K", 5120, 4096), ("Q6_K", 1024, 4096), ("Q4_K", 4096, 4096), ("Q4_K", 28672, 4096),
             ("Q4_K", 4096, 14336), ("Q6_K", 4096, 14336), ("Q6_K", 128256, 4096)]
ROWS_8B = (1, 8)
GGUF_BLOCK = {"Q4_0": (32, 18), "Q8_0": (32, 34), "Q4_K": (256, 144), "Q6_K": (256, 210)}


def sweep(m: int) -> list[GemvConfig]:
    """The decode kernel shapes tried at m rows of x (those whose W tile fits in registers)."""
    if m == 1:
        shapes = [GemvConfig(bn, 1, split, tile) for bn in (4, 8, 16) for split in (1, 2, 4, 8) for tile in (256, 512)]
    else:
        block_m = 16 if m <= 16 else 32
        shapes = [GemvConfig(bn, block_m, split, tile, warps) for bn in (16, 32, 64, 128) for split in (1, 2, 4, 8)
                  for tile, warps in ((128, 4), (128, 8), (256, 8))]
    return [c for c in shapes if c.fits()]


def random_weight(qtype: str, n: int, k: int, rng: np.random.Generator):
    per, size = GGUF_BLOCK[qtype]
    raw = rng.integers(0, 256, size=(n, k // per, size), dtype=np.uint8)
    scale_at = 208 if qtype == "Q6_K" else 0
    count = 2 if qtype == "Q4_K" else 1
    raw[:, :, scale_at:scale_at + 2 * count] = (rng.standard_normal((n, k // per, count)) * 0.001).astype(
        np.float16).view(np.uint8)
    return from_gguf(raw.reshape(n, -1), qtype, k).to("cuda")


def median_us(fn: Callable[[], object], iters: int, flush: torch.Tensor) -> float:
    """GPU time of one call, with L2 flushed before it, as in a decode step where no weight is
    still cached: `iters` (flush, call) pairs captured in one CUDA graph, less a graph of the
    flushes alone, so host launch costs (absent from the engine's graph replays) do not count.
    The median of five replays each."""
    def captured(with_call: bool) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(iters):
                flush.fill_(1)
                if with_call:
                    fn()
        return graph

    fn()  # outside the capture: compiles, and sizes the split workspace
    torch.cuda.synchronize()
    both, flushes = captured(True), captured(False)

    def replay_us(graph: torch.cuda.CUDAGraph) -> float:
        times = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1000)
        return statistics.median(times)
    return max(0.0, (replay_us(both) - replay_us(flushes)) / iters)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--rows", default="1,2,4,8,16,32", help="comma-separated numbers of rows of x (powers of two)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--write-configs", action="store_true", help="record the fastest path per matrix and rows")
    ap.add_argument("--matrices", default=None, help='only these, comma-separated "type N K" (the sweep is slow)')
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    flush = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")  # > the 50 MB L2 of an H100/H200
    results = []
    tuned = dict(tuned_gemv_configs(torch.device("cuda")))
    print(f"{'type':5} {'N':>6} {'K':>5} {'M':>3} {'untuned':>8} {'GB/s':>5} {'best':>8} {'GB/s':>5} "
          f"{'best shape (n, m, split, tile, warps)':38} {'deq+mm':>8} {'dense':>8}")
    rows = [int(r) for r in args.rows.split(",")]
    only = None if args.matrices is None else {m.strip() for m in args.matrices.split(",")}
    for qtype, n, k in SHAPES_1B + SHAPES_8B:
        if only is not None and f"{qtype} {n} {k}" not in only:
            continue
        w = random_weight(qtype, n, k, rng)
        dense = dequantize(w).to(torch.bfloat16)
        for m in rows if (qtype, n, k) in SHAPES_1B else [r for r in rows if r in ROWS_8B]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            ref = (x @ dense.T).float()
            row = dict(qtype=qtype, n=n, k=k, m=m)
            row["dense_us"] = median_us(lambda: torch.matmul(x, dense.T, out=out), args.iters, flush)
            row["dequant_mm_us"] = median_us(lambda: dense_path(x, w, out), args.iters, flush)
            timed = {}
            for cfg in sweep(m):
                gemv_path(x, w, out, cfg)
                err = float((out.float() - ref).abs().max() / ref.abs().max())
                timed[cfg] = median_us(lambda c=cfg: gemv_path(x, w, out, c), args.iters, flush)
                if err > 0.02:
                    print(f"  ERROR {err:.3g} at {cfg}")
                    timed[cfg] = float("inf")
            # untuned: what quant_matmul does where nothing was measured
            default = timed[one_row_config(n, x.device)] if m == 1 else row["dequant_mm_us"]
            best = min(timed, key=timed.get)
            row.update(untuned_us=default, best=best.__dict__, best_us=timed[best],
                       sweep=[dict(c.__dict__, us=us) for c, us in timed.items()])
            shape = f"{best.block_n}, {best.block_m}, {best.split}, {best.tile_bytes}, {best.num_warps}"
            print(f"{qtype:5} {n:6} {k:5} {m:3} {default:8.1f} {w.nbytes / default / 1e3:5.0f} {timed[best]:8.1f} "
                  f"{w.nbytes / timed[best] / 1e3:5.0f} {shape:38} {row['dequant_mm_us']:8.1f} {row['dense_us']:8.1f}",
                  flush=True)
            results.append(row)
            if args.write_configs:
                gemv_wins = timed[best] < row["dequant_mm_us"]
                tuned[f"{qtype} {n} {k} {m}"] = best.__dict__ if gemv_wins else None
        if args.write_configs:  # after each matrix, so a run cut short keeps what it measured
            path = config_file(torch.device("cuda"))
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(dict(sorted(tuned.items())), indent=1) + "\n")
    if args.write_configs:
        print(f"wrote {len(tuned)} entries to {path}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
