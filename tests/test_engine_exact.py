"""Token-exact greedy decoding against transformers `generate` on the bundled SmolLM2."""
import pytest
import torch

from conftest import chat_prompts, hf_greedy
from engine import LLM, SamplingParams
from engine.llm_engine import LLMEngine

NEW_TOKENS = 32


@pytest.fixture(scope="module")
def prompts(bundled_folder):
    from engine.tokenizer import Tokenizer
    return chat_prompts(Tokenizer(bundled_folder))


@pytest.fixture(scope="module")
def reference(hf_model, prompts):
    return [hf_greedy(hf_model, p, NEW_TOKENS) for p in prompts]


def greedy(n=NEW_TOKENS):
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def test_prompt_lengths_span_the_issue_range(prompts):
    lengths = sorted(len(p) for p in prompts)
    assert len(prompts) >= 6 and lengths[0] <= 5 and lengths[-1] >= 600


@pytest.mark.usefixtures("both_schedulers")
def test_submitted_together_matches_transformers(prompts, reference):
    llm = LLM(num_kv_blocks=512, max_num_batched_tokens=512)
    outs = llm.generate(prompts, greedy())
    for out, ref in zip(outs, reference):
        assert out.token_ids == ref
        assert out.finish_reason == "length"
    assert llm.stats()["blocks_used"] == 0


@pytest.mark.usefixtures("both_schedulers")
def test_staggered_arrivals_match_transformers(prompts, reference):
    """Requests join a running batch at different steps, mixing decode and chunked prefill."""
    engine = LLMEngine(num_kv_blocks=512, max_num_batched_tokens=256)
    pending = list(enumerate(prompts))
    ids: dict[str, int] = {}
    done = {}
    step = 0
    while pending or engine.has_unfinished_requests():
        if pending and step % 3 == 0:
            i, p = pending.pop()  # longest first, so short ones arrive while it prefills in chunks
            ids[engine.add_request(p, greedy())] = i
        for out in engine.step():
            if out.finished:
                done[ids[out.request_id]] = out.token_ids
        step += 1
    assert [done[i] for i in range(len(prompts))] == reference
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_cpu_bf16_chooses_and_answers():
    """bf16 on the CPU (where it is fast, engine.cpu_dtype picks it): the same answer."""
    llm = LLM(num_kv_blocks=64, dtype=torch.bfloat16)
    assert llm.engine.runner.model.layers[0].mlp.gate_up_proj.weight.dtype == torch.bfloat16
    out = llm.chat([[{"role": "user", "content": "What is the capital of France?"}]],
                   SamplingParams(max_tokens=16, temperature=0))[0]
    assert "Paris" in out.text


def test_bundled_model_answers_sensibly():
    """An independent check of the GGUF conversion: a wrong Q/K permutation gives garbage that
    transformers, loading the same converted folder, would reproduce token for token."""
    llm = LLM(num_kv_blocks=64)
    out = llm.chat([[{"role": "user", "content": "What is the capital of France?"}]],
                   SamplingParams(max_tokens=16, temperature=0))[0]
    assert "Paris" in out.text


def test_gguf_weights_equal_transformers_gguf_loader():
    """Our packed weights, dequantized, are the very tensors transformers reads from the file."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from engine.gguf_file import iter_tensors, open_reader
    from engine.loader import bundled_model_path
    from kernels.quant import QuantWeight, dequantize
    path = bundled_model_path()
    cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(cfg)
    theirs = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
    ours = {name: dequantize(v) if isinstance(v, QuantWeight) else v
            for name, v in iter_tensors(open_reader(path), cfg.num_attention_heads, cfg.num_key_value_heads)}
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, torch.as_tensor(theirs[name]).float()), name


def test_bundled_model_stays_quantized_and_answers():
    """Packed on the CPU too (dequantized per step): a fraction of the memory, the same answer."""
    packed = LLM(num_kv_blocks=64, dequantize_weights=False, dtype=torch.float32)
    dense = LLM(num_kv_blocks=64, dequantize_weights=True, dtype=torch.float32)
    model = packed.engine.runner.model
    assert model.layers[0].mlp.gate_up_proj.quantized and model.embed_tokens.quant is not None
    assert model.weight_bytes() < 0.25 * dense.engine.runner.model.weight_bytes()
    chat = [[{"role": "user", "content": "What is the capital of France?"}]]
    params = SamplingParams(max_tokens=16, temperature=0)
    out = packed.chat(chat, params)[0]
    assert "Paris" in out.text and out.token_ids == dense.chat(chat, params)[0].token_ids
