"""The engine loop: requests in, one scheduled step at a time, outputs with text deltas out.

A step is schedule -> launch -> (read back, postprocess). With asynchronous scheduling (the
default on a GPU) the read-back and postprocessing of step N happen after step N+1 is launched,
so the host's work (detokenizing, stop strings, outputs, the next schedule) overlaps the GPU's:
step N+1's decode inputs are step N's sampled ids, which never leave the device first. The cost
is that a sequence stopped by EOS or a stop string in step N is computed once more in step N+1;
that token is dropped, never emitted.
"""
from __future__ import annotations

import itertools
import logging
import time
from os import PathLike

import numpy as np

from engine import kv_scales
from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.errors import ModelLoadError, RequestError
from engine.kv_tiers.fingerprint import model_fingerprint, model_key
from engine.kv_tiers.tiers import KVTiers, build_tiers
from engine.loader import read_config, resolve_model
from engine.model.config import ModelConfig
from engine.model_runner import InFlightStep, ModelRunner
from engine.output_processor import OutputProcessor, Request, SampleState
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledBatch, Scheduler
from engine.sequence import Sequence, SequenceStatus
from engine.step_inputs import Sample
from engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)
READ_WAIT_S = 0.02  # a step with nothing to run waits this long at most for a disk read (then returns)


class LLMEngine:
    def __init__(self, model: str | PathLike | None = None, tokenizer: str | PathLike | None = None,
                 **config) -> None:
        cfg = EngineConfig(**config)
        if cfg.quantization is not None and (model is None or str(model).lower().endswith(".gguf")):
            raise ModelLoadError("quantization applies to Hugging Face folders; a GGUF file keeps its own types")
        source = resolve_model(model, tokenizer)
        model_config = read_config(source)
        try:
            tok = Tokenizer(source.tokenizer_folder)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load the tokenizer of {source.tokenizer_folder}: {e}") from e
        limit = min(cfg.max_model_len or model_config.max_position_embeddings, model_config.max_position_embeddings)
        self.model_path = source.gguf or source.folder
        self.source = source
        calibration = kv_scales.calibration_ids(tok) if cfg.kv_cache_dtype == "fp8" else None
        runner = ModelRunner(cfg, model_config, source, limit, calibration)
        weights = [source.gguf] if source.gguf is not None else sorted(source.folder.glob("*.safetensors"))
        fingerprint = model_fingerprint(
            weights, model_config, source.tokenizer_folder, quantization=cfg.quantization, dtype=str(cfg.dtype),
            kv_dtype=f"{cfg.kv_dtype} scales {runner.kv_factors}", dense=runner.weights_dense,
            device_type=runner.device.type, block_size=cfg.block_size)
        key = model_key(fingerprint)
        tiers = build_tiers(cfg, runner.kv_cache, fingerprint, key, source.describe())
        self._setup(cfg, model_config, tok, runner, limit, tiers, key)

    @classmethod
    def with_runner(cls, config: EngineConfig, model_config: ModelConfig, tokenizer: Tokenizer, runner,
                    max_positions: int) -> LLMEngine:
        """An engine over a given runner (anything with `num_blocks`, `input_batch` and `launch`):
        how tests drive the real scheduling pipeline without a model."""
        engine = cls.__new__(cls)
        engine.model_path = engine.source = None
        engine._setup(config, model_config, tokenizer, runner, max_positions)
        return engine

    def _setup(self, config: EngineConfig, model_config: ModelConfig, tokenizer: Tokenizer, runner,
               max_positions: int, tiers: KVTiers | None = None, model_key: int = 0) -> None:
        self.config, self.model_config, self.tokenizer, self.runner = config, model_config, tokenizer, runner
        bs = config.block_size
        self.max_model_len = min(max_positions, runner.num_blocks * bs)
        self.kv_tiers = tiers
        self.block_manager = BlockManager(runner.num_blocks, bs, config.enable_prefix_caching, model_key, tiers)
        self.scheduler = Scheduler(config, self.block_manager, self.max_model_len)
        eos = set(model_config.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.eos_token_ids = eos
        self.outputs = OutputProcessor(tokenizer, eos, self.max_model_len)
        self.async_scheduling = config.async_scheduling
        self.requests: dict[str, Request] = {}
        self._inflight: InFlightStep | None = None
        self._seq_ids = itertools.count()
        self._request_ids = itertools.count()

    # ------------------------------------------------------------------ requests

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str | None = None,
                    stream: bool = False) -> str:
        """Queue a request; raise RequestError (allocating nothing) if it cannot run. With
        `stream`, every step that adds text returns an output with the delta; otherwise an output
        comes only when the request finishes."""
        ids = self.validate(prompt_token_ids)
        if params.n > self.config.max_num_seqs:
            raise RequestError(f"n={params.n} samples exceed max_num_seqs={self.config.max_num_seqs}", "n")
        request_id = request_id if request_id is not None else f"req-{next(self._request_ids)}"
        if request_id in self.requests:
            raise RequestError(f"request id {request_id!r} is already in use")
        request = Request(request_id, list(prompt_token_ids), params, stream, num_samples=params.n)
        request.samples.append(self._new_sample(request, 0, ids))
        self.requests[request_id] = request
        seq = request.samples[0].seq
        self.block_manager.block_keys(seq)  # the prompt's blocks are full now: key them once, on arrival
        self.scheduler.add(seq)
        return request_id

    def validate(self, prompt_token_ids: list[int]) -> np.ndarray:
        """The prompt as an int64 array, or RequestError if the model cannot take it."""
        n = len(prompt_token_ids)
        if n == 0:
            raise RequestError("the prompt is empty", "prompt")
        if n >= self.max_model_len:
            raise RequestError(
                f"the prompt is {n} tokens long but the context holds {self.max_model_len} "
                f"(at least one token must be left to generate)", "prompt")
        vocab = self.model_config.vocab_size
        ids = np.asarray(prompt_token_ids)
        if ids.dtype.kind not in "iu":
            raise RequestError("token ids must be integers", "prompt")
        if ids.min() < 0 or ids.max() >= vocab:
            bad = ids[(ids < 0) | (ids >= vocab)]
            raise RequestError(f"token ids outside the vocabulary (size {vocab}): {bad[:5].tolist()}", "prompt")
        return ids.astype(np.int64, copy=False)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request wherever it is; its blocks go back to the pool at once (a step in flight
        that still computes it is harmless: its token is dropped). Returns its final output
        (finish reason "abort", with the text so far), or None if it was done."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        request.num_samples = len(request.samples)  # samples not forked yet never will be
        for s in request.samples:
            if not s.seq.is_finished:
                self._finish(s.seq, "abort")
        return self._output(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests) or self._inflight is not None

    def _new_sample(self, request: Request, index: int, prompt: np.ndarray | None = None) -> SampleState:
        """A sequence for sample `index`; `prompt` is the prompt as an array (converted once, on arrival)."""
        if prompt is None:
            prompt = request.samples[0].seq.prompt_array
        seq = Sequence(next(self._seq_ids), request.request_id, request.prompt_token_ids, request.params,
                       sample_index=index, prompt_array=prompt)
        return self.outputs.new_sample(request, seq)

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_time = time.perf_counter()
        self.scheduler.finish(seq, reason)
        self.runner.input_batch.release(seq)

    # ------------------------------------------------------------------ the step

    def step(self) -> list[RequestOutput]:
        """Schedule and launch one step; return outputs for the requests the latest finished step
        changed (with async scheduling, the step before this one)."""
        batch = self.scheduler.schedule()
        for seq in batch.preempted:
            self.runner.input_batch.release(seq)
        launched = self._launch(batch) if batch else None
        if launched is None and self._inflight is None:
            self.scheduler.wait_for_reads(READ_WAIT_S)  # only disk reads are left to wait for: don't spin
        if not self.async_scheduling:
            return self._process(launched) if launched is not None else []
        previous, self._inflight = self._inflight, launched
        return self._process(previous) if previous is not None else []

    def _launch(self, batch: ScheduledBatch) -> InFlightStep:
        rows = self.runner.input_batch
        samples: list[Sample] = []
        forks: list[tuple[Sequence, list[Sequence]]] = []
        index = 0  # among the sequences that sample, in batch order (the runner's logits rows)
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            if seq.row is None:
                rows.assign(seq)
            if seq.num_computed_tokens + n < seq.num_total_tokens:
                continue  # a prefill chunk that does not reach the end of the prompt: nothing to sample
            samples.append(Sample(seq, index))
            request = self.requests[seq.request_id]
            if len(request.samples) < request.num_samples:  # the prompt is in: fork the other samples
                children = self._fork(request, seq)
                forks.append((seq, children))
                samples.extend(Sample(child, index) for child in children)
            index += 1
        inflight = self.runner.launch(batch, samples)
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            self.block_manager.commit(seq)
        for parent, children in forks:
            for child in children:
                self.block_manager.fork(parent, child)
        for s in samples:
            s.seq.num_pending += 1
        return inflight

    def _fork(self, request: Request, parent: Sequence) -> list[Sequence]:
        children = []
        for index in range(1, request.num_samples):
            state = self._new_sample(request, index)
            child = state.seq
            child.num_cached_tokens = parent.num_cached_tokens
            child.num_ram_cached_tokens = parent.num_ram_cached_tokens
            child.num_disk_cached_tokens = parent.num_disk_cached_tokens
            child.status = SequenceStatus.RUNNING
            self.runner.input_batch.fork(parent, child)
            self.scheduler.running.append(child)
            request.samples.append(state)
            children.append(child)
        return children

    def _process(self, inflight: InFlightStep) -> list[RequestOutput]:
        """Read a step's sampled ids back and turn them into text, finishes and outputs."""
        tokens = inflight.tokens()
        changed: dict[str, Request] = {}
        failed: dict[str, Exception] = {}
        for sample, token_id in zip(inflight.samples, tokens):
            seq = sample.seq
            seq.num_pending -= 1
            if seq.is_finished:  # stopped or aborted while this step ran: its token is dropped
                continue
            request_id = seq.request_id
            if request_id in failed:
                continue
            request = self.requests[request_id]
            try:
                reason = self.outputs.append(request, request.samples[seq.sample_index], token_id)
            except Exception as e:  # this request's own failure (its text, its stop strings): it alone ends
                log.exception("request %s failed while its output was processed", request_id)
                failed[request_id] = e
                changed[request_id] = request
                continue
            if reason is not None:
                self._finish(seq, reason)
            elif seq.status is SequenceStatus.RUNNING:
                self.block_manager.commit(seq)  # generated tokens may have filled a block
            changed[request_id] = request
        outputs = []
        for request_id, request in changed.items():
            if request_id in failed:
                out = self.abort_request(request_id)
                out.error = failed[request_id]
                outputs.append(out)
            elif request.stream or request.finished:
                outputs.append(self._output(request))
        return outputs

    def _output(self, request: Request) -> RequestOutput:
        out = self.outputs.output(request)
        if out.finished:
            del self.requests[request.request_id]
        return out

    def memory_report(self) -> dict:
        """What the model holds where: weights by storage format, the KV cache's dtype and the
        context it holds; Settings and `folio` show it."""
        runner = self.runner
        formats = runner.model.weight_formats()
        return dict(
            model=self.source.describe(),
            device=runner.device.type,
            weight_formats=formats,
            weight_bytes=runner.model.weight_bytes(),
            int4_decode_bytes=runner.model.int4_decode_bytes(),  # CPU: a 4-bit copy for decode steps
            dequantized=runner.weights_dense,  # packed file weights expanded at load (the CPU's choice)
            kv_dtype=str(self.config.kv_dtype).removeprefix("torch."),
            kv_bytes_per_token=runner.bytes_per_block() // runner.block_size,
            kv_bytes=runner.kv_cache.numel() * runner.kv_cache.element_size(),
            context_tokens=runner.num_blocks * runner.block_size,
            gpu_memory_limit=self.config.gpu_memory_limit,
        )

    def close(self, timeout: float | None = None) -> None:
        """Let the blocks queued for disk reach it (up to `timeout`), then stop the disk writer."""
        if self.kv_tiers is not None:
            self.kv_tiers.close(timeout)

    def stats(self) -> dict[str, float]:
        s = self.block_manager.stats()
        s.update(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_preemptions=self.scheduler.num_preemptions,
            max_model_len=self.max_model_len,
        )
        return s
