"""Folio's inference engine: paged KV cache, prefix sharing, continuous batching."""
from engine.config import EngineConfig
from engine.engine_thread import EngineThread, RequestHandle
from engine.llm import LLM
from engine.loader import ModelLoadError
from engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from engine.sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "EngineConfig", "EngineThread", "ModelLoadError", "RequestHandle",
           "RequestMetrics", "RequestOutput", "SamplingParams"]
