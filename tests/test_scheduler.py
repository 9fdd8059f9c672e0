"""Scheduler + BlockManager + Sequence without a model.

`Sim` plays the engine: schedule, apply copy-on-write copies, "compute" the scheduled tokens
(each KV slot records the token prefix it depends on), commit, and append a fake token to every
sequence whose known tokens are all computed. n>1 requests fork their samples the way
`LLMEngine.step` does.
"""
from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledBatch, Scheduler
from engine.sequence import Sequence, SequenceStatus

DECODE, PREFILL, ADMITTED = 0, 1, 2


class Sim:
    def __init__(self, num_blocks: int, block_size: int = 4, budget: int = 16, max_num_seqs: int = 8,
                 prefix_caching: bool = True) -> None:
        self.config = EngineConfig(block_size=block_size, max_num_batched_tokens=budget, max_num_seqs=max_num_seqs,
                                   num_kv_blocks=num_blocks, device="cpu", enable_prefix_caching=prefix_caching)
        self.bs = block_size
        self.bm = BlockManager(num_blocks, block_size, prefix_caching)
        self.sched = Scheduler(self.config, self.bm)
        self.max_len = num_blocks * block_size  # the engine's max_model_len bound
        self.content: list[list[tuple | None]] = [[None] * block_size for _ in range(num_blocks)]
        self._ids = itertools.count()
        self._fake = itertools.count(10_000)
        self.finished: list[Sequence] = []
        self.all: list[Sequence] = []
        self.forked: set[str] = set()
        self.steps = 0

    def add(self, prompt, max_tokens: int = 4, n: int = 1) -> Sequence:
        assert len(prompt) < self.max_len
        sid = next(self._ids)
        seq = Sequence(sid, f"req-{sid}", list(prompt), SamplingParams(max_tokens=max_tokens, n=n))
        self.sched.add(seq)
        self.all.append(seq)
        return seq

    def schedule(self) -> ScheduledBatch:
        """schedule() plus the checks that hold for every step."""
        sched = self.sched
        running_before = list(sched.running)
        decoding_before = {s.seq_id for s in running_before if not s.in_prefill}
        waiting_before = {s.seq_id for s in sched.waiting}
        preemptions_before = {s.seq_id: s.num_preemptions for s in self.all}

        batch = sched.schedule()

        budget = self.config.max_num_batched_tokens
        assert batch.num_tokens <= budget
        # admission reserves a seat for every sample a request will fork into
        assert len(sched.running) <= self.config.max_num_seqs
        ids = [s.seq_id for s in batch.seqs]
        assert len(ids) == len(set(ids)), "a sequence scheduled twice in one step"
        assert all(n >= 1 for n in batch.num_new_tokens)
        kinds = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            assert seq.status is SequenceStatus.RUNNING and seq in sched.running
            assert seq.num_computed_tokens + n <= seq.num_tokens
            assert len(seq.block_table) * self.bs >= seq.num_computed_tokens + n
            if seq.seq_id in decoding_before and seq.num_preemptions == preemptions_before[seq.seq_id]:
                kinds.append(DECODE)
                assert n == 1
            elif seq.seq_id in waiting_before or seq.num_preemptions > preemptions_before[seq.seq_id]:
                kinds.append(ADMITTED)
            else:
                kinds.append(PREFILL)
        assert kinds == sorted(kinds), f"batch order must be decodes, prefill chunks, admissions: {kinds}"
        assert batch.num_decode == kinds.count(DECODE)

        preempted = [s for s in running_before if s.num_preemptions > preemptions_before[s.seq_id]]
        for p in preempted:
            # the victim is the newest sequence that was not already scheduled this step
            newer = running_before[running_before.index(p) + 1:]
            assert all(s in preempted or s.seq_id in ids for s in newer), "an older sequence was preempted first"
            if p.status is SequenceStatus.WAITING:
                assert p in sched.waiting and p.num_computed_tokens == 0 and p.block_table == []
        if not preempted and len(decoding_before) <= budget:
            # decode is never starved: every decoding sequence got its token
            assert decoding_before <= set(ids)
        self.steps += 1
        return batch

    def execute(self, batch: ScheduledBatch) -> None:
        bs = self.bs
        for src, dst in batch.copies:
            self.content[dst] = list(self.content[src])
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            tokens = seq.token_ids
            for p in range(seq.num_computed_tokens, seq.num_computed_tokens + n):
                block = self.bm.pool.blocks[seq.block_table[p // bs]]
                assert block.ref_cnt == 1 and block.block_hash is None, "write into a shared or cached block"
                self.content[block.block_id][p % bs] = tuple(tokens[:p + 1])
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            self.bm.commit(seq)
        ready = [s for s in batch.seqs if s.num_computed_tokens == s.num_tokens]
        for seq in list(ready):
            if seq.params.n > 1 and seq.request_id not in self.forked:
                self.forked.add(seq.request_id)
                for index in range(1, seq.params.n):
                    sid = next(self._ids)
                    child = Sequence(sid, seq.request_id, seq.prompt_token_ids, seq.params, sample_index=index)
                    self.bm.fork(seq, child)
                    child.status = SequenceStatus.RUNNING
                    self.sched.running.append(child)
                    self.all.append(child)
                    ready.append(child)
        for seq in ready:
            seq.append_token(next(self._fake))
            if len(seq.output_token_ids) >= seq.params.max_tokens or seq.num_tokens >= self.max_len:
                self.sched.finish(seq, "length")
                self.finished.append(seq)
        self.check_kv()

    def step(self) -> ScheduledBatch:
        batch = self.schedule()
        self.execute(batch)
        return batch

    def check_kv(self) -> None:
        bs = self.bs
        for seq in self.sched.running:
            tokens = seq.token_ids
            for p in range(seq.num_computed_tokens):
                assert self.content[seq.block_table[p // bs]][p % bs] == tuple(tokens[:p + 1])
        holders = [0] * self.bm.num_blocks
        for seq in self.sched.running:
            for i in seq.block_table:
                holders[i] += 1
        for seq in self.sched.waiting:
            assert seq.block_table == []
        assert [b.ref_cnt for b in self.bm.pool.blocks] == holders, "block reference leak"
        assert self.bm.num_free_blocks == holders.count(0)

    def run(self, max_steps: int = 1000) -> None:
        while self.sched.has_work():
            assert self.steps < max_steps, "no progress: livelock or a request that can never run"
            self.step()

    def assert_all_done(self) -> None:
        assert not self.sched.has_work()
        assert all(s.is_finished for s in self.all)
        for s in self.all:
            assert len(s.output_token_ids) == s.params.max_tokens or s.num_tokens >= self.max_len
        assert self.bm.num_free_blocks == self.bm.num_blocks
        assert all(b.ref_cnt == 0 for b in self.bm.pool.blocks)


def entries(batch: ScheduledBatch) -> list[tuple[int, int]]:
    return [(s.seq_id, n) for s, n in zip(batch.seqs, batch.num_new_tokens)]


# --------------------------------------------------------------------------- order and budget


def test_decodes_first_then_prefill_chunks_then_waiting_within_budget():
    sim = Sim(num_blocks=64, budget=8)
    a = sim.add([1, 2, 3], max_tokens=12)
    b = sim.add([4, 5, 6], max_tokens=12)
    batch = sim.step()
    assert entries(batch) == [(a.seq_id, 3), (b.seq_id, 3)] and batch.num_decode == 0

    long_prompt = list(range(100, 130))  # 30 tokens, budget 8
    c = sim.add(long_prompt, max_tokens=2)
    d = sim.add([7, 8, 9, 10, 11], max_tokens=2)
    chunks = []
    for _ in range(5):
        batch = sim.step()
        # the two decodes first, then a chunk of C with the rest of the budget; D must wait
        assert entries(batch)[:2] == [(a.seq_id, 1), (b.seq_id, 1)] and batch.num_decode == 2
        assert [s.seq_id for s in batch.seqs] == [a.seq_id, b.seq_id, c.seq_id]
        assert batch.num_tokens == 8
        assert d in sim.sched.waiting and d.block_table == []
        chunks.append(batch.num_new_tokens[2])
    assert chunks == [6] * 5 and c.num_computed_tokens == 30 and len(c.output_token_ids) == 1

    batch = sim.step()  # C decodes now; D is admitted with what is left
    assert entries(batch) == [(a.seq_id, 1), (b.seq_id, 1), (c.seq_id, 1), (d.seq_id, 5)]
    assert batch.num_decode == 3
    sim.run()
    sim.assert_all_done()


def test_long_prefill_is_chunked_and_never_exceeds_budget_alone():
    sim = Sim(num_blocks=64, budget=16)
    seq = sim.add(list(range(50)), max_tokens=3)
    sizes = []
    while not seq.output_token_ids:
        sizes.append(sim.step().num_tokens)
    assert sizes == [16, 16, 16, 2]
    sim.run()
    sim.assert_all_done()


def test_max_num_seqs_limits_admission():
    sim = Sim(num_blocks=64, budget=64, max_num_seqs=2)
    seqs = [sim.add([i, i + 1], max_tokens=3) for i in range(0, 10, 2)]
    batch = sim.step()
    assert [s.seq_id for s in batch.seqs] == [seqs[0].seq_id, seqs[1].seq_id]
    assert list(sim.sched.waiting) == seqs[2:]
    sim.run()
    sim.assert_all_done()


# --------------------------------------------------------------------------- preemption


def test_preemption_by_recompute_newest_first():
    sim = Sim(num_blocks=6, budget=64, max_num_seqs=3)
    a, b, c = (sim.add(list(range(k, k + 6)), max_tokens=8) for k in (0, 10, 20))
    d = sim.add(list(range(30, 36)), max_tokens=8)
    batch = sim.step()
    assert [s.seq_id for s in batch.seqs] == [a.seq_id, b.seq_id, c.seq_id]
    assert sim.bm.num_free_blocks == 0 and d in sim.sched.waiting

    sim.step()
    sim.step()  # each now has 9 tokens, 8 computed: the next decode needs a third block
    assert [s.num_tokens for s in (a, b, c)] == [9, 9, 9]
    batch = sim.schedule()
    assert sim.sched.num_preemptions == 1
    assert c.status is SequenceStatus.WAITING and c.num_preemptions == 1
    assert list(sim.sched.waiting) == [c, d]  # back at the head, ahead of the never-run request
    assert c.num_computed_tokens == 0 and c.block_table == []
    assert len(c.output_token_ids) == 3  # its sampled tokens are kept and will be recomputed
    assert [s.seq_id for s in batch.seqs] == [a.seq_id, b.seq_id]
    sim.execute(batch)

    admitted_order = []
    while sim.sched.has_work():
        waiting = list(sim.sched.waiting)
        batch = sim.step()
        admitted_order += [s for s in batch.seqs if s in waiting]
        assert sim.steps < 200
    assert admitted_order.index(c) < admitted_order.index(d)
    sim.assert_all_done()
    assert [len(s.output_token_ids) for s in (a, b, c, d)] == [8, 8, 8, 8]


def test_newest_preempts_itself_when_older_ones_are_scheduled_and_recomputes_from_cache():
    sim = Sim(num_blocks=5, budget=64, max_num_seqs=4)
    a = sim.add(list(range(6)), max_tokens=8)
    b = sim.add(list(range(50, 56)), max_tokens=8)
    for _ in range(3):
        sim.step()
    assert [s.num_tokens for s in (a, b)] == [9, 9] and sim.bm.num_free_blocks == 1
    b_blocks = list(b.block_table)

    batch = sim.schedule()  # a takes the last free block; b, the newest, has no victim but itself
    assert [s.seq_id for s in batch.seqs] == [a.seq_id]
    assert b.status is SequenceStatus.WAITING and list(sim.sched.waiting) == [b]
    assert b.num_computed_tokens == 0 and b.block_table == [] and b.num_preemptions == 1
    # its two full blocks stay cached while free
    assert all(sim.bm.pool.blocks[i].block_hash is not None for i in b_blocks)
    sim.execute(batch)

    readmitted_with = None
    while sim.sched.has_work():
        waiting = b in sim.sched.waiting
        batch = sim.schedule()
        if waiting and b in batch.seqs:
            readmitted_with = b.num_computed_tokens
            assert b.block_table[0] == b_blocks[0]
        sim.execute(batch)
        assert sim.steps < 100
    # a's growth evicted b's tail block (freed first), not its first block
    assert readmitted_with == 4
    sim.assert_all_done()


def test_tiny_pool_many_requests_all_finish():
    sim = Sim(num_blocks=4, budget=64, max_num_seqs=4)
    for k in (0, 100, 200, 300, 400):
        sim.add(list(range(k, k + 7)), max_tokens=6)
    sim.run(max_steps=300)
    sim.assert_all_done()
    assert sim.sched.num_preemptions >= 1


# --------------------------------------------------------------------------- pending prefix


def test_request_waits_for_prefix_block_being_computed():
    sim = Sim(num_blocks=64, budget=64)
    shared = list(range(8))  # two full blocks
    a = sim.add(shared + [100], max_tokens=3)
    b = sim.add(shared + [200, 201, 202], max_tokens=3)
    c = sim.add([300, 301, 302], max_tokens=3)  # unrelated: not held up by b

    batch = sim.schedule()
    assert [s.seq_id for s in batch.seqs] == [a.seq_id, c.seq_id]
    assert list(sim.sched.waiting) == [b] and b.block_table == []
    assert sim.bm.find_prefix(b).next_block_pending
    sim.execute(batch)
    a_blocks = list(a.block_table)

    batch = sim.schedule()
    assert entries(batch) == [(a.seq_id, 1), (c.seq_id, 1), (b.seq_id, 3)]
    assert b.num_computed_tokens == 8 and b.num_cached_tokens == 8
    assert b.block_table[:2] == a_blocks[:2]
    assert all(sim.bm.pool.blocks[i].ref_cnt == 2 for i in a_blocks[:2])
    sim.execute(batch)
    sim.run()
    sim.assert_all_done()


def test_deferred_request_keeps_its_place_in_line():
    sim = Sim(num_blocks=64, budget=12)
    a = sim.add(list(range(8)) + [100], max_tokens=3)  # 9 tokens
    b = sim.add(list(range(8)) + [200], max_tokens=3)  # deferred behind a's pending blocks
    c = sim.add([300, 301, 302], max_tokens=3)  # 3 tokens: the budget is spent
    d = sim.add([400, 401], max_tokens=3)
    batch = sim.step()
    assert [s.seq_id for s in batch.seqs] == [a.seq_id, c.seq_id]
    assert list(sim.sched.waiting) == [b, d]
    batch = sim.schedule()
    assert entries(batch) == [(a.seq_id, 1), (c.seq_id, 1), (b.seq_id, 1), (d.seq_id, 2)]
    assert b.num_computed_tokens == 8  # admitted with the hit
    sim.execute(batch)
    sim.run()
    sim.assert_all_done()


def test_without_pending_prefix_both_are_admitted_and_nothing_is_shared():
    """Control for the test above: with prefix caching off nothing is deferred."""
    sim = Sim(num_blocks=64, budget=64, prefix_caching=False)
    a = sim.add(list(range(8)) + [100], max_tokens=3)
    b = sim.add(list(range(8)) + [200], max_tokens=3)
    batch = sim.step()
    assert [s.seq_id for s in batch.seqs] == [a.seq_id, b.seq_id]
    assert not set(a.block_table) & set(b.block_table)
    sim.run()
    sim.assert_all_done()


# --------------------------------------------------------------------------- n > 1


def test_forked_samples_share_prompt_blocks_and_copy_partial_block():
    sim = Sim(num_blocks=32, budget=64)
    seq = sim.add(list(range(6)), max_tokens=4, n=3)
    sim.step()
    children = [s for s in sim.sched.running if s is not seq]
    assert len(children) == 2
    assert all(ch.block_table == seq.block_table for ch in children)
    batch = sim.step()
    # three samples wrote into the shared half-full block: two copies, the last writes in place
    assert len(batch.copies) == 2
    assert len({s.block_table[1] for s in [seq, *children]}) == 3
    assert sim.bm.pool.blocks[seq.block_table[0]].ref_cnt == 3
    sim.run()
    sim.assert_all_done()


# --------------------------------------------------------------------------- random workloads


request = st.tuples(
    st.integers(0, 2),  # shared prefix id
    st.integers(0, 3),  # shared prefix blocks
    st.lists(st.integers(0, 3), min_size=1, max_size=9),  # own tokens
    st.integers(1, 6),  # max_tokens
    st.integers(1, 2),  # n
    st.integers(0, 4),  # arrival step
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=st.lists(request, min_size=1, max_size=8),
    num_blocks=st.integers(4, 14),
    budget=st.sampled_from([4, 8, 16, 64]),
    max_num_seqs=st.integers(1, 5),
)
def test_random_workloads_finish_with_correct_kv_and_empty_pool(reqs, num_blocks, budget, max_num_seqs):
    sim = Sim(num_blocks=num_blocks, budget=budget, max_num_seqs=max_num_seqs)
    prefixes = [[100 * (p + 1) + i for i in range(12)] for p in range(3)]
    by_step: dict[int, list] = {}
    for pid, pblocks, own, max_tokens, n, arrival in reqs:
        prompt = (prefixes[pid][:pblocks * 4] + own)[:sim.max_len - 1]
        by_step.setdefault(arrival, []).append((prompt, max_tokens, min(n, max_num_seqs)))
    step = 0
    while sim.sched.has_work() or any(k >= step for k in by_step):
        for prompt, max_tokens, n in by_step.pop(step, []):
            sim.add(prompt, max_tokens, n)
        step += 1
        if sim.sched.has_work():
            sim.step()
        assert sim.steps < 1000, "no progress"
    sim.assert_all_done()
    assert len(sim.all) == sum(min(r[4], max_num_seqs) for r in reqs)
