"""quant_matmul: y = x @ W.T with W quantized (kernels/quant.py), dequantized in registers.

Each program computes a [BLOCK_M, BLOCK_N] tile of y. For every tile of K it loads the tile's
quant bytes of BLOCK_N rows (contiguous along K, so wide loads), splits each byte into its low and
high nibble (and adds the high bits for the 5- and 6-bit types), applies the block scales, and
multiplies by the matching columns of x: because the nibbles of a byte belong to elements `group`
apart, x is read at the same permuted columns, and no quant value is ever shuffled. Decode
(M <= 16) and batched steps use BLOCK_M 16 or 64 with BLOCK_N small enough to give every SM a
program; long prefills use 64 x 128 tiles. Grids depend on shapes only (CUDA-graph safe).

`quant_embedding` dequantizes whole rows for the token embedding (and a tied lm_head is a
quant_matmul over the same weight).

The references dequantize (exactly as gguf does) and multiply: the CPU path and the oracle.
"""
from __future__ import annotations

import functools

import torch

from kernels._triton import cdiv, dot_precision, jit, tl
from kernels.quant import QuantWeight, dequantize

REF_ROWS = 4096  # CPU path: rows of W dequantized at a time, to bound the scratch memory
TYPE_ID = {"Q4_0": 0, "Q4_1": 1, "Q5_0": 2, "Q5_1": 3, "Q8_0": 4, "Q4_K": 5, "Q5_K": 6, "Q6_K": 7}
# elements of K per loop iteration, and the distance between a byte's low and high nibble
TILE_K = {"Q4_0": 64, "Q4_1": 64, "Q5_0": 64, "Q5_1": 64, "Q8_0": 64, "Q4_K": 128, "Q5_K": 128, "Q6_K": 128}
GROUP = {"Q4_0": 16, "Q4_1": 16, "Q5_0": 16, "Q5_1": 16, "Q8_0": 0, "Q4_K": 32, "Q5_K": 32, "Q6_K": 64}


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


def _tiles(m: int, n: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): few rows -> narrow column tiles, so the grid still fills the GPU."""
    if m > 64:
        return 64, 64
    block_m = 16 if m <= 16 else 64
    sms = _sm_count(device)
    block_n = 64
    while block_n > 16 and cdiv(n, block_n) < 2 * sms:
        block_n //= 2
    return block_m, block_n


def quant_matmul_triton(x: torch.Tensor, w: QuantWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    m, k = x.shape
    n = w.shape[0]
    assert k == w.shape[1] and x.stride(1) == 1
    out = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    assert out.shape == (m, n) and out.stride(1) == 1
    if m == 0:
        return out
    block_m, block_n = _tiles(m, n, x.device)
    qh = w.qh if w.qh is not None else w.qs
    mins = w.m if w.m is not None else w.d
    sc = w.sc if w.sc is not None else w.qs
    mn = w.mn if w.mn is not None else w.qs
    _qmatmul_kernel[(cdiv(m, block_m), cdiv(n, block_n))](
        x, out, w.qs, qh, w.d, mins, sc, mn, m, n, k,
        x.stride(0), out.stride(0), w.qs.stride(0), qh.stride(0), w.d.stride(0), mins.stride(0), sc.stride(0),
        mn.stride(0),
        QTYPE=TYPE_ID[w.qtype], TILE=TILE_K[w.qtype], J=_j(w.qtype), GROUP=max(GROUP[w.qtype], 1),
        BLOCK_M=block_m, BLOCK_N=block_n, PRECISION=dot_precision(x.dtype),
        num_warps=4 if block_m * block_n < 64 * 64 else 8, num_stages=2,
    )
    return out


def quant_embedding_triton(ids: torch.Tensor, w: QuantWeight, dtype: torch.dtype) -> torch.Tensor:
    n_ids, k = ids.shape[0], w.shape[1]
    out = torch.empty(n_ids, k, dtype=dtype, device=ids.device)
    if n_ids:
        qh = w.qh if w.qh is not None else w.qs
        mins = w.m if w.m is not None else w.d
        sc = w.sc if w.sc is not None else w.qs
        mn = w.mn if w.mn is not None else w.qs
        tile = TILE_K[w.qtype]
        _qembed_kernel[(n_ids, cdiv(k, tile))](
            ids, out, w.qs, qh, w.d, mins, sc, mn, k, out.stride(0), w.qs.stride(0), qh.stride(0), w.d.stride(0),
            mins.stride(0), sc.stride(0), mn.stride(0),
            QTYPE=TYPE_ID[w.qtype], TILE=tile, J=_j(w.qtype), GROUP=max(GROUP[w.qtype], 1), num_warps=4)
    return out


def dequantize_triton(w: QuantWeight, dtype: torch.dtype) -> torch.Tensor:
    """The whole weight, dense, in `dtype` (for long prefills, which then run on cuBLAS)."""
    return quant_embedding_triton(torch.arange(w.shape[0], device=w.device), w, dtype)


def _j(qtype: str) -> int:
    """Quant bytes (columns) of a tile: one per element for Q8_0, one per two elsewhere."""
    return TILE_K[qtype] if qtype == "Q8_0" else TILE_K[qtype] // 2


@jit
def _dequant_tile(rows, kt, offs_j, row_mask, k, qs_ptr, qh_ptr, d_ptr, m_ptr, sc_ptr, mn_ptr,
                  s_qs, s_qh, s_d, s_m, s_sc, s_mn,
                  QTYPE: tl.constexpr, TILE: tl.constexpr, GROUP: tl.constexpr):
    """Weights of rows `rows` ([R], int64) for K elements kt..kt+TILE, as (lo, hi, k_lo, k_hi):
    fp32 [R, J] values of the elements at columns k_lo and k_hi ([J] each). For Q8_0 `hi` is
    empty and k_lo covers the whole tile."""
    if QTYPE == 4:  # Q8_0: one int8 per element
        kk = kt + offs_j
        mask = row_mask[:, None] & (kk[None, :] < k)
        q = tl.load(qs_ptr + rows[:, None] * s_qs + kk[None, :], mask=mask, other=0).to(tl.float32)
        d = tl.load(d_ptr + rows[:, None] * s_d + kk[None, :] // 32, mask=mask, other=0.0).to(tl.float32)
        return q * d, q * 0.0, kk, kk
    k_lo = kt + (offs_j // GROUP) * (2 * GROUP) + offs_j % GROUP
    k_hi = k_lo + GROUP
    mask = row_mask[:, None] & (k_lo[None, :] < k)
    byte = tl.load(qs_ptr + rows[:, None] * s_qs + (kt // 2 + offs_j)[None, :], mask=mask, other=0).to(tl.int32)
    lo = byte & 15
    hi = byte >> 4
    if QTYPE < 4:  # Q4_0, Q4_1, Q5_0, Q5_1: blocks of 32 (both nibbles of a byte in the same block)
        blk = k_lo // 32
        d = tl.load(d_ptr + rows[:, None] * s_d + blk[None, :], mask=mask, other=0.0).to(tl.float32)
        if QTYPE == 2 or QTYPE == 3:
            bits = tl.load(qh_ptr + rows[:, None] * s_qh + blk[None, :], mask=mask, other=0)
            lo = lo | (((bits >> (k_lo % 32)[None, :]) & 1) << 4)
            hi = hi | (((bits >> (k_hi % 32)[None, :]) & 1) << 4)
        if QTYPE == 0:
            return d * (lo - 8).to(tl.float32), d * (hi - 8).to(tl.float32), k_lo, k_hi
        if QTYPE == 2:
            return d * (lo - 16).to(tl.float32), d * (hi - 16).to(tl.float32), k_lo, k_hi
        mn = tl.load(m_ptr + rows[:, None] * s_m + blk[None, :], mask=mask, other=0.0).to(tl.float32)
        return d * lo.to(tl.float32) + mn, d * hi.to(tl.float32) + mn, k_lo, k_hi
    sup = kt // 256
    d = tl.load(d_ptr + rows * s_d + sup, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    if QTYPE == 7:  # Q6_K: 2 more bits from the high bytes, scales per 16
        e_lo = k_lo % 256
        e_hi = k_hi % 256
        hbyte_lo = sup * 64 + (e_lo // 128) * 32 + e_lo % 32
        hbyte_hi = sup * 64 + (e_hi // 128) * 32 + e_hi % 32
        h_lo = tl.load(qh_ptr + rows[:, None] * s_qh + hbyte_lo[None, :], mask=mask, other=0).to(tl.int32)
        h_hi = tl.load(qh_ptr + rows[:, None] * s_qh + hbyte_hi[None, :], mask=mask, other=0).to(tl.int32)
        lo = lo | (((h_lo >> (2 * ((e_lo % 128) // 32))[None, :]) & 3) << 4)
        hi = hi | (((h_hi >> (2 * ((e_hi % 128) // 32))[None, :]) & 3) << 4)
        s_lo = tl.load(sc_ptr + rows[:, None] * s_sc + (k_lo // 16)[None, :], mask=mask, other=0).to(tl.float32)
        s_hi = tl.load(sc_ptr + rows[:, None] * s_sc + (k_hi // 16)[None, :], mask=mask, other=0).to(tl.float32)
        return (d * s_lo) * (lo - 32).to(tl.float32), (d * s_hi) * (hi - 32).to(tl.float32), k_lo, k_hi
    # Q4_K, Q5_K: scales and mins per 32
    dmin = tl.load(m_ptr + rows * s_m + sup, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    if QTYPE == 6:
        e_lo = k_lo % 256
        e_hi = k_hi % 256
        h_lo = tl.load(qh_ptr + rows[:, None] * s_qh + (sup * 32 + e_lo % 32)[None, :], mask=mask, other=0).to(tl.int32)
        h_hi = tl.load(qh_ptr + rows[:, None] * s_qh + (sup * 32 + e_hi % 32)[None, :], mask=mask, other=0).to(tl.int32)
        lo = lo | (((h_lo >> (e_lo // 32)[None, :]) & 1) << 4)
        hi = hi | (((h_hi >> (e_hi // 32)[None, :]) & 1) << 4)
    sc_lo = tl.load(sc_ptr + rows[:, None] * s_sc + (k_lo // 32)[None, :], mask=mask, other=0).to(tl.float32)
    sc_hi = tl.load(sc_ptr + rows[:, None] * s_sc + (k_hi // 32)[None, :], mask=mask, other=0).to(tl.float32)
    mn_lo = tl.load(mn_ptr + rows[:, None] * s_mn + (k_lo // 32)[None, :], mask=mask, other=0).to(tl.float32)
    mn_hi = tl.load(mn_ptr + rows[:, None] * s_mn + (k_hi // 32)[None, :], mask=mask, other=0).to(tl.float32)
    w_lo = (d * sc_lo) * lo.to(tl.float32) - dmin * mn_lo
    w_hi = (d * sc_hi) * hi.to(tl.float32) - dmin * mn_hi
    return w_lo, w_hi, k_lo, k_hi


@jit(do_not_specialize=("m",))
def _qmatmul_kernel(x_ptr, y_ptr, qs_ptr, qh_ptr, d_ptr, m_ptr, sc_ptr, mn_ptr, m, n, k,
                    s_x, s_y, s_qs, s_qh, s_d, s_m, s_sc, s_mn,
                    QTYPE: tl.constexpr, TILE: tl.constexpr, J: tl.constexpr, GROUP: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_mask = rows < n
    m_mask = offs_m < m
    offs_j = tl.arange(0, J)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    x_rows = x_ptr + offs_m[:, None] * s_x
    dtype = x_ptr.dtype.element_ty
    for kt in range(0, k, TILE):
        w_lo, w_hi, k_lo, k_hi = _dequant_tile(rows, kt, offs_j, row_mask, k, qs_ptr, qh_ptr, d_ptr, m_ptr,
                                               sc_ptr, mn_ptr, s_qs, s_qh, s_d, s_m, s_sc, s_mn, QTYPE, TILE, GROUP)
        x_lo = tl.load(x_rows + k_lo[None, :], mask=m_mask[:, None] & (k_lo[None, :] < k), other=0.0)
        acc += tl.dot(x_lo, tl.trans(w_lo.to(dtype)), input_precision=PRECISION)
        if QTYPE != 4:
            x_hi = tl.load(x_rows + k_hi[None, :], mask=m_mask[:, None] & (k_hi[None, :] < k), other=0.0)
            acc += tl.dot(x_hi, tl.trans(w_hi.to(dtype)), input_precision=PRECISION)
    tl.store(y_ptr + offs_m[:, None] * s_y + rows[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & row_mask[None, :])


@jit
def _qembed_kernel(ids_ptr, out_ptr, qs_ptr, qh_ptr, d_ptr, m_ptr, sc_ptr, mn_ptr, k,
                   s_out, s_qs, s_qh, s_d, s_m, s_sc, s_mn,
                   QTYPE: tl.constexpr, TILE: tl.constexpr, J: tl.constexpr, GROUP: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    kt = tl.program_id(1) * TILE
    row = tl.load(ids_ptr + i).to(tl.int64)
    rows = tl.full([1], 0, tl.int64) + row
    row_mask = rows >= 0
    offs_j = tl.arange(0, J)
    w_lo, w_hi, k_lo, k_hi = _dequant_tile(rows, kt, offs_j, row_mask, k, qs_ptr, qh_ptr, d_ptr, m_ptr, sc_ptr,
                                           mn_ptr, s_qs, s_qh, s_d, s_m, s_sc, s_mn, QTYPE, TILE, GROUP)
    dst = out_ptr + i * s_out
    tl.store(dst + k_lo[None, :], w_lo.to(out_ptr.dtype.element_ty), mask=k_lo[None, :] < k)
    if QTYPE != 4:
        tl.store(dst + k_hi[None, :], w_hi.to(out_ptr.dtype.element_ty), mask=k_hi[None, :] < k)
