"""Continuous batching: which sequences run this step, and how many of their tokens.

One token budget per step. Running sequences go first, decoding ones before those still in
chunked prefill, so a long prompt never stalls answers already streaming. Waiting sequences are
admitted in arrival order with whatever budget is left. When blocks run out, the newest running
sequence is preempted: its blocks are freed (their full blocks stay cached) and it is recomputed
later, mostly from the prefix cache.

With asynchronous scheduling the step before this one may still be running: its sampled tokens
are pending (on the device, not yet read). A decoding sequence's pending token is still this
step's input (the runner reads it where the sampler left it). A sequence that has generated its
`max_tokens` or filled the context, counting the pending token, is not scheduled again; one that
stopped on EOS or a stop string is known only after the read-back, so it costs one wasted
slot-step at most. A preempted sequence is readmitted only once its pending token is read.

A waiting sequence whose prefix is being read from disk (engine/kv_tiers) keeps its place in line
but is not admitted until the read is done; those behind it are admitted meanwhile, so a disk
read never holds a step back.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """Sequences of one step, decoding ones first, with the tokens each computes."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    num_decode: int = 0
    preempted: list[Sequence] = field(default_factory=list)

    def add(self, seq: Sequence, n: int, copies: list[tuple[int, int]]) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(n)
        self.copies.extend(copies)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager, max_model_len: int | None = None) -> None:
        self.config = config
        self.block_manager = block_manager
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last is the newest
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Take a sequence out of the schedule for good and give its blocks back."""
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)

    def is_complete(self, seq: Sequence) -> bool:
        """It has all the tokens it may have, counting the pending one: nothing left to compute."""
        total = seq.num_total_tokens
        return (seq.num_generated >= seq.params.max_tokens
                or (self.max_model_len is not None and total >= self.max_model_len))

    def wait_for_reads(self, timeout: float) -> bool:
        """With nothing to run but sequences waiting for disk reads, the step loop waits here for
        one to finish (at most `timeout`) rather than spin; whether one has."""
        return self.block_manager.wait_for_reads(timeout)

    def schedule(self) -> ScheduledBatch:
        self.block_manager.collect_reads()
        budget = self.config.max_num_batched_tokens
        batch = ScheduledBatch()
        scheduled: set[int] = set()
        decoding, prefilling = [], []
        for s in self.running:
            if not self.is_complete(s):
                (prefilling if s.in_prefill else decoding).append(s)
        for group in (decoding, prefilling):
            for seq in group:
                if budget == 0:
                    break
                if seq.status is not SequenceStatus.RUNNING:
                    continue  # preempted earlier in this loop
                n = min(seq.num_total_tokens - seq.num_computed_tokens, budget)
                if n <= 0:
                    continue
                copies = self._allocate_or_preempt(seq, n, scheduled, batch)
                if copies is None:
                    continue
                batch.add(seq, n, copies)
                scheduled.add(seq.seq_id)
                budget -= n
            if group is decoding:
                batch.num_decode = len(batch.seqs)
        self._admit(batch, budget)
        return batch

    def _allocate_or_preempt(self, seq: Sequence, n: int, scheduled: set[int],
                             batch: ScheduledBatch) -> list[tuple[int, int]] | None:
        while (copies := self.block_manager.allocate(seq, n)) is None:
            victims = [s for s in self.running if s.seq_id not in scheduled and s is not seq]
            victim = victims[-1] if victims else seq
            self._preempt(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return None
        return copies

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def _admit(self, batch: ScheduledBatch, budget: int) -> None:
        bs = self.block_manager.block_size
        deferred: list[Sequence] = []
        seats_taken = sum(map(seats, self.running))
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            if seats_taken + seats(seq) > self.config.max_num_seqs:
                break
            if seq.num_pending:  # preempted with a token in flight: its tokens are not all known yet
                deferred.append(self.waiting.popleft())
                continue
            hit = self.block_manager.find_prefix(seq)
            if hit.next_block_pending or hit.loading:
                deferred.append(self.waiting.popleft())  # its prefix is being computed or read: later
                continue
            n = min(seq.num_tokens - hit.num_blocks * bs, budget)
            copies = self.block_manager.allocate(seq, n, hit)
            if copies is None:
                break
            self.waiting.popleft()
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = seq.num_computed_tokens
                if hit.loads:
                    seq.num_ram_cached_tokens = hit.num_from("ram") * bs
                    seq.num_disk_cached_tokens = hit.num_from("disk") * bs
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            seats_taken += seats(seq)
            batch.add(seq, n, copies)
            budget -= n
        self.waiting.extendleft(reversed(deferred))


def seats(seq: Sequence) -> int:
    """Running slots a sequence holds: a request with n samples forks into n once its prompt is in."""
    return seq.params.n if seq.sample_index == 0 and not seq.output_token_ids and not seq.num_pending else 1
