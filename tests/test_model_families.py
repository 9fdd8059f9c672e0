"""Tiny random-weight models of each supported family, saved as safetensors, loaded through our
loader, and decoded greedily token for token against transformers."""
import pytest
import torch

from conftest import hf_greedy
from engine import LLM, SamplingParams

FAMILIES = {
    "llama": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "llama-rope3": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 64}),
    "mistral": dict(sliding_window=None),
    "qwen2": dict(),
    "qwen3": dict(head_dim=32),
}


def tiny_model(family: str, folder, bundled_folder):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    model_type = family.removesuffix("-rope3")
    cfg = AutoConfig.for_model(
        model_type, vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=0.5,  # decisive logits: near-ties would make the comparison about rounding
        tie_word_embeddings=model_type == "qwen3", **FAMILIES[family])
    torch.manual_seed(hash(family) % 1000)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(bundled_folder)).save_pretrained(folder)
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_family_matches_transformers(family, tmp_path, bundled_folder):
    hf = tiny_model(family, tmp_path, bundled_folder)
    if family == "qwen2":
        assert hf.model.layers[0].self_attn.q_proj.bias is not None
    if family == "qwen3":
        assert hasattr(hf.model.layers[0].self_attn, "q_norm")
    prompts = [[5, 17, 300], list(range(1000, 1040)), list(range(2000, 2150))]
    ref = [hf_greedy(hf, p, 16) for p in prompts]
    llm = LLM(tmp_path, num_kv_blocks=64, max_num_batched_tokens=64)
    outs = llm.generate(prompts, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))
    assert [o.token_ids for o in outs] == ref
