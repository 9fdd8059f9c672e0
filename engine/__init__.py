"""Folio's inference engine: paged KV cache, prefix sharing, continuous batching.

Names are resolved on first use (PEP 562), so `import engine` and the light ones
(`SamplingParams`, `RequestError`, `ModelLoadError`) never load torch; `LLM`, `EngineThread` and
the rest import it when first touched.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "CompletionOutput": "engine.outputs",
    "EngineConfig": "engine.config",
    "EngineThread": "engine.engine_thread",
    "LLM": "engine.llm",
    "ModelLoadError": "engine.errors",
    "RequestError": "engine.errors",
    "RequestHandle": "engine.engine_thread",
    "RequestMetrics": "engine.outputs",
    "RequestOutput": "engine.outputs",
    "SamplingParams": "engine.sampling_params",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from engine.config import EngineConfig
    from engine.engine_thread import EngineThread, RequestHandle
    from engine.errors import ModelLoadError, RequestError
    from engine.llm import LLM
    from engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
    from engine.sampling_params import SamplingParams


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
