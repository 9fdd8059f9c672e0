"""The engine loop: requests in, one scheduled step at a time, outputs with text deltas out."""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from os import PathLike

import torch

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.errors import RequestError
from engine.loader import ModelLoadError, read_config, resolve_model
from engine.model_runner import ModelRunner
from engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from engine.sampler import SamplingRow
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence, SequenceStatus
from engine.tokenizer import IncrementalDetokenizer, Tokenizer

log = logging.getLogger(__name__)


@dataclass
class SampleState:
    """Per-sample output bookkeeping: streamed text and what has been handed out."""

    seq: Sequence
    detok: IncrementalDetokenizer
    generator: torch.Generator | None
    text: str = ""
    emitted: int = 0


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    samples: list[SampleState] = field(default_factory=list)
    num_samples: int = 1  # params.n, until an abort stops the samples not forked yet

    @property
    def finished(self) -> bool:
        return len(self.samples) == self.num_samples and all(s.seq.is_finished for s in self.samples)


class LLMEngine:
    def __init__(self, model: str | PathLike | None = None, **config) -> None:
        self.config = EngineConfig(**config)
        folder = resolve_model(model)
        self.model_path = folder
        self.model_config = read_config(folder)
        try:
            self.tokenizer = Tokenizer(folder)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load the tokenizer of {folder}: {e}") from e
        limit = min(self.config.max_model_len or self.model_config.max_position_embeddings,
                    self.model_config.max_position_embeddings)
        self.runner = ModelRunner(self.config, self.model_config, folder, limit)
        bs = self.config.block_size
        self.max_model_len = min(limit, self.runner.num_blocks * bs)
        self.block_manager = BlockManager(self.runner.num_blocks, bs, self.config.enable_prefix_caching)
        self.scheduler = Scheduler(self.config, self.block_manager)
        eos = set(self.model_config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = eos
        self.requests: dict[str, Request] = {}
        self._seq_ids = itertools.count()
        self._request_ids = itertools.count()

    # ------------------------------------------------------------------ requests

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str | None = None) -> str:
        """Queue a request; raise RequestError (allocating nothing) if it cannot run."""
        self.validate(prompt_token_ids)
        if params.n > self.config.max_num_seqs:
            raise RequestError(f"n={params.n} samples exceed max_num_seqs={self.config.max_num_seqs}", "n")
        request_id = request_id if request_id is not None else f"req-{next(self._request_ids)}"
        if request_id in self.requests:
            raise RequestError(f"request id {request_id!r} is already in use")
        request = Request(request_id, list(prompt_token_ids), params, num_samples=params.n)
        request.samples.append(self._new_sample(request, 0))
        self.requests[request_id] = request
        self.scheduler.add(request.samples[0].seq)
        return request_id

    def validate(self, prompt_token_ids: list[int]) -> None:
        n = len(prompt_token_ids)
        if n == 0:
            raise RequestError("the prompt is empty", "prompt")
        if n >= self.max_model_len:
            raise RequestError(
                f"the prompt is {n} tokens long but the context holds {self.max_model_len} "
                f"(at least one token must be left to generate)", "prompt")
        vocab = self.model_config.vocab_size
        bad = [t for t in prompt_token_ids if not 0 <= t < vocab]
        if bad:
            raise RequestError(f"token ids outside the vocabulary (size {vocab}): {bad[:5]}", "prompt")

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request wherever it is; its blocks go back to the pool at once. Returns its
        final output (finish reason "abort", with the text so far), or None if it was done."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        request.num_samples = len(request.samples)  # samples not forked yet never will be
        for s in request.samples:
            if not s.seq.is_finished:
                s.seq.finish_time = time.perf_counter()
                self.scheduler.finish(s.seq, "abort")
        return self._output(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def _new_sample(self, request: Request, index: int) -> SampleState:
        params = request.params
        seq = Sequence(next(self._seq_ids), request.request_id, request.prompt_token_ids, params, sample_index=index)
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.runner.device).manual_seed(params.seed + index)
        return SampleState(seq, IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids), generator)

    # ------------------------------------------------------------------ the step

    def step(self) -> list[RequestOutput]:
        """Schedule, run and sample once. Returns an output for each request that changed."""
        batch = self.scheduler.schedule()
        if not batch:
            return []
        logits, ready = self.runner.execute(batch)
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            self.block_manager.commit(seq)

        samples: list[SampleState] = []
        rows: list[int] = []
        for row, seq in enumerate(ready):
            request = self.requests[seq.request_id]
            state = request.samples[seq.sample_index]
            samples.append(state)
            rows.append(row)
            if len(request.samples) < request.num_samples:  # the prompt is in: fork the other samples
                for child in self._fork(request, seq):
                    samples.append(child)
                    rows.append(row)
        sampling_rows = [SamplingRow(s.seq.params, s.seq.token_ids, s.generator) for s in samples]
        token_ids = self.runner.sample(logits[rows], sampling_rows) if samples else []

        changed: dict[str, Request] = {}
        failed: dict[str, Exception] = {}
        for state, token_id in zip(samples, token_ids):
            request_id = state.seq.request_id
            if request_id in failed:
                continue
            try:
                self._append(state, token_id)
            except Exception as e:  # this request's own failure (its text, its stop strings): it alone ends
                log.exception("request %s failed while its output was processed", request_id)
                failed[request_id] = e
            changed[request_id] = self.requests[request_id]
        outputs = []
        for request_id, request in changed.items():
            if request_id in failed:
                out = self.abort_request(request_id)
                out.error = failed[request_id]
                outputs.append(out)
            else:
                outputs.append(self._output(request))
        return outputs

    def _fork(self, request: Request, parent: Sequence) -> list[SampleState]:
        children = []
        for index in range(1, request.num_samples):
            state = self._new_sample(request, index)
            child = state.seq
            self.block_manager.fork(parent, child)
            child.num_cached_tokens = parent.num_cached_tokens
            child.status = SequenceStatus.RUNNING
            self.scheduler.running.append(child)
            request.samples.append(state)
            children.append(state)
        return children

    def _append(self, state: SampleState, token_id: int) -> None:
        seq = state.seq
        params = seq.params
        seq.append_token(token_id)
        reason = None
        if not params.ignore_eos and token_id in self.eos_token_ids:
            reason = "stop"
        else:
            state.text += state.detok.add(token_id)
            if params.stop and (cut := self._find_stop(state, params.stop)) is not None:
                state.text = state.text[:cut]
                reason = "stop"
            elif len(seq.output_token_ids) >= params.max_tokens or seq.num_tokens >= self.max_model_len:
                reason = "length"
        if reason is not None:
            seq.finish_time = time.perf_counter()
            self.scheduler.finish(seq, reason)

    @staticmethod
    def _find_stop(state: SampleState, stops: list[str]) -> int | None:
        window = state.text[max(0, state.emitted - max(map(len, stops))):]
        offset = len(state.text) - len(window)
        hits = [i for i in (window.find(s) for s in stops) if i >= 0]
        return offset + min(hits) if hits else None

    def _output(self, request: Request) -> RequestOutput:
        outs = []
        for state in request.samples:
            seq = state.seq
            # Hold back what could still become a stop string until it cannot.
            hold = 0 if seq.is_finished or not seq.params.stop else max(map(len, seq.params.stop)) - 1
            end = max(state.emitted, len(state.text) - hold)
            delta = state.text[state.emitted:end]
            state.emitted = end
            outs.append(CompletionOutput(seq.sample_index, state.text[:end], list(seq.output_token_ids),
                                         seq.finish_reason, delta))
        first = request.samples[0].seq
        metrics = RequestMetrics(
            num_prompt_tokens=first.num_prompt_tokens,
            num_cached_tokens=first.num_cached_tokens,
            num_generated_tokens=sum(len(s.seq.output_token_ids) for s in request.samples),
            arrival_time=first.arrival_time,
            first_token_time=first.first_token_time,
            finish_time=max((s.seq.finish_time or 0.0) for s in request.samples) if request.finished else None,
            num_preemptions=sum(s.seq.num_preemptions for s in request.samples),
        )
        finished = request.finished
        if finished:
            del self.requests[request.request_id]
        return RequestOutput(request.request_id, request.prompt_token_ids, outs, finished, metrics)

    def stats(self) -> dict[str, float]:
        s = self.block_manager.stats()
        s.update(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_preemptions=self.scheduler.num_preemptions,
            max_model_len=self.max_model_len,
        )
        return s
