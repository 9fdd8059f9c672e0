"""What the engine hands back: per-request outputs with text deltas and metrics."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestMetrics:
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served from cached KV blocks (device, RAM or disk), not computed
    num_generated_tokens: int
    arrival_time: float
    first_token_time: float | None
    finish_time: float | None
    num_preemptions: int = 0
    num_ram_cached_tokens: int = 0  # of num_cached_tokens: loaded from host RAM
    num_disk_cached_tokens: int = 0  # of num_cached_tokens: read from disk

    @property
    def num_device_cached_tokens(self) -> int:
        """Prompt tokens whose KV blocks were on the device already (shared or cached)."""
        return self.num_cached_tokens - self.num_ram_cached_tokens - self.num_disk_cached_tokens

    @property
    def num_computed_prompt_tokens(self) -> int:
        return self.num_prompt_tokens - self.num_cached_tokens

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Generation speed after the first token, as a user watching the stream sees it."""
        if self.finish_time is None or self.first_token_time is None or self.num_generated_tokens < 2:
            return None
        span = self.finish_time - self.first_token_time
        return (self.num_generated_tokens - 1) / span if span > 0 else None


@dataclass
class CompletionOutput:
    """One of the n samples. `delta` is the text added since the previous update."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    delta: str = ""


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    # Set when this request failed on its own (its other samples are aborted with it); the
    # requests it was batched with are unaffected.
    error: Exception | None = None

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason
