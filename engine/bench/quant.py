"""Issue 13's figures for a quantized model: weight memory against the file, the context a memory
limit holds, and top-1 agreement of the packed kernels with the same weights dequantized."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.bench.quality import teacher_forced_logits, top1_agreement
from engine.gguf_file import open_reader
from engine.llm import LLM


@dataclass
class WeightMemory:
    file_tensor_bytes: int  # what the GGUF's tensors take in the file
    held_bytes: int  # what the engine holds for them
    formats: dict[str, int]
    context_tokens: int
    kv_dtype: str
    gpu_memory_limit: int | None

    @property
    def ratio(self) -> float:
        return self.held_bytes / self.file_tensor_bytes


def gguf_tensor_bytes(path: str | Path) -> int:
    return sum(int(t.n_bytes) for t in open_reader(Path(path)).tensors)


def weight_memory(llm: LLM) -> WeightMemory:
    report = llm.engine.memory_report()
    return WeightMemory(gguf_tensor_bytes(report["model"]), report["weight_bytes"], report["weight_formats"],
                        report["context_tokens"], report["kv_dtype"], report["gpu_memory_limit"])


@dataclass
class Agreement:
    agreeing: int
    counted: int
    positions: int
    near_tie: float

    @property
    def rate(self) -> float:
        return self.agreeing / max(1, self.counted)


def top1_against_dequantized(llm: LLM, engine_kwargs: dict, tokens: int = 2048, near_tie: float = 0.05) -> Agreement:
    """Teacher-forced over the same ids: `llm` (packed) against the file loaded dequantized."""
    tokens = min(tokens, llm.engine.max_model_len)
    ids = llm.tokenizer.encode(_text(tokens))[:tokens]
    ours = teacher_forced_logits(llm, ids)
    kwargs = {k: v for k, v in engine_kwargs.items() if k != "gpu_memory_limit"}
    dense = LLM(llm.engine.model_path, llm.engine.source.tokenizer_folder,
                **{**kwargs, "dequantize_weights": True, "num_kv_blocks": -(-len(ids) // 16) + 4,
                   "cuda_graphs": False})
    reference = teacher_forced_logits(dense, ids)
    del dense
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    agreeing, counted = top1_agreement(ours, reference, near_tie)
    return Agreement(agreeing, counted, len(ids), near_tie)


def _text(tokens: int) -> str:
    """Real English for a model with a real vocabulary: the project's README, repeated as needed."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    return readme * (1 + tokens * 4 // max(1, len(readme)))
