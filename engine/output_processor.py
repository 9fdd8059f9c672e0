"""From sampled ids to what callers see: text, stop strings, finish reasons, RequestOutputs.

Runs on the host after a step's ids are read back, while the next step already runs on the GPU.
Text is decoded only when someone needs it before the end: a streaming caller (deltas), or stop
strings (they are matched on text). Otherwise the whole output is decoded once, when it
finishes, which for a batch of long answers saves a decode call per token per sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass
class SampleState:
    """Per-sample output bookkeeping: text so far and how much of it was handed out."""

    seq: Sequence
    detok: IncrementalDetokenizer | None
    text: str = ""
    emitted: int = 0
    stop_checked: int = 0  # text before this offset holds no stop string


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    stream: bool  # the caller wants text deltas as they come
    samples: list[SampleState] = field(default_factory=list)
    num_samples: int = 1  # params.n, until an abort stops the samples not forked yet

    @property
    def finished(self) -> bool:
        return len(self.samples) == self.num_samples and all(s.seq.is_finished for s in self.samples)

    @property
    def incremental_text(self) -> bool:
        return self.stream or bool(self.params.stop)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, eos_token_ids: set[int], max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len

    def new_sample(self, request: Request, seq: Sequence) -> SampleState:
        detok = IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids) if request.incremental_text else None
        return SampleState(seq, detok)

    def append(self, request: Request, state: SampleState, token_id: int) -> str | None:
        """Record one sampled token; returns the finish reason if the sample is done."""
        seq = state.seq
        params = seq.params
        seq.append_token(token_id)
        if not params.ignore_eos and token_id in self.eos_token_ids:
            return "stop"
        if state.detok is not None:
            state.text += state.detok.add(token_id)
            if params.stop and (cut := self._find_stop(state, params.stop)) is not None:
                state.text = state.text[:cut]
                return "stop"
        if len(seq.output_token_ids) >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def finish_text(self, request: Request, state: SampleState) -> None:
        """The whole text of a sample decoded at once, for requests that did not need it before."""
        if state.detok is None:
            tail = request.prompt_token_ids[-4:]  # as the incremental detokenizer: the first token's leading space
            prefix = self.tokenizer.decode(tail)
            full = self.tokenizer.decode(tail + state.seq.output_token_ids)
            state.text = full[len(prefix):].rstrip("\ufffd") if full.startswith(prefix) else \
                self.tokenizer.decode(state.seq.output_token_ids).rstrip("\ufffd")

    @staticmethod
    def _find_stop(state: SampleState, stops: list[str]) -> int | None:
        longest = max(map(len, stops))
        offset = max(0, state.stop_checked - longest + 1)
        window = state.text[offset:]
        hits = [i for i in (window.find(s) for s in stops) if i >= 0]
        state.stop_checked = len(state.text)
        return offset + min(hits) if hits else None

    def output(self, request: Request) -> RequestOutput:
        outs = []
        for state in request.samples:
            seq = state.seq
            if seq.is_finished:
                self.finish_text(request, state)
            # Hold back what could still become a stop string until it cannot.
            hold = 0 if seq.is_finished or not seq.params.stop else max(map(len, seq.params.stop)) - 1
            end = max(state.emitted, len(state.text) - hold)
            delta = state.text[state.emitted:end]
            state.emitted = end
            outs.append(CompletionOutput(seq.sample_index, state.text[:end], list(seq.output_token_ids),
                                         seq.finish_reason, delta))
        first = request.samples[0].seq
        finished = request.finished
        metrics = RequestMetrics(
            num_prompt_tokens=first.num_prompt_tokens,
            num_cached_tokens=first.num_cached_tokens,
            num_generated_tokens=sum(len(s.seq.output_token_ids) for s in request.samples),
            arrival_time=first.arrival_time,
            first_token_time=first.first_token_time,
            finish_time=max((s.seq.finish_time or 0.0) for s in request.samples) if finished else None,
            num_preemptions=sum(s.seq.num_preemptions for s in request.samples),
            num_ram_cached_tokens=first.num_ram_cached_tokens,
            num_disk_cached_tokens=first.num_disk_cached_tokens,
        )
        return RequestOutput(request.request_id, request.prompt_token_ids, outs, finished, metrics)
