"""Decode attention on the GPU: our paged Triton kernel against torch SDPA over the same KV.

    python -m kernels.bench [--iters 200] [--num-splits N] [--json results.json]

Shapes (batch B, context L): (1, 32k), (8, 16k), (32, 2k), (64, 4k), (256, 1k); 32 query heads,
8 KV heads, head_dim 128, bf16, every sequence at the full L.

- Ours: `decode_attention_triton` over a paged cache (block size 16, block tables shuffled),
  split-KV count from `decode_num_splits` unless `--num-splits` forces one; both kernels timed.
  It takes the fused qkv projection, rotates and stores the new token and attends: here with an
  identity rotation (cos 1, sin 0) and the new token's k and v equal to what the cache holds at
  its position, so it attends over exactly the K/V that SDPA gets.
- SDPA: `scaled_dot_product_attention` over the same K/V laid out contiguously, [B, Hkv, L, D],
  with `enable_gqa=True`, and over K/V repeated to [B, Hq, L, D]; each SDPA backend that accepts the
  call is timed and the fastest (layout, backend) is reported.
- Time: CUDA events around the call, `--warmup` untimed calls, median of `--iters`. Before every
  call a 256 MiB buffer is written, so nothing is left in L2 (50 MiB on an H100; the smallest
  working set here, 128 MiB, exceeds it anyway) and the GPU stays busy while the host launches.
- Bytes: the K and V rows of live context plus q and out, read or written once. GB/s = bytes /
  time; "of copy" is that over the copy bandwidth, measured as a 1 GiB device-to-device copy
  (bytes read + written / time).
- Before timing, each shape's outputs (ours and the chosen SDPA's) are checked against the torch
  reference `paged_decode_attention_ref` run in fp32.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels.decode_attention import (
    decode_attention_triton, decode_num_splits, decode_workspace, paged_decode_attention_ref)

SHAPES = [(1, 32768), (8, 16384), (32, 2048), (64, 4096), (256, 1024)]
NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16
FLUSH_BYTES = 256 << 20
COPY_BYTES = 1 << 30
TOLERANCE = 2e-2  # bf16 inputs and output against an fp32 reference


@dataclass
class Decode:
    """One shape's inputs, paged for us and contiguous for SDPA."""
    q: torch.Tensor  # [B, Hq, D]
    k_cache: torch.Tensor  # [blocks, block_size, Hkv, D]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [B, L / block_size] int32, shuffled
    context_lens: torch.Tensor  # [B] int32, all L
    k: torch.Tensor  # [B, Hkv, L, D]
    v: torch.Tensor

    @property
    def bytes_moved(self) -> int:
        batch, length = self.k.shape[0], self.k.shape[2]
        kv = 2 * batch * NUM_KV_HEADS * length * HEAD_DIM
        return (kv + 2 * self.q.numel()) * self.q.element_size()


@dataclass
class Row:
    batch: int
    context: int
    num_splits: int
    ours_us: float
    ours_gbs: float
    ours_of_copy: float
    sdpa_us: float
    sdpa_gbs: float
    sdpa_of_copy: float
    sdpa_variant: str
    ours_max_err: float
    sdpa_max_err: float


def make_decode(batch: int, length: int, gen: torch.Generator) -> Decode:
    blocks_per_seq = length // BLOCK_SIZE
    num_blocks = batch * blocks_per_seq
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, generator=gen, device="cuda", dtype=DTYPE)
    v_cache = torch.randn(shape, generator=gen, device="cuda", dtype=DTYPE)
    tables = torch.randperm(num_blocks, generator=gen, device="cuda").view(batch, blocks_per_seq).int()
    q = torch.randn(batch, NUM_Q_HEADS, HEAD_DIM, generator=gen, device="cuda", dtype=DTYPE)
    lens = torch.full((batch,), length, dtype=torch.int32, device="cuda")

    def contiguous(cache: torch.Tensor) -> torch.Tensor:
        return cache[tables.long()].view(batch, length, NUM_KV_HEADS, HEAD_DIM).transpose(1, 2).contiguous()
    return Decode(q, k_cache, v_cache, tables, lens, contiguous(k_cache), contiguous(v_cache))


def median_us(fn: Callable[[], object], iters: int, warmup: int, flush: torch.Tensor | None) -> float:
    """Median of `iters` event-timed calls, each after an L2-evicting write to `flush` if given."""
    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        if flush is not None:
            flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return 1e3 * statistics.median(start.elapsed_time(end) for start, end in events)


def copy_gbs(iters: int) -> float:
    """Device copy bandwidth: a 1 GiB device-to-device copy, bytes read + written / time."""
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src), max(10, iters // 10), 3, None)  # 1 GiB: L2 holds none of it
    return 2 * COPY_BYTES / us / 1e3


def sdpa_calls(d: Decode) -> dict[str, Callable[[], torch.Tensor]]:
    """Every (K/V layout, SDPA backend) pair to try, returning [B, Hq, D]."""
    q = d.q.unsqueeze(2)
    group = NUM_Q_HEADS // NUM_KV_HEADS
    layouts = {
        "gqa": (d.k, d.v, True),
        "repeated": (d.k.repeat_interleave(group, 1), d.v.repeat_interleave(group, 1), False),
    }
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                SDPBackend.MATH]

    def call(k: torch.Tensor, v: torch.Tensor, gqa: bool, backend: SDPBackend) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, scale=HEAD_DIM ** -0.5, enable_gqa=gqa).squeeze(2)
        return run
    return {f"{name}/{backend.name.lower()}": call(k, v, gqa, backend)
            for name, (k, v, gqa) in layouts.items() for backend in backends}


def max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    torch.testing.assert_close(out.float(), ref, rtol=TOLERANCE, atol=TOLERANCE)
    return (out.float() - ref).abs().max().item()


def bench_shape(batch: int, length: int, args: argparse.Namespace, flush: torch.Tensor, copy: float) -> Row:
    d = make_decode(batch, length, torch.Generator("cuda").manual_seed(batch * length))
    scale = HEAD_DIM ** -0.5
    ref = paged_decode_attention_ref(d.q.float(), d.k_cache.float(), d.v_cache.float(), d.block_tables,
                                     d.context_lens, scale)
    splits = args.num_splits or decode_num_splits(batch, NUM_KV_HEADS, length, d.q.device)
    out = torch.empty_like(d.q)
    workspace = decode_workspace(batch, NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, splits, d.q.device)

    last = d.block_tables[:, (length - 1) // BLOCK_SIZE].long() * BLOCK_SIZE + (length - 1) % BLOCK_SIZE
    flat_k = d.k_cache.view(-1, NUM_KV_HEADS * HEAD_DIM)
    flat_v = d.v_cache.view(-1, NUM_KV_HEADS * HEAD_DIM)
    qkv = torch.cat([d.q.reshape(batch, -1), flat_k[last], flat_v[last]], dim=1)
    cos = torch.ones(length, HEAD_DIM, device="cuda")
    sin = torch.zeros(length, HEAD_DIM, device="cuda")
    positions = (d.context_lens - 1).long()

    def ours() -> torch.Tensor:
        return decode_attention_triton(qkv, positions, cos, sin, d.k_cache, d.v_cache, last, d.block_tables,
                                       d.context_lens, scale, NUM_Q_HEADS, NUM_KV_HEADS, out=out,
                                       workspace=workspace, num_splits=splits)
    ours_err = max_err(ours(), ref)
    ours_us = median_us(ours, args.iters, args.warmup, flush)

    sdpa = {}
    for name, call in sdpa_calls(d).items():
        try:
            err = max_err(call(), ref)
        except (RuntimeError, AssertionError) as e:  # a backend that refuses the call or gets it wrong sits out
            print(f"  {name}: skipped ({str(e).splitlines()[0][:100]})", file=sys.stderr)
            continue
        sdpa[name] = (median_us(call, args.iters, args.warmup, flush), err)
    variant = min(sdpa, key=lambda name: sdpa[name][0])
    sdpa_us, sdpa_err = sdpa[variant]
    gb = d.bytes_moved / 1e9
    return Row(batch, length, splits, ours_us, gb / ours_us * 1e6, gb / ours_us * 1e6 / copy,
               sdpa_us, gb / sdpa_us * 1e6, gb / sdpa_us * 1e6 / copy, variant, ours_err, sdpa_err)


def print_table(rows: list[Row], copy: float) -> None:
    print(f"\ndevice copy bandwidth: {copy:.0f} GB/s (1 GiB device-to-device, read + write)")
    head = (f"{'B':>4} {'L':>6} {'splits':>6} | {'ours us':>9} {'GB/s':>6} {'of copy':>7} | "
            f"{'SDPA us':>9} {'GB/s':>6} {'of copy':>7} {'SDPA variant':<24} | {'speedup':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.batch:>4} {r.context:>6} {r.num_splits:>6} | {r.ours_us:>9.1f} {r.ours_gbs:>6.0f} "
              f"{r.ours_of_copy:>7.0%} | {r.sdpa_us:>9.1f} {r.sdpa_gbs:>6.0f} {r.sdpa_of_copy:>7.0%} "
              f"{r.sdpa_variant:<24} | {r.sdpa_us / r.ours_us:>6.2f}x")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=200, help="timed calls per measurement (median)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls before timing")
    parser.add_argument("--num-splits", type=int, default=None,
                        help="force the split-KV count for every shape (default: decode_num_splits)")
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("kernels.bench needs a CUDA GPU")
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    copy = copy_gbs(args.iters)
    rows = []
    for batch, length in SHAPES:
        rows.append(bench_shape(batch, length, args, flush, copy))
        torch.cuda.empty_cache()
    print_table(rows, copy)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "dtype": str(DTYPE), "num_q_heads": NUM_Q_HEADS,
                       "num_kv_heads": NUM_KV_HEADS, "head_dim": HEAD_DIM, "block_size": BLOCK_SIZE,
                       "copy_gbs": copy, "rows": [asdict(r) for r in rows]}, f, indent=2)


if __name__ == "__main__":
    main()
