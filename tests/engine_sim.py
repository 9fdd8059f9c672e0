"""The real engine pipeline (scheduler, block manager, forks, read-back, output processing) over a
fake runner that plays the device, for tests that need no model.

`FakeRunner` records, for every KV slot a step writes, the token prefix that KV would be computed
from: known tokens from the host, and a pending token from where the sampler left it on the
"device" (the row's last token), exactly as the real runner's inputs do. It samples made-up ids
(some of them the stop token, when asked), so sequences stop early as EOS would make them.
`Sim` wraps `LLMEngine.with_runner` and checks after every step that each running sequence's
computed KV is right and that reference counts equal the tables that hold each block.
"""
from __future__ import annotations

import itertools
import random

import torch

from engine.config import EngineConfig
from engine.input_batch import InputBatch
from engine.llm_engine import LLMEngine
from engine.model.config import ModelConfig
from engine.model_runner import InFlightStep
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence
from engine.step_inputs import Sample, _device_row

STOP = 7  # the fake model's EOS


class FakeTokenizer:
    eos_token_id = None

    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)


class FakeRunner:
    def __init__(self, num_blocks: int, block_size: int, max_rows: int, stop_rate: float = 0.0, seed: int = 0) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.input_batch = InputBatch(max_rows, 32, torch.device("cpu"), num_blocks, block_size)
        self.content: list[list[tuple | None]] = [[None] * block_size for _ in range(num_blocks)]
        self.pending: dict[int, int] = {}  # seq_id -> its sampled, not yet read token
        self.batches: list[ScheduledBatch] = []
        self.engine: LLMEngine | None = None
        self.on_launch = None  # called with each batch before it "runs": the state between schedule and launch
        self._fake = itertools.count(10_000)
        self._rng = random.Random(seed)
        self.stop_rate = stop_rate

    def truth(self, seq: Sequence, position: int) -> tuple:
        """The tokens up to `position` as the device sees them: known ones plus the pending one."""
        tokens = seq.token_ids
        if position >= len(tokens):
            assert position == len(tokens) and seq.num_pending == 1, "computing a token nobody sampled"
            tokens = tokens + [self.pending[seq.seq_id]]
        return tuple(tokens[:position + 1])

    def launch(self, batch: ScheduledBatch, samples: list[Sample]) -> InFlightStep:
        pool = self.engine.block_manager.pool
        bs = self.block_size
        self.batches.append(batch)
        if self.on_launch is not None:
            self.on_launch(batch)
        for src, dst in batch.copies:
            self.content[dst] = list(self.content[src])
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            assert seq.row is not None
            for p in range(seq.num_computed_tokens, seq.num_computed_tokens + n):
                if p >= seq.num_tokens:  # the real runner reads this token from the row, not the host
                    assert _device_row(seq, p) == seq.row, "a pending token the device does not hold"
                block = seq.block_table[p // bs]
                assert pool.ref_cnt[block] == 1 and not pool.is_cached[block], "write into a shared or cached block"
                self.content[block][p % bs] = self.truth(seq, p)
        tokens = []
        for s in samples:
            token = STOP if self._rng.random() < self.stop_rate else next(self._fake)
            self.pending[s.seq.seq_id] = token
            s.seq.row_has_token = True
            tokens.append(token)
        return InFlightStep(samples, ready=tokens)


class Sim:
    def __init__(self, num_blocks: int, block_size: int = 4, budget: int = 16, max_num_seqs: int = 8,
                 prefix_caching: bool = True, async_scheduling: bool = False, stop_rate: float = 0.0,
                 seed: int = 0) -> None:
        self.config = EngineConfig(block_size=block_size, max_num_batched_tokens=budget, max_num_seqs=max_num_seqs,
                                   num_kv_blocks=num_blocks, device="cpu", enable_prefix_caching=prefix_caching,
                                   async_scheduling=async_scheduling)
        self.bs = block_size
        self.runner = FakeRunner(num_blocks, block_size, max_num_seqs, stop_rate, seed)
        model_config = ModelConfig("llama", 100_000, 8, 8, 1, 1, 1, 8, 1e-6, 10000.0, num_blocks * block_size,
                                   eos_token_ids=[STOP])
        self.engine = LLMEngine.with_runner(self.config, model_config, FakeTokenizer(), self.runner,
                                            num_blocks * block_size)
        self.runner.engine = self.engine
        self.bm = self.engine.block_manager
        self.sched = self.engine.scheduler
        self.max_len = self.engine.max_model_len
        self.finished: dict[str, object] = {}
        self.steps = 0

    @property
    def all(self) -> list[Sequence]:
        return [s.seq for r in self._requests for s in r.samples]

    def add(self, prompt, max_tokens: int = 4, n: int = 1, stream: bool = False, **params) -> Sequence:
        assert len(prompt) < self.max_len
        rid = self.engine.add_request(list(prompt), SamplingParams(max_tokens=max_tokens, n=n, **params), stream=stream)
        request = self.engine.requests[rid]
        self._requests = getattr(self, "_requests", []) + [request]
        return request.samples[0].seq

    def step(self) -> ScheduledBatch:
        launched_before = len(self.runner.batches)
        for out in self.engine.step():
            if out.finished:
                self.finished[out.request_id] = out
        self.steps += 1
        self.check_kv()
        return self.runner.batches[-1] if len(self.runner.batches) > launched_before else ScheduledBatch()

    def check_kv(self) -> None:
        bs = self.bs
        for seq in self.sched.running:
            for p in range(seq.num_computed_tokens):
                assert self.runner.content[seq.block_table[p // bs]][p % bs] == self.runner.truth(seq, p)
        holders = [0] * self.bm.num_blocks
        for seq in self.sched.running:
            for i in seq.block_table:
                holders[i] += 1
        for seq in self.sched.waiting:
            assert seq.block_table == []
        assert self.bm.pool.ref_cnt.tolist() == holders, "block reference leak"
        assert self.bm.num_free_blocks == holders.count(0)
        rows = [s.row for s in self.sched.running]
        assert None not in rows and len(set(rows)) == len(rows), "a running sequence without its own row"
        assert self.runner.input_batch.num_free == self.config.max_num_seqs - len(rows), "row leak"

    def run(self, max_steps: int = 1000) -> None:
        while self.engine.has_unfinished_requests():
            assert self.steps < max_steps, "no progress: livelock or a request that can never run"
            self.step()

    def assert_all_done(self) -> None:
        assert not self.engine.has_unfinished_requests() and not self.sched.has_work()
        for seq in self.all:
            assert seq.is_finished and seq.num_pending == 0
            if seq.finish_reason == "length":
                assert len(seq.output_token_ids) == seq.params.max_tokens or seq.num_tokens >= self.max_len
            elif seq.finish_reason == "stop":
                assert seq.output_token_ids[-1] == STOP and STOP not in seq.output_token_ids[:-1]
            else:
                assert seq.finish_reason == "abort"
        assert self.bm.num_free_blocks == self.bm.num_blocks
        assert not self.bm.pool.ref_cnt.any()
        assert self.runner.input_batch.num_free == self.config.max_num_seqs


def entries(batch: ScheduledBatch) -> list[tuple[int, int]]:
    return [(s.seq_id, n) for s, n in zip(batch.seqs, batch.num_new_tokens)]
