"""GGUF files: their tensors, kept quantized, and their config and tokenizer.

Quantized tensors of the types the kernels read (kernels.quant.PACKED_TYPES) are repacked
losslessly and stay quantized; other quantized types (IQ*, Q2_K, Q3_K, ...) are dequantized with
gguf's own code, and the loader says so once. llama.cpp stores Llama's q and k projections with
the two RoPE halves of each head interleaved: their rows are permuted back, packed or not.

The config and the tokenizer come from transformers' GGUF readers and are cached as a small
Hugging Face folder (config.json and tokenizer files, no weights) under the user cache dir,
written atomically: a conversion killed half-way leaves only a `.converting-*` folder, which the
next start removes. A GGUF without a vocabulary (as llama.cpp's benches write) needs a tokenizer
folder given separately.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from engine.errors import ModelLoadError
from engine.file_lock import ExclusiveLock
from kernels.quant import PACKED_TYPES, QuantWeight, from_gguf

log = logging.getLogger(__name__)

METADATA_VERSION = 2  # bump when what is cached changes
CONVERTING_PREFIX = ".converting-"

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
_IGNORED = {"rope_freqs.weight"}  # llama.cpp's precomputed RoPE factors: the config's scaling gives the same


def open_reader(path: Path):
    import gguf
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path} is not a readable GGUF file: {e}") from e


def architecture(reader) -> str:
    field = reader.fields.get("general.architecture")
    if field is None:
        raise ModelLoadError("the GGUF file names no architecture (general.architecture)")
    return bytes(field.parts[-1]).decode()


def tensor_names(reader) -> set[str]:
    return {t.name for t in reader.tensors}


def iter_tensors(reader, num_heads: int, num_kv_heads: int) -> Iterator[tuple[str, torch.Tensor | QuantWeight]]:
    """(Hugging Face name, dense fp32 tensor or packed QuantWeight) for every tensor of the file."""
    import gguf
    arch = architecture(reader)
    unpacked: set[str] = set()
    for t in reader.tensors:
        if t.name in _IGNORED:
            continue
        name = hf_name(t.name)
        qtype = t.tensor_type.name
        if qtype in PACKED_TYPES:
            value: torch.Tensor | QuantWeight = from_gguf(t.data, qtype, int(t.shape[0]))
        else:
            if qtype not in ("F32", "F16", "BF16") and qtype not in unpacked:
                unpacked.add(qtype)
                log.warning("GGUF tensors of type %s are dequantized at load: the kernels read %s",
                            qtype, ", ".join(PACKED_TYPES))
            try:
                data = gguf.dequantize(t.data, t.tensor_type)
            except NotImplementedError as e:
                raise ModelLoadError(f"GGUF tensor {t.name} has type {qtype}, which Folio cannot read") from e
            value = torch.from_numpy(np.array(data, dtype=np.float32))  # a copy: the file is mapped read-only
        if arch == "llama" and ".q_proj." in name:
            value = unpermute(value, num_heads)
        elif arch == "llama" and ".k_proj." in name:
            value = unpermute(value, num_kv_heads)
        yield name, value


def unpermute(w: torch.Tensor | QuantWeight, num_heads: int) -> torch.Tensor | QuantWeight:
    """Undo llama.cpp's Q/K row permutation (it interleaves the two RoPE halves of each head)."""
    rows = w.shape[0]
    order = torch.arange(rows).reshape(num_heads, rows // num_heads // 2, 2).transpose(1, 2).reshape(-1)
    if isinstance(w, QuantWeight):
        return w.index_rows(order)
    return w.index_select(0, order)


def hf_name(name: str) -> str:
    if name in _GGUF_NAMES:
        return _GGUF_NAMES[name]
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _GGUF_LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise ModelLoadError(f"unknown GGUF tensor {name!r}")


# ----------------------------------------------------------------------------- config and tokenizer

def metadata_dir(path: Path, cache: Path) -> Path:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{METADATA_VERSION}"
    return cache / "models" / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def cached_metadata(path: Path, cache: Path, tokenizer: Path | None) -> Path:
    """The folder with this file's config.json and tokenizer, made on first use."""
    out = metadata_dir(path, cache)
    if (out / "config.json").is_file() and (tokenizer is not None or (out / "tokenizer_config.json").is_file()):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_conversions(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=CONVERTING_PREFIX, dir=out.parent))
    lock = ExclusiveLock(tmp / ".lock")  # held while converting: cleaners leave this folder alone
    lock.try_acquire()
    try:
        write_metadata(path, tmp, tokenizer)
        shutil.rmtree(out, ignore_errors=True)
        if os.name == "nt":  # Windows renames no folder with an open file in it
            lock.release()
        tmp.rename(out)  # atomic: a crash mid-conversion leaves no half folder under the real name
    finally:
        lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_metadata(path: Path, out: Path, tokenizer: Path | None) -> None:
    from transformers import AutoConfig, AutoTokenizer
    reader = open_reader(path)
    architecture(reader)
    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        if tokenizer is None:
            AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(out)
    except Exception as e:
        raise ModelLoadError(f"cannot read the config or tokenizer of {path}: {e}") from e
    config.tie_word_embeddings = "output.weight" not in tensor_names(reader)
    config.save_pretrained(out)


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
