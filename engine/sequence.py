"""State of one sequence (a request, or one of its n samples) as it moves through the engine."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

from engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """Token ids plus where the engine is with them.

    `num_computed_tokens` counts tokens whose KV is in the cache or being written by a step
    already launched; the tokens after it are what the next step must run. A token sampled by a
    launched step but not yet read back by the host is *pending* (`num_pending`): it exists on
    the device (the next step can use it) but not in `output_token_ids` yet. `block_table` lists
    the sequence's KV blocks in order; `row` is its slot in the runner's persistent batch while
    it runs. `block_keys` are the prefix-cache keys of its full known blocks, computed once each.
    """

    seq_id: int
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    sample_index: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens not computed, from any tier; of them:
    num_ram_cached_tokens: int = 0  # loaded from host RAM
    num_disk_cached_tokens: int = 0  # read from disk
    num_pending: int = 0
    block_table: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_time: float | None = None
    num_preemptions: int = 0
    row: int | None = None
    row_has_token: bool = False  # the sampler has written this sequence's newest token into its row
    table_version: int = 0  # bumped when a block_table entry is replaced (copy-on-write), not appended
    block_keys: list[int] = field(default_factory=list)
    hash_state: int | None = None  # the key chain after block_keys[-1]
    prompt_array: np.ndarray | None = field(default=None, repr=False)  # the prompt as int64, made once

    def __post_init__(self) -> None:
        if self.prompt_array is None:
            self.prompt_array = np.asarray(self.prompt_token_ids, dtype=np.int64)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        """Tokens the host knows: the prompt and the outputs read back so far."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_total_tokens(self) -> int:
        return self.num_tokens + self.num_pending

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_generated(self) -> int:
        """Outputs, pending ones included."""
        return len(self.output_token_ids) + self.num_pending

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def in_prefill(self) -> bool:
        """True while the tokens to compute are more than the one just sampled."""
        return self.num_total_tokens - self.num_computed_tokens > 1

    def tokens_between(self, start: int, end: int) -> np.ndarray:
        """Known token ids [start, end) as an array."""
        p = len(self.prompt_token_ids)
        if end <= p:
            return self.prompt_array[start:end]
        return np.asarray(self.token_ids[start:end], dtype=np.int64)

    def token_at(self, position: int) -> int:
        p = len(self.prompt_token_ids)
        return self.prompt_token_ids[position] if position < p else self.output_token_ids[position - p]

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
