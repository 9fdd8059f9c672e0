"""quant_matmul: y = x @ W.T with W quantized (kernels/quant.py), dequantized in registers.

Both kernels walk K in tiles of TILE_BYTES quant bytes per row of W, seen as [groups, bytes]
where a group shares one scale and one minimum, so each weight is a * q - b with q the integer
value and a, b loaded once per group (`_group_tile`). Two paths, by the rows of x:
- One row (decode of one sequence): `_qgemv_kernel`, products accumulated elementwise in fp32
  and summed once at the end; narrow blocks of W rows give every SM several programs, which keeps
  loads in flight.
- More rows (batched decode, prefill): the weight is dequantized once into a dense scratch
  (`_qembed_kernel` over its rows, DENSE_CHUNK elements at a time) and multiplied by cuBLAS; the
  engine's memory plan reserves room for that scratch. A tensor-core kernel that dequantized tiles in registers was slower
  than this at every shape measured from 8 to 512 rows (BENCHMARKS.md), so it is gone.
In each, the nibbles of a byte belong to elements a group apart, and x is read at the same
permuted columns, so no quant value is ever shuffled. Grids depend on shapes only (CUDA-graph
safe).

`quant_embedding` dequantizes whole rows for the token embedding (and a tied lm_head is a
quant_matmul over the same weight).

The references dequantize (exactly as gguf does) and multiply: the CPU path and the oracle.
"""
from __future__ import annotations

import functools

import torch

from kernels._triton import cdiv, jit, tl
from kernels.quant import QuantWeight, dequantize

REF_ROWS = 4096  # CPU path: rows of W dequantized at a time, to bound the scratch memory
GEMV_ROWS = 1  # up to this many rows of x: the decode kernel; more: dequantize, then cuBLAS
DENSE_CHUNK = 1 << 25  # elements of W dequantized at a time (64 MiB in bf16): the scratch's bound
TILE_BYTES = 256  # quant bytes of a row per iteration
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


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def quant_matmul_triton(x: torch.Tensor, w: QuantWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    m, k = x.shape
    n = w.shape[0]
    assert k == w.shape[1] and x.stride(1) == 1
    out = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    assert out.shape == (m, n) and out.stride(1) == 1
    if m == 0:
        return out
    if m <= GEMV_ROWS:
        return gemv_path(x, w, out, gemv_rows(n, x.device))
    return dense_path(x, w, out)


def dense_path(x: torch.Tensor, w: QuantWeight, out: torch.Tensor) -> torch.Tensor:
    """Two rows or more: dequantize the weight into a dense scratch, then cuBLAS, a chunk of
    at most DENSE_CHUNK elements at a time (a 128k-vocabulary lm_head would need 1 GB at once)."""
    n, k = w.shape
    rows = max(1, DENSE_CHUNK // k)
    for start in range(0, n, rows):
        end = min(n, start + rows)
        chunk = quant_embedding_triton(torch.arange(start, end, device=x.device), w, x.dtype)
        torch.mm(x, chunk.T, out=out[:, start:end])
    return out


def gemv_path(x: torch.Tensor, w: QuantWeight, out: torch.Tensor, block_n: int) -> torch.Tensor:
    qh, mins, sc, mn = _optional_arrays(w)
    m, k = x.shape
    _qgemv_kernel[(m, cdiv(w.shape[0], block_n))](
        x, out, w.qs, qh, w.d, mins, sc, mn, w.shape[0], k,
        x.stride(0), out.stride(0), w.qs.stride(0), qh.stride(0), w.d.stride(0), mins.stride(0),
        sc.stride(0), mn.stride(0), **_layout(w.qtype), BLOCK_N=block_n, num_warps=4)
    return out


def _layout(qtype: str) -> dict:
    """The kernels' tile constants for a type: TILE elements per iteration in NG groups of GS bytes."""
    gs = GROUP_BYTES[qtype]
    return dict(QTYPE=TYPE_ID[qtype], GS=gs, NG=TILE_BYTES // gs, TILE=TILE_BYTES * (1 if qtype == "Q8_0" else 2))


def _optional_arrays(w: QuantWeight) -> tuple[torch.Tensor, ...]:
    """(qh, m, sc, mn) with a stand-in for the arrays the type lacks: kernels take every pointer."""
    return (w.qh if w.qh is not None else w.qs, w.m if w.m is not None else w.d,
            w.sc if w.sc is not None else w.qs, w.mn if w.mn is not None else w.qs)


def gemv_rows(n: int, device: torch.device) -> int:
    """Rows of W per decode program: 16 where that leaves four programs per SM, down to 4 (the
    fastest for N = 2048-3072 on the H200: kernels/bench_quant.py)."""
    block_n = 16
    while block_n > 4 and cdiv(n, block_n) < 4 * _sm_count(device):
        block_n //= 2
    return block_n


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
        q = tl.load(qs_ptr + r3 * s_qs + k_lo[None, :, :], mask=mask, other=0).to(tl.float32)
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
        return lo.to(tl.float32), hi.to(tl.float32), d, b, d, b, k_lo, k_hi
    if QTYPE == 7:
        e_lo = k_lo % 256
        e_hi = k_hi % 256
        hb_lo = (k_lo // 256) * 64 + (e_lo // 128) * 32 + e_lo % 32
        hb_hi = (k_hi // 256) * 64 + (e_hi // 128) * 32 + e_hi % 32
        h_lo = tl.load(qh_ptr + r3 * s_qh + hb_lo[None, :, :], mask=mask, other=0).to(tl.int32)
        h_hi = tl.load(qh_ptr + r3 * s_qh + hb_hi[None, :, :], mask=mask, other=0).to(tl.int32)
        lo = lo | (((h_lo >> (2 * ((e_lo % 128) // 32))[None, :, :]) & 3) << 4)
        hi = hi | (((h_hi >> (2 * ((e_hi % 128) // 32))[None, :, :]) & 3) << 4)
        s_at = (kt // 16 + (g // 4) * 8 + g % 4)[None, :]
        d = tl.load(d_ptr + rows[:, None] * s_d + (kt // 256 + g // 8)[None, :], mask=gm, other=0.0).to(tl.float32)
        a_lo = d * tl.load(sc_ptr + rows[:, None] * s_sc + s_at, mask=gm, other=0).to(tl.float32)
        a_hi = d * tl.load(sc_ptr + rows[:, None] * s_sc + s_at + 4, mask=gm, other=0).to(tl.float32)
        return lo.to(tl.float32), hi.to(tl.float32), a_lo, 32.0 * a_lo, a_hi, 32.0 * a_hi, k_lo, k_hi
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
    return lo.to(tl.float32), hi.to(tl.float32), a_lo, b_lo, a_hi, b_hi, k_lo, k_hi


@jit
def _weights(q, a, b):
    """[R, NG, GS] weights a * q - b from a group tile's integer values and per-group a, b."""
    return a[:, :, None] * q - b[:, :, None]


@jit
def _qgemv_kernel(x_ptr, y_ptr, qs_ptr, qh_ptr, d_ptr, m_ptr, sc_ptr, mn_ptr, n, k,
                  s_x, s_y, s_qs, s_qh, s_d, s_m, s_sc, s_mn,
                  QTYPE: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr, TILE: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """One row of x against BLOCK_N rows of W. Products accumulate elementwise and are summed
    once at the end, so the loop has no cross-lane reductions."""
    x_row = x_ptr + tl.program_id(0).to(tl.int64) * s_x
    rows = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_mask = rows < n
    acc = tl.zeros([BLOCK_N, NG, GS], dtype=tl.float32)
    for kt in range(0, k, TILE):
        q_lo, q_hi, a_lo, b_lo, a_hi, b_hi, k_lo, k_hi = _group_tile(
            rows, kt, row_mask, k, qs_ptr, qh_ptr, d_ptr, m_ptr, sc_ptr, mn_ptr,
            s_qs, s_qh, s_d, s_m, s_sc, s_mn, QTYPE, NG, GS)
        x_lo = tl.load(x_row + k_lo, mask=k_lo < k, other=0.0).to(tl.float32)
        acc += _weights(q_lo, a_lo, b_lo) * x_lo[None, :, :]
        if QTYPE != 4:
            x_hi = tl.load(x_row + k_hi, mask=k_hi < k, other=0.0).to(tl.float32)
            acc += _weights(q_hi, a_hi, b_hi) * x_hi[None, :, :]
    y = tl.sum(tl.sum(acc, axis=2), axis=1)
    tl.store(y_ptr + tl.program_id(0).to(tl.int64) * s_y + rows, y.to(y_ptr.dtype.element_ty), mask=row_mask)


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
