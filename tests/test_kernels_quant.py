"""Quantized weights: the repacked form dequantizes to exactly what gguf.dequantize gives, the
Triton matmul and embedding agree with dequantize-then-multiply, and quantizing at load makes
the blocks gguf's own quantizer makes. CPU cases of the kernels run interpreted in a child pytest."""
import numpy as np
import pytest
import torch

pytest.importorskip("triton")
gguf = pytest.importorskip("gguf")

from quant_blocks import random_blocks  # noqa: E402
from triton_helpers import DEVICES, INTERPRET, fix_interpreter, run_interpreted  # noqa: E402

from kernels.quant import PACKED_TYPES, dequantize, from_gguf, quantize  # noqa: E402
from kernels.quant_matmul import (  # noqa: E402
    GemvConfig, dequantize_triton, gemv_path, quant_embedding_ref, quant_embedding_triton, quant_matmul_ref,
    quant_matmul_triton)

if INTERPRET:
    fix_interpreter()


@pytest.mark.skipif(INTERPRET, reason="this is the interpreted child")
def test_interpreted_cpu_cases():
    run = run_interpreted(__file__)
    assert run.returncode == 0 and run.passed > 0, run.output


@pytest.mark.parametrize("qtype", PACKED_TYPES)
def test_dequantize_equals_gguf_bit_for_bit(qtype):
    n, k = 12, 1024
    raw = random_blocks(qtype, n, k, seed=len(qtype))
    expected = gguf.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    ours = dequantize(from_gguf(raw, qtype, k)).numpy()
    assert ours.shape == (n, k) and ours.dtype == np.float32
    assert np.array_equal(ours.view(np.uint32), expected.view(np.uint32)), f"{qtype} differs from gguf"


@pytest.mark.parametrize("qtype", PACKED_TYPES)
def test_packed_form_is_no_larger_than_the_file(qtype):
    n, k = 8, 512
    raw = random_blocks(qtype, n, k, seed=1)
    assert from_gguf(raw, qtype, k).nbytes <= 1.03 * raw.nbytes


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
def test_quantize_at_load_makes_ggufs_blocks(qtype):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(3)) * 0.05
    theirs = from_gguf(gguf.quantize(w.numpy(), gguf.GGMLQuantizationType[qtype]), qtype, 256)
    ours = quantize(w, qtype)
    for name, tensor in theirs.arrays().items():
        assert torch.equal(getattr(ours, name).view(tensor.dtype), tensor), name
    err = (dequantize(ours) - w).abs().max() / w.abs().max()
    assert err < (0.01 if qtype == "Q8_0" else 0.07)


def check_matmul(y: torch.Tensor, x: torch.Tensor, w) -> None:
    ref = x.float() @ dequantize(w.to("cpu")).to(x.device).to(x.dtype).float().T
    tol = 1e-4 if x.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.float(), ref, rtol=tol, atol=tol * float(ref.abs().max()))


@pytest.mark.parametrize("m", [1, 5, 100])
@pytest.mark.parametrize("qtype", PACKED_TYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_quant_matmul_matches_dequantize_then_matmul(device, qtype, m):
    """The decode kernel (1, 5 rows) and dequantize + cuBLAS (100); N not a multiple of any row
    block, K not a multiple of the tile."""
    n, k = (40, 768) if device == "cpu" else (3000, 4864)
    dtype = torch.float32 if device == "cpu" and m == 5 else torch.bfloat16
    w = from_gguf(random_blocks(qtype, n, k, seed=m), qtype, k).to(device)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(device, dtype)
    out = torch.full((m, n + 8), float("nan"), dtype=dtype, device=device)[:, 4:4 + n]  # a strided slice
    y = quant_matmul_triton(x, w, out=out)
    assert y is out and not y.isnan().any()
    check_matmul(y, x, w)
    if device == "cpu":
        torch.testing.assert_close(quant_matmul_ref(x, w), (x @ dequantize(w).to(dtype).T))


DECODE_SHAPES = [GemvConfig(4), GemvConfig(8, split=3), GemvConfig(16, split=4, tile_bytes=512, num_warps=8),
                 GemvConfig(16, 16), GemvConfig(32, 16, split=2), GemvConfig(64, 32, split=3, tile_bytes=256)]


@pytest.mark.parametrize("cfg", DECODE_SHAPES, ids=lambda c: f"n{c.block_n}m{c.block_m}s{c.split}t{c.tile_bytes}")
@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q8_0", "Q5_1"])
@pytest.mark.parametrize("device", DEVICES)
def test_decode_kernel_shapes_agree(device, qtype, cfg):
    """Both decode kernels, split over K or not, against dequantize-then-matmul: one row, and
    rows of x that fill a block and spill into the next (masked), with a tail tile of K; a
    second call gives the same bits, so the split counters were left at zero and the partials
    are added in a fixed order."""
    n, k = (40, 2304) if device == "cpu" else (3000, 4864)
    m = 1 if cfg.block_m == 1 else cfg.block_m + 3
    w = from_gguf(random_blocks(qtype, n, k, seed=cfg.split), qtype, k).to(device)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(7)).to(device, torch.bfloat16)
    first = gemv_path(x, w, torch.full((m, n), float("nan"), dtype=x.dtype, device=device), cfg)
    check_matmul(first, x, w)
    again = gemv_path(x, w, torch.empty_like(first), cfg)
    assert torch.equal(again, first)


@pytest.mark.parametrize("qtype", PACKED_TYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_quant_embedding_matches_the_dequantized_rows(device, qtype):
    n, k = (40, 512) if device == "cpu" else (128256, 2048)
    w = from_gguf(random_blocks(qtype, n, k, seed=9), qtype, k).to(device)
    ids = torch.tensor([3, 0, n - 1, 3], device=device)
    rows = quant_embedding_triton(ids, w, torch.bfloat16)
    torch.testing.assert_close(rows, quant_embedding_ref(ids.cpu(), w.to("cpu"), torch.bfloat16).to(device),
                               rtol=8e-3, atol=1e-6)
    full = dequantize_triton(w.narrow_rows(0, 16), torch.float32)
    torch.testing.assert_close(full, dequantize(w.narrow_rows(0, 16).to("cpu")).to(device), rtol=1e-6, atol=1e-7)
