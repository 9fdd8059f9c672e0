"""What every backend offers, local or remote: the contract the CLI, the server and the GUI rely on.

A backend is ready when it is handed out (`open_backend` waits for the model, or asks the server
which model to use). Its callbacks run on the backend's own thread (the engine thread, or a
request's HTTP thread): they must be quick and must not touch GUI objects.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from engine import RequestOutput, SamplingParams

# What a backend answers: text, token ids, or chat messages ({"role", "content"} dicts).
PromptInput = str | list[int] | list[dict]


class AnswerHandle(Protocol):
    """One answer being generated: iterate for text deltas, `result()` for the whole output."""

    request_id: str

    @property
    def done(self) -> bool: ...

    def cancel(self) -> None:
        """Stop; the handle then finishes with reason "abort" and the text so far."""

    def result(self, timeout: float | None = None) -> RequestOutput: ...

    def __iter__(self) -> Iterator[str]: ...


class Backend(Protocol):
    """Who answers. `remote` says whether it runs on another machine, whose KV memory Folio cannot
    see: its `stats()` are then the last answer's token counts instead of the KV picture."""

    remote: bool
    max_model_len: int  # the longest prompt plus answer, in tokens (a remote one's is assumed)

    def submit(self, prompt: PromptInput, params: SamplingParams | None = None, *,
               on_delta: Callable[[str], None] | None = None,
               on_finish: Callable[[RequestOutput], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None) -> AnswerHandle:
        """Start an answer at once; never blocks. Errors reach the handle and `on_error`."""

    def stats(self) -> dict[str, float]:
        """The latest numbers, without waiting (the engine's KV and scheduler stats)."""

    def shutdown(self, timeout: float | None = None) -> None:
        """Cancel what runs and let go of the model or the connection. A local engine waits for
        its step in flight (None: as long as it takes, since exiting while it runs aborts the
        process); a remote one waits at most 10 s for answers a server may never end."""

    def describe(self) -> str:
        """"SmolLM2-135M-Instruct on cpu", "llama-3 at http://gpu-box:8000/v1"."""

    def count_tokens(self, prompt: PromptInput) -> int:
        """The prompt's length in the model's tokens (estimated for a remote model); thread-safe."""

    def model_info(self) -> dict:
        """What the model holds where, without waiting: for the local engine its
        `LLMEngine.memory_report()` (weights by storage format, KV dtype and bytes per token, tokens
        of context, the GPU memory limit), read once when it became ready, plus `quantization`
        (the quantize-at-load choice, or None). {} for a remote model: its memory is the server's."""
