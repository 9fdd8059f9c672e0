"""Random-weight models in the shapes of real ones, for benchmarks and GPU tests whose weights
cannot ship: ordinary Hugging Face folders (config, a byte-level tokenizer, safetensors from
transformers' own initialisation), so our loader and transformers read the very same weights;
and GGUF files of random quantized blocks in any mix of types (`write_gguf`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SHAPES: dict[str, dict] = {
    "llama-1b": dict(  # Llama-3.2-1B
        model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "qwen2.5-0.5b": dict(  # Qwen2.5-0.5B
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
}


def byte_tokenizer():
    """A byte-level BPE with no merges: any text encodes, and nothing needs to be downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def make_dummy_model(shape: str, folder: Path, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """Write a random-weight model of `shape` into `folder` (reused if already there)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return folder
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config.eos_token_id = 256  # the byte tokenizer's only special token
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder, safe_serialization=True)
    byte_tokenizer().save_pretrained(folder)
    return folder


GGUF_SHAPES: dict[str, dict] = {  # the GGUF metadata of random-weight models (Llama architecture)
    "llama-1b": dict(hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8, vocab=128256, context=8192,
                     tied=True, rope_base=500000.0),
    "llama-8b": dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256, context=8192,
                     tied=False, rope_base=500000.0),
    "tiny": dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=49152, context=1024,
                 tied=False, rope_base=10000.0),
}
# Scales that keep random quant blocks' weights around a few hundredths, by type.
_SCALE = {"Q4_0": 0.01, "Q4_1": 0.006, "Q5_0": 0.005, "Q5_1": 0.003, "Q8_0": 0.0005, "Q4_K": 0.0003,
          "Q5_K": 0.00015, "Q6_K": 0.00004}


def q4_k_m_types(layer: int, role: str, tied: bool) -> str:
    """llama.cpp's Q4_K_M mix, roughly: Q4_K, with v and down in Q6_K in every other layer, and the
    output (or a tied embedding) in Q6_K."""
    if role == "embed":
        return "Q6_K" if tied else "Q4_K"
    if role == "output":
        return "Q6_K"
    return "Q6_K" if role in ("attn_v", "ffn_down") and layer % 2 == 0 else "Q4_K"


def random_quant_blocks(qtype: str, rows: int, cols: int, rng) -> np.ndarray:
    """A GGUF tensor of random blocks: random quant bytes, random small fp16 scales."""
    from kernels.quant import GGUF_BLOCK
    per, size = GGUF_BLOCK[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // per, size), dtype=np.uint8)

    def put(offset: int, count: int = 1) -> None:
        values = (np.abs(rng.standard_normal((rows, cols // per, count))) * _SCALE[qtype]).astype(np.float16)
        raw[:, :, offset:offset + 2 * count] = values.view(np.uint8)
    if qtype in ("Q4_0", "Q5_0", "Q8_0"):
        put(0)
    elif qtype in ("Q4_1", "Q5_1", "Q4_K", "Q5_K"):
        put(0, 2)  # d and the minimum (dmin for the K types)
        if qtype in ("Q4_1", "Q5_1"):  # a negative minimum centres the weights
            raw[:, :, 2:4] = (-(raw[:, :, 0:2].view(np.float16).astype(np.float32)) * 8).astype(np.float16).view(np.uint8)
    elif qtype == "Q6_K":
        put(208)
    return raw.reshape(rows, -1)


def write_gguf(path: Path, shape: str, types=q4_k_m_types, seed: int = 0) -> Path:
    """A random-weight GGUF of `shape` with no vocabulary (use a tokenizer folder beside it), its
    projections typed by `types(layer, role, tied)`: a qtype name, or "F16"."""
    import gguf
    s = GGUF_SHAPES[shape]
    rng = np.random.default_rng(seed)
    head_dim = s["hidden"] // s["heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(s["context"]), w.add_embedding_length(s["hidden"]), w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["intermediate"]), w.add_head_count(s["heads"]), w.add_head_count_kv(s["kv_heads"])
    w.add_layer_norm_rms_eps(1e-5), w.add_rope_freq_base(s["rope_base"]), w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(s["vocab"]), w.add_tokenizer_model("none"), w.add_file_type(15)

    def tensor(name: str, rows: int, cols: int, qtype: str) -> None:
        if qtype == "F16":
            w.add_tensor(name, (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16))
        else:
            w.add_tensor(name, random_quant_blocks(qtype, rows, cols, rng), raw_dtype=gguf.GGMLQuantizationType[qtype])

    tensor("token_embd.weight", s["vocab"], s["hidden"], types(-1, "embed", s["tied"]))
    if not s["tied"]:
        tensor("output.weight", s["vocab"], s["hidden"], types(-1, "output", s["tied"]))
    w.add_tensor("output_norm.weight", np.ones(s["hidden"], np.float32))
    q, kv, hid, inter = s["heads"] * head_dim, s["kv_heads"] * head_dim, s["hidden"], s["intermediate"]
    for i in range(s["layers"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(hid, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(hid, np.float32))
        for role, rows, cols in (("attn_q", q, hid), ("attn_k", kv, hid), ("attn_v", kv, hid),
                                 ("attn_output", hid, q), ("ffn_gate", inter, hid), ("ffn_up", inter, hid),
                                 ("ffn_down", hid, inter)):
            tensor(p + role + ".weight", rows, cols, types(i, role, s["tied"]))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path
