"""The engine on this machine, behind the `Backend` contract: an `EngineThread`, loaded.

Submitting, tokenizing for the answer, every step and every callback stay on the engine thread,
as `EngineThread` says. Only `count_tokens` (for budgeting a prompt on other threads) reads text
here, with a tokenizer of its own behind a lock, never the engine's.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from app.backends.protocol import PromptInput
from engine import EngineThread, RequestHandle, RequestOutput, SamplingParams
from engine.tokenizer import Tokenizer


class LocalBackend:
    remote = False

    def __init__(self, engine_thread: EngineThread) -> None:
        """Wait for `engine_thread` to load (its load error is raised here)."""
        engine = engine_thread.wait_ready()
        self.engine_thread = engine_thread
        self.model_path: Path = engine.model_path
        self.device: str = engine.config.device
        self.max_model_len: int = engine.max_model_len
        self._tokenizer = Tokenizer(engine.source.tokenizer_folder)
        self._tokenizer_lock = threading.Lock()
        # read once, while the engine thread idles: every number in it is fixed at load
        self._model_info = {**engine.memory_report(), "quantization": engine.config.quantization}

    def submit(self, prompt: PromptInput, params: SamplingParams | None = None, *,
               on_delta: Callable[[str], None] | None = None,
               on_finish: Callable[[RequestOutput], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None) -> RequestHandle:
        return self.engine_thread.submit(prompt, params, on_delta=on_delta, on_finish=on_finish, on_error=on_error)

    def stats(self) -> dict[str, float]:
        return self.engine_thread.stats()

    def shutdown(self, timeout: float | None = None) -> None:
        self.engine_thread.shutdown(timeout)

    @property
    def model_name(self) -> str:
        """A GGUF file's stem or a folder's name: what the user opened."""
        return self.model_path.stem if self.model_path.is_file() else self.model_path.name

    def describe(self) -> str:
        return f"{self.model_name} on {self.device}"

    def count_tokens(self, prompt: PromptInput) -> int:
        with self._tokenizer_lock:
            return len(self._tokenizer.prompt_ids(prompt))

    def model_info(self) -> dict:
        info = dict(self._model_info)
        info["weight_formats"] = dict(info["weight_formats"])
        return info
