"""The CPU's 4-bit decode path (kernels/cpu_int4.py): torch's int4 kernel on the file's 4-bit
weights multiplies as the file's weights dequantized do, fused parts stack, what it cannot take
stays on the dense path, and the bundled model decoding through it predicts what it predicts
through its dense bf16 weights."""
import pytest
import torch

from engine import LLM
from engine.bench.quality import teacher_forced_logits, top1_agreement
from kernels import cpu_int4
from kernels.quant import dequantize, from_gguf
from quant_blocks import random_blocks

pytestmark = pytest.mark.skipif(not cpu_int4.usable(torch.device("cpu"), torch.bfloat16),
                                reason="this torch has no int4 CPU kernel")


def weight(qtype: str, n: int, k: int, seed: int):
    return from_gguf(random_blocks(qtype, n, k, seed), qtype, k)


@pytest.mark.parametrize("qtype", cpu_int4.INT4_TYPES)
@pytest.mark.parametrize("rows", [1, 5, cpu_int4.MAX_ROWS])
def test_int4_form_multiplies_as_the_file_dequantized(qtype, rows):
    w = weight(qtype, 48, 512, seed=rows)
    x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
    y = cpu_int4.matmul(x, cpu_int4.pack([w]))
    ref = x.float() @ dequantize(w).T
    assert y.shape == (rows, 48) and y.dtype == torch.bfloat16
    # bf16 output, and scales and zeros rounded to bf16: about 1% of the largest value
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))


def test_fused_parts_stack_as_their_rows():
    parts = [weight("Q4_K", 32, 256, seed=1), weight("Q4_K", 16, 256, seed=2), weight("Q4_K", 16, 256, seed=3)]
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    fused = cpu_int4.matmul(x, cpu_int4.pack(parts))
    alone = torch.cat([cpu_int4.matmul(x, cpu_int4.pack([p])) for p in parts], dim=1)
    assert torch.equal(fused, alone)


def test_what_it_cannot_take_stays_on_the_dense_path():
    assert cpu_int4.pack([weight("Q8_0", 32, 256, seed=0)]) is None  # 8 bits do not fit in 4
    assert cpu_int4.pack([weight("Q4_K", 32, 256, seed=0), weight("Q6_K", 32, 256, seed=1)]) is None  # Q4_K_M's v
    assert cpu_int4.pack([weight("Q4_1", 8, 256, seed=0)]) is None  # torch packs rows in sixteens
    assert not cpu_int4.usable(torch.device("cpu"), torch.float32)  # slower than dense fp32


def test_the_bundled_model_decodes_through_it_as_through_its_dense_weights():
    """Teacher-forced in chunks of 16 tokens, so every projection takes the int4 path, against the
    same model with its dense bf16 weights only: top-1 agrees wherever the dense model's top two
    logits are not a near-tie."""
    from conftest import PASSAGE
    int4 = LLM(num_kv_blocks=64, dtype=torch.bfloat16)
    dense = LLM(num_kv_blocks=64, dtype=torch.bfloat16, cpu_int4_decode=False)
    model = int4.engine.runner.model
    assert all(p.int4 is not None for layer in model.layers for p in (layer.self_attn.qkv_proj, layer.mlp.down_proj))
    assert dense.engine.runner.model.layers[0].mlp.gate_up_proj.int4 is None
    assert int4.engine.memory_report()["int4_decode_bytes"] > 0.15 * dense.engine.memory_report()["weight_bytes"]
    ids = dense.tokenizer.encode(PASSAGE * 2)[:320]
    ours, reference = (teacher_forced_logits(llm, ids, chunk=cpu_int4.MAX_ROWS) for llm in (int4, dense))
    agree, counted = top1_agreement(ours, reference, near_tie=0.25)
    print(f"int4 decode against dense bf16: top-1 {agree}/{counted} decisive positions")
    assert counted > 200 and agree / counted >= 0.97
