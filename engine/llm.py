"""The offline API, modelled on vLLM's: LLM(...).generate / .chat / .stats."""
from __future__ import annotations

from collections.abc import Sequence as Seq
from os import PathLike

from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams


class LLM:
    """Runs batches to completion in the calling thread. `model` is None for the bundled
    SmolLM2, a Hugging Face folder, or a .gguf file; `tokenizer` a folder, for a GGUF file that
    carries no vocabulary; `config` goes to `EngineConfig` (quantization="int8", gpu_memory_limit=
    "8GiB", kv_cache_dtype="fp8", ...)."""

    def __init__(self, model: str | PathLike | None = None, tokenizer: str | PathLike | None = None, **config) -> None:
        self.engine = LLMEngine(model, tokenizer, **config)
        self.tokenizer = self.engine.tokenizer

    def generate(self, prompts: Seq[str] | Seq[list[int]], params: SamplingParams | Seq[SamplingParams] | None = None) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids) together; outputs in prompt order."""
        token_lists = [p if not isinstance(p, str) else self.tokenizer.encode(p) for p in prompts]
        return self._run(token_lists, params)

    def chat(self, conversations: Seq[list[dict]], params: SamplingParams | Seq[SamplingParams] | None = None) -> list[RequestOutput]:
        """Each conversation is a list of {"role", "content"} messages; the model's template applies."""
        return self._run([self.tokenizer.apply_chat_template(list(c)) for c in conversations], params)

    def stats(self) -> dict[str, float]:
        return self.engine.stats()

    def close(self, timeout: float | None = None) -> None:
        """Wait for KV blocks on their way to disk (see EngineConfig.disk_kv_cache)."""
        self.engine.close(timeout)

    def _run(self, token_lists: list[list[int]], params) -> list[RequestOutput]:
        params = params if params is not None else SamplingParams()
        per_prompt = [params] * len(token_lists) if isinstance(params, SamplingParams) else list(params)
        if len(per_prompt) != len(token_lists):
            raise ValueError(f"{len(per_prompt)} sampling params for {len(token_lists)} prompts")
        for ids in token_lists:  # check them all before queueing any
            self.engine.validate(ids)
        ids = [self.engine.add_request(t, p) for t, p in zip(token_lists, per_prompt)]
        done: dict[str, RequestOutput] = {}
        try:
            while len(done) < len(ids):
                for out in self.engine.step():
                    if out.finished:
                        done[out.request_id] = out
        finally:
            for rid in ids:  # an exception mid-run must not leave blocks allocated
                if rid not in done:
                    self.engine.abort_request(rid)
        return [done[r] for r in ids]
