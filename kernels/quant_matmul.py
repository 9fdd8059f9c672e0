"""quant_matmul: y = x @ W.T with W quantized (kernels/quant.py), dequantized in registers.

The kernels walk K in tiles of `tile_bytes` quant bytes per row of W, seen as [groups, bytes]
where a group shares one scale and one minimum, so each weight is a * q - b with q the integer
value and a, b loaded once per group (`_group_tile`). Three paths, by the rows of x:
- One row (decode of one sequence): `_qgemv_kernel`, products accumulated elementwise in fp32
  and summed once at the end.
- A few rows (batched decode): `_qmm_skinny_kernel` dequantizes a tile of W once into registers
  and multiplies it by every row of x on the tensor cores, W as the first operand (its rows fill
  the MMA's 16-wide side, the few rows of x the narrow one).
- Many rows (prefill): the weight is dequantized into a dense scratch (`_qembed_kernel`,
  DENSE_CHUNK elements at a time) and multiplied by cuBLAS; the engine's memory plan reserves
  room for that scratch.
Decode matrices are too small to keep every SM's loads in flight with one program per block of W
rows, so both decode kernels can split K over programs: each stores its partial sums and counts
itself done on an atomic counter, and the last of a tile's programs adds the partials in split
order (the result does not depend on which finished first) and resets the counter for the next
call. `gemv_config` picks the path and its shape per matrix and number of rows, from a table
measured on the GPU where there is one (kernels/gemv_configs/).
In each, the nibbles of a byte belong to elements a group apart, and x is read at the same
permuted columns, so no quant value is ever shuffled. Grids depend on shapes only (CUDA-graph
safe): the split workspace grows only outside a capture, and a capture that would need more runs
unsplit.

`quant_embedding` dequantizes whole rows for the token embedding (and a tied lm_head is a
quant_matmul over the same weight).

The references dequantize (exactly as gguf does) and multiply: the CPU path and the oracle.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels._triton import SplitWorkspace, cdiv, dot_precision, jit, next_pow2, sm_count, split_workspace, tl
from kernels.quant import QuantWeight, dequantize

REF_ROWS = 4096  # CPU path: rows of W dequantized at a time, to bound the scratch memory
MAX_SPLIT = 16
DENSE_CHUNK = 1 << 25  # elements of W dequantized at a time (64 MiB in bf16): the scratch's bound
TILE_BYTES = 256  # quant bytes of a row per iteration (dequantization; the one-row default)
WEIGHTS_PER_THREAD = 64  # fp32 weights of a W tile a decode program's thread may hold without spilling
# groups of bytes that share a scale
GROUP_BYTES = {"Q4_0": 16, "Q4_1": 16, "Q5_0": 16, "Q5_1": 16, "Q8_0": 32, "Q4_K": 32, "Q5_K": 32, "Q6_K": 16}
TYPE_ID = {"Q4_0": 0, "Q4_1": 1, "Q5_0": 2, "Q5_1": 3, "Q8_0": 4, "Q4_K": 5, "Q5_K": 6, "Q6_K": 7}


def quant_matmul_ref(x: torch.Tensor, w: QuantWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [M, K]; returns [M, N] in x's dtype (written into `out`, which may be a column slice)."""
    n = w.shape[0]
    out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device) if out is None else out
    for start in range(0, n, REF_ROWS):
        rows = min(REF_ROWS, n - start)
        out[:, start:start + rows] = x @ dequantize(w.narrow_rows(start, rows)).to(x.dtype).T
    return out


def quant_embedding_ref(ids: torch.Tensor, w: QuantWeight, dtype: torch.dtype) -> torch.Tensor:
    """Rows `ids` of W, dequantized, in `dtype` (the token embedding of a quantized model)."""
    return dequantize(w.index_rows(ids.long())).to(dtype)


def quant_matmul_triton(x: torch.Tensor, w: QuantWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    m, k = x.shape
    n = w.shape[0]
    assert k == w.shape[1] and x.stride(1) == 1
    out = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    assert out.shape == (m, n) and out.stride(1) == 1
    if m == 0:
        return out
    cfg = gemv_config(m, n, k, w.qtype, x.device)
    return dense_path(x, w, out) if cfg is None else gemv_path(x, w, out, cfg)


def dense_path(x: torch.Tensor, w: QuantWeight, out: torch.Tensor) -> torch.Tensor:
    """Many rows: dequantize the weight into a dense scratch, then cuBLAS, a chunk of at most
    DENSE_CHUNK elements at a time (a 128k-vocabulary lm_head would need 1 GB at once)."""
    n, k = w.shape
    rows = max(1, DENSE_CHUNK // k)
    for start in range(0, n, rows):
        end = min(n, start + rows)
        chunk = quant_embedding_triton(torch.arange(start, end, device=x.device), w, x.dtype)
        torch.mm(x, chunk.T, out=out[:, start:end])
    return out


@dataclass(frozen=True)
class GemvConfig:
    """One decode kernel launch shape: BLOCK_N rows of W per program against one row of x
    (block_m 1: `_qgemv_kernel`, run for each row) or block_m rows (16 or 32: the tensor-core
    `_qmm_skinny_kernel`); K split over `split` programs; `tile_bytes` of each W row per iteration."""

    block_n: int
    block_m: int = 1
    split: int = 1
    tile_bytes: int = TILE_BYTES
    num_warps: int = 4

    def fits(self) -> bool:
        """Whether a thread's share of a dequantized W tile stays in registers."""
        return self.block_n * self.tile_bytes <= WEIGHTS_PER_THREAD * 32 * self.num_warps


def gemv_config(m: int, n: int, k: int, qtype: str, device: torch.device) -> GemvConfig | None:
    """The decode kernel's shape for an [m, k] x and an [n, k] W, or None for dequantize + cuBLAS:
    what kernels/gemv_configs/<GPU>.json measured for this matrix and number of rows (written by
    `python -m kernels.bench_quant --write-configs`); where nothing was measured, the one-row
    kernel for one row and dequantize + cuBLAS for more (the tensor-core kernel's best shape
    differs too much between matrices to guess: 9.7 against 57 us for a Q6_K 512 x 2048 on the H200)."""
    tuned = tuned_gemv_configs(device).get(f"{qtype} {n} {k} {next_pow2(m)}", False)
    if tuned is not False:
        return None if tuned is None else GemvConfig(**tuned)
    return one_row_config(n, device) if m == 1 else None


def one_row_config(n: int, device: torch.device) -> GemvConfig:
    """16 rows of W a program where that leaves four programs per SM, down to 4; no split."""
    block_n = 16
    while block_n > 4 and cdiv(n, block_n) < 4 * sm_count(device):
        block_n //= 2
    return GemvConfig(block_n)


CONFIG_DIR = Path(__file__).with_name("gemv_configs")


def config_file(device: torch.device) -> Path:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return CONFIG_DIR / (re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") + ".json")


@functools.cache
def tuned_gemv_configs(device: torch.device) -> dict[str, dict | None]:
    """"qtype n k rows" (rows a power of two) -> a GemvConfig's fields, or None for dequantize +
    cuBLAS; empty for a GPU nobody measured."""
    path = config_file(device)
    return json.loads(path.read_text()) if path.is_file() else {}


def gemv_path(x: torch.Tensor, w: QuantWeight, out: torch.Tensor, cfg: GemvConfig) -> torch.Tensor:
    qh, mins, sc, mn = _optional_arrays(w)
    m, k = x.shape
    n = w.shape[0]
    layout = _layout(w.qtype, cfg.tile_bytes)
    grid_n, grid_m = cdiv(n, cfg.block_n), cdiv(m, cfg.block_m)
    k_tiles = cdiv(k, layout["TILE"])
    per_split = cdiv(k_tiles, min(cfg.split, k_tiles))
    split = cdiv(k_tiles, per_split)  # no program without a tile
    ws = split_workspace("quant_matmul", x.device, split * m * n, grid_n * grid_m) if split > 1 else None
    if ws is None:
        split, per_split = 1, k_tiles
        ws = SplitWorkspace(out, out)  # unread stand-ins: the unsplit kernel stores directly
    args = (x, out, ws.partials, ws.counters, w.qs, qh, w.d, mins, sc, mn, m, n, k, per_split * layout["TILE"],
            x.stride(0), out.stride(0), w.qs.stride(0), qh.stride(0), w.d.stride(0), mins.stride(0),
            sc.stride(0), mn.stride(0))
    if cfg.block_m == 1:
        _qgemv_kernel[(grid_n, grid_m, split)](*args, **layout, BLOCK_N=cfg.block_n, SPLIT=split > 1,
                                               num_warps=cfg.num_warps)
    else:
        _qmm_skinny_kernel[(grid_n, grid_m, split)](
            *args, **layout, BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m, SPLIT=split > 1,
            PRECISION=dot_precision(x.dtype), num_warps=cfg.num_warps)
    return out


def _layout(qtype: str, tile_bytes: int = TILE_BYTES) -> dict:
    """The kernels' tile constants for a type: TILE elements per iteration in NG groups of GS bytes."""
    gs = GROUP_BYTES[qtype]
    return dict(QTYPE=TYPE_ID[qtype], GS=gs, NG=tile_bytes // gs, TILE=tile_bytes * (1 if qtype == "Q8_0" else 2))


def _optional_arrays(w: QuantWeight) -> tuple[torch.Tensor, ...]:
    """(qh, m, sc, mn) with a stand-in for the arrays the type lacks: kernels take every pointer."""
    return (w.qh if w.qh is not None else w.qs, w.m if w.m is not None else w.d,
            w.sc if w.sc is not None else w.qs, w.mn if w.mn is not None else w.qs)


def quant_embedding_triton(ids: torch.Tensor, w: QuantWeight, dtype: torch.dtype) -> torch.Tensor:
    n_ids, k = ids.shape[0], w.shape[1]
    out = torch.empty(n_ids, k, dtype=dtype, device=ids.device)
    if n_ids:
        qh, mins, sc, mn = _optional_arrays(w)
        layout = _layout(w.qtype)
        _qembed_kernel[(n_ids, cdiv(k, layout["TILE"]))](
            ids, out, w.qs, qh, w.d, mins, sc, mn, k, out.stride(0), w.qs.stride(0), qh.stride(0), w.d.stride(0),
            mins.stride(0), sc.stride(0), mn.stride(0), **layout, num_warps=4)
    return out


def dequantize_triton(w: QuantWeight, dtype: torch.dtype) -> torch.Tensor:
    """The whole weight, dense, in `dtype` (the dense path does the same a chunk at a time)."""
    return quant_embedding_triton(torch.arange(w.shape[0], device=w.device), w, dtype)


@jit
def _small_int_to_float(q, offset: tl.constexpr = 0):
    """q (int32, q + offset in [0, 2**23)) as fp32, exactly, without a conversion instruction:
    the float 2**23 + q + offset has q + offset as its mantissa, so an integer or (an add where an
    offset makes q non-negative), a bitcast and one float subtraction give q. An int-to-float
    conversion runs at a quarter of the FMA rate on NVIDIA GPUs, and dequantization converts
    every weight (H200, one row, same shapes: 5-17% faster on three of Llama-1B Q4_K_M's four
    largest matrices, unchanged on gate/up: the one-row kernel is bound by more than arithmetic)."""
    if offset == 0:
        bits = q | 0x4B000000
    else:
        bits = q + (0x4B000000 + offset)
    return bits.to(tl.float32, bitcast=True) - (8388608.0 + offset)


@jit
def _group_tile(rows, kt, row_mask, k, qs_ptr, qh_ptr, d_ptr, m_ptr, sc_ptr, mn_ptr,
               s_qs, s_qh, s_d, s_m, s_sc, s_mn, QTYPE: tl.constexpr, NG: tl.constexpr, GS: tl.constexpr):
    """Every kernel's view of NG * GS quant bytes of rows `rows` from element kt: integer
    values q ([R, NG, GS] fp32) of the elements at k_lo and k_hi ([NG, GS]), and per group the
    a, b ([R, NG]) with weight = a * q - b. For Q8_0 the `hi` half is unused."""
    g = tl.arange(0, NG)
    e = tl.arange(0, GS)
    r3 = rows[:, None, None]
    m2 = row_mask[:, None]
    if QTYPE == 4:  # Q8_0: one int8 per element, blocks of 32
        k_lo = kt + g[:, None] * 32 + e[None, :]
        mask = m2[:, :, None] & (k_lo < k)[None, :, :]
        q = _small_int_to_float(tl.load(qs_ptr + r3 * s_qs + k_lo[None, :, :], mask=mask, other=0).to(tl.int32), 128)
        gm = m2 & (tl.min(k_lo, axis=1) < k)[None, :]
        a = tl.load(d_ptr + rows[:, None] * s_d + (kt // 32 + g)[None, :], mask=gm, other=0.0).to(tl.float32)
        return q, q, a, a * 0.0, a, a * 0.0, k_lo, k_lo
    if QTYPE < 4:  # Q4_0, Q4_1, Q5_0, Q5_1: blocks of 32 elements in 16 bytes
        k_lo = kt + g[:, None] * 32 + e[None, :]
        k_hi = k_lo + 16
        byte_at = kt // 2 + g[:, None] * 16 + e[None, :]
        blk = (kt // 32 + g)[None, :]
    elif QTYPE == 7:  # Q6_K: 64 bytes of low nibbles per 128 elements, high nibble 64 apart
        k_lo = kt + (g[:, None] // 4) * 128 + (g[:, None] % 4) * 16 + e[None, :]
        k_hi = k_lo + 64
        byte_at = kt // 2 + g[:, None] * 16 + e[None, :]
    else:  # Q4_K, Q5_K: 32 bytes per 64 elements, high nibble 32 apart
        k_lo = kt + g[:, None] * 64 + e[None, :]
        k_hi = k_lo + 32
        byte_at = kt // 2 + g[:, None] * 32 + e[None, :]
    mask = m2[:, :, None] & (k_lo < k)[None, :, :]
    gm = m2 & (tl.min(k_lo, axis=1) < k)[None, :]  # groups past K (a tail tile): scales too are masked
    byte = tl.load(qs_ptr + r3 * s_qs + byte_at[None, :, :], mask=mask, other=0).to(tl.int32)
    lo = byte & 15
    hi = byte >> 4
    if QTYPE < 4:
        d = tl.load(d_ptr + rows[:, None] * s_d + blk, mask=gm, other=0.0).to(tl.float32)
        if QTYPE == 2 or QTYPE == 3:
            bits = tl.load(qh_ptr + rows[:, None] * s_qh + blk, mask=gm, other=0)[:, :, None]
            lo = lo | (((bits >> e[None, None, :]) & 1) << 4)
            hi = hi | (((bits >> (e + 16)[None, None, :]) & 1) << 4)
        if QTYPE == 0:
            b = 8.0 * d
        elif QTYPE == 2:
            b = 16.0 * d
        else:
            b = -tl.load(m_ptr + rows[:, None] * s_m + blk, mask=gm, other=0.0).to(tl.float32)
        return _small_int_to_float(lo), _small_int_to_float(hi), d, b, d, b, k_lo, k_hi
    if QTYPE == 7:
        # k_hi is k_lo + 64 in the same half super-block, so both take their top bits from one
        # high byte, bits 2j and 2j + 4 (j = which 32 of the half k_lo is in)
        e_lo = k_lo % 256
        hb = (k_lo // 256) * 64 + (e_lo // 128) * 32 + e_lo % 32
        h = tl.load(qh_ptr + r3 * s_qh + hb[None, :, :], mask=mask, other=0).to(tl.int32)
        shift = (2 * ((e_lo % 128) // 32))[None, :, :]
        lo = lo | (((h >> shift) & 3) << 4)
        hi = hi | (((h >> (shift + 4)) & 3) << 4)
        s_at = (kt // 16 + (g // 4) * 8 + g % 4)[None, :]
        d = tl.load(d_ptr + rows[:, None] * s_d + (kt // 256 + g // 8)[None, :], mask=gm, other=0.0).to(tl.float32)
        a_lo = d * tl.load(sc_ptr + rows[:, None] * s_sc + s_at, mask=gm, other=0).to(tl.float32)
        a_hi = d * tl.load(sc_ptr + rows[:, None] * s_sc + s_at + 4, mask=gm, other=0).to(tl.float32)
        return _small_int_to_float(lo), _small_int_to_float(hi), a_lo, 32.0 * a_lo, a_hi, 32.0 * a_hi, k_lo, k_hi
    sup = (kt // 256 + g // 4)[None, :]
    if QTYPE == 6:  # Q5_K: the fifth bit of element i of a superblock is bit i // 32 of byte i % 32
        hb = (kt // 256 + g[:, None] // 4) * 32 + e[None, :]
        h = tl.load(qh_ptr + r3 * s_qh + hb[None, :, :], mask=mask, other=0).to(tl.int32)
        shift = (2 * (g % 4))[None, :, None]
        lo = lo | (((h >> shift) & 1) << 4)
        hi = hi | (((h >> (shift + 1)) & 1) << 4)
    d = tl.load(d_ptr + rows[:, None] * s_d + sup, mask=gm, other=0.0).to(tl.float32)
    dmin = tl.load(m_ptr + rows[:, None] * s_m + sup, mask=gm, other=0.0).to(tl.float32)
    s_at = (kt // 32 + 2 * g)[None, :]
    a_lo = d * tl.load(sc_ptr + rows[:, None] * s_sc + s_at, mask=gm, other=0).to(tl.float32)
    a_hi = d * tl.load(sc_ptr + rows[:, None] * s_sc + s_at + 1, mask=gm, other=0).to(tl.float32)
    b_lo = dmin * tl.load(mn_ptr + rows[:, None] * s_mn + s_at, mask=gm, other=0).to(tl.float32)
    b_hi = dmin * tl.load(mn_ptr + rows[:, None] * s_mn + s_at + 1, mask=gm, other=0).to(tl.float32)
    return _small_int_to_float(lo), _small_int_to_float(hi), a_lo, b_lo, a_hi, b_hi, k_lo, k_hi


@jit
def _weights(q, a, b):
    """[R, NG, GS] weights a * q - b from a group tile's integer values and per-group a, b."""
    return a[:, :, None] * q - b[:, :, None]


@jit
def _store_or_split(y, y_at, p_at, mask, count_ptr, tile, split, part_stride, SPLIT: tl.constexpr):
    """Store a program's result, or, split over K, its partial: the last of the tile's programs
    to count itself done adds the partials in split order, stores them, and zeroes the counter."""
    if SPLIT:
        tl.store(p_at + split * part_stride, y, mask=mask)
        tl.debug_barrier()  # every thread's partial is written before this program counts itself done
        done = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if done == tl.num_programs(2) - 1:
            total = tl.zeros_like(y)
            for part in range(0, tl.num_programs(2)):
                total += tl.load(p_at + part * part_stride, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(y_at, total.to(y_at.dtype.element_ty), mask=mask)
            tl.atomic_xchg(count_ptr + tile, 0, sem="relaxed")  # ready for the next call
    else:
        tl.store(y_at, y.to(y_at.dtype.element_ty), mask=mask)


@jit(do_not_specialize=("m", "k_split"))
def _qgemv_kernel(x_ptr, y_ptr, part_ptr, count_ptr, qs_ptr, qh_ptr, d_ptr, m_ptr, sc_ptr, mn_ptr, m, n, k, k_split,
                  s_x, s_y, s_qs, s_qh, s_d, s_m, s_sc, s_mn,
                  QTYPE: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr, TILE: tl.constexpr,
                  BLOCK_N: tl.constexpr, SPLIT: tl.constexpr):
    """Row program_id(1) of x against BLOCK_N rows of W over K columns [split * k_split, + k_split).
    Products accumulate elementwise and are summed once at the end, so the loop has no
    cross-lane reductions."""
    pid_n = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_mask = rows < n
    x_row = x_ptr + row * s_x
    acc = tl.zeros([BLOCK_N, NG, GS], dtype=tl.float32)
    if SPLIT:
        k_start = split * k_split
        k_end = tl.minimum(k, k_start + k_split)
    else:  # bounds known when compiled: unsplit loops run twice as fast as with run-time bounds
        k_start = 0
        k_end = k
    for kt in range(k_start, k_end, TILE):
        q_lo, q_hi, a_lo, b_lo, a_hi, b_hi, k_lo, k_hi = _group_tile(
            rows, kt, row_mask, k, qs_ptr, qh_ptr, d_ptr, m_ptr, sc_ptr, mn_ptr,
            s_qs, s_qh, s_d, s_m, s_sc, s_mn, QTYPE, NG, GS)
        x_lo = tl.load(x_row + k_lo, mask=k_lo < k, other=0.0).to(tl.float32)
        acc += _weights(q_lo, a_lo, b_lo) * x_lo[None, :, :]
        if QTYPE != 4:
            x_hi = tl.load(x_row + k_hi, mask=k_hi < k, other=0.0).to(tl.float32)
            acc += _weights(q_hi, a_hi, b_hi) * x_hi[None, :, :]
    y = tl.sum(tl.sum(acc, axis=2), axis=1)
    _store_or_split(y, y_ptr + row * s_y + rows, part_ptr + row * n + rows, row_mask, count_ptr,
                    row * tl.num_programs(0) + pid_n, split, m * n, SPLIT)


@jit(do_not_specialize=("m", "k_split"))
def _qmm_skinny_kernel(x_ptr, y_ptr, part_ptr, count_ptr, qs_ptr, qh_ptr, d_ptr, m_ptr, sc_ptr, mn_ptr, m, n, k,
                       k_split, s_x, s_y, s_qs, s_qh, s_d, s_m, s_sc, s_mn,
                       QTYPE: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr, TILE: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, SPLIT: tl.constexpr,
                       PRECISION: tl.constexpr):
    """BLOCK_M rows of x against BLOCK_N rows of W over K columns [split * k_split, + k_split), as
    W_tile @ x_tile.T on the tensor cores: y.T accumulates in a [BLOCK_N, BLOCK_M] fp32 tile. The
    W tile is dequantized once in registers, rounded to x's dtype as the dense path rounds it."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    split = tl.program_id(2)
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_mask = rows < n
    xs = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    x_mask = (xs < m)[:, None, None]
    x_rows = x_ptr + xs[:, None, None] * s_x
    dtype = x_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    if SPLIT:
        k_start = split * k_split
        k_end = tl.minimum(k, k_start + k_split)
    else:
        k_start = 0
        k_end = k
    for kt in range(k_start, k_end, TILE):
        q_lo, q_hi, a_lo, b_lo, a_hi, b_hi, k_lo, k_hi = _group_tile(
            rows, kt, row_mask, k, qs_ptr, qh_ptr, d_ptr, m_ptr, sc_ptr, mn_ptr,
            s_qs, s_qh, s_d, s_m, s_sc, s_mn, QTYPE, NG, GS)
        w = tl.reshape(_weights(q_lo, a_lo, b_lo), [BLOCK_N, NG * GS]).to(dtype)
        xt = tl.load(x_rows + k_lo[None, :, :], mask=x_mask & (k_lo < k)[None, :, :], other=0.0)
        acc = tl.dot(w, tl.trans(tl.reshape(xt, [BLOCK_M, NG * GS])), acc, input_precision=PRECISION)
        if QTYPE != 4:
            w = tl.reshape(_weights(q_hi, a_hi, b_hi), [BLOCK_N, NG * GS]).to(dtype)
            xt = tl.load(x_rows + k_hi[None, :, :], mask=x_mask & (k_hi < k)[None, :, :], other=0.0)
            acc = tl.dot(w, tl.trans(tl.reshape(xt, [BLOCK_M, NG * GS])), acc, input_precision=PRECISION)
    out_mask = row_mask[:, None] & (xs < m)[None, :]
    _store_or_split(acc, y_ptr + xs[None, :] * s_y + rows[:, None], part_ptr + xs[None, :] * n + rows[:, None],
                    out_mask, count_ptr, pid_m * tl.num_programs(0) + pid_n, split, m * n, SPLIT)


@jit
def _qembed_kernel(ids_ptr, out_ptr, qs_ptr, qh_ptr, d_ptr, m_ptr, sc_ptr, mn_ptr, k,
                   s_out, s_qs, s_qh, s_d, s_m, s_sc, s_mn,
                   QTYPE: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr, TILE: tl.constexpr):
    """Row ids[i] of W, elements [kt, kt + TILE), dequantized into out[i]."""
    i = tl.program_id(0).to(tl.int64)
    kt = tl.program_id(1) * TILE
    rows = tl.full([1], 0, tl.int64) + tl.load(ids_ptr + i).to(tl.int64)
    q_lo, q_hi, a_lo, b_lo, a_hi, b_hi, k_lo, k_hi = _group_tile(
        rows, kt, rows >= 0, k, qs_ptr, qh_ptr, d_ptr, m_ptr, sc_ptr, mn_ptr,
        s_qs, s_qh, s_d, s_m, s_sc, s_mn, QTYPE, NG, GS)
    dst = out_ptr + i * s_out
    tl.store(dst + k_lo[None, :, :], _weights(q_lo, a_lo, b_lo).to(out_ptr.dtype.element_ty),
             mask=(k_lo < k)[None, :, :])
    if QTYPE != 4:
        tl.store(dst + k_hi[None, :, :], _weights(q_hi, a_hi, b_hi).to(out_ptr.dtype.element_ty),
                 mask=(k_hi < k)[None, :, :])
