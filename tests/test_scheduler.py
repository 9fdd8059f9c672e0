"""Scheduler + BlockManager + the engine's step pipeline, without a model (tests/engine_sim.py).

The detailed order, budget, preemption and prefix tests run with synchronous steps, where each
step's tokens are known before the next is scheduled. The random workloads, forks and the
in-flight cases also run with asynchronous scheduling: a step launched before the previous one's
tokens were read.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.sequence import SequenceStatus
from engine_sim import STOP, Sim, entries

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
    batch = sim.step()
    assert sim.sched.num_preemptions == 1
    assert c.status is SequenceStatus.WAITING and c.num_preemptions == 1
    assert list(sim.sched.waiting) == [c, d]  # back at the head, ahead of the never-run request
    assert c.num_computed_tokens == 0 and c.block_table == []
    assert len(c.output_token_ids) == 3  # its sampled tokens are kept and will be recomputed
    assert [s.seq_id for s in batch.seqs] == [a.seq_id, b.seq_id]

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

    batch = sim.step()  # a takes the last free block; b, the newest, has no victim but itself
    assert [s.seq_id for s in batch.seqs] == [a.seq_id]
    assert b.status is SequenceStatus.WAITING and list(sim.sched.waiting) == [b]
    assert b.num_computed_tokens == 0 and b.block_table == [] and b.num_preemptions == 1
    # its two full blocks stay cached while free
    assert all(sim.bm.pool.is_cached[i] for i in b_blocks[:2])

    readmitted_with = None
    while sim.sched.has_work():
        waiting = b in sim.sched.waiting
        batch = sim.step()
        if waiting and b in batch.seqs:
            readmitted_with = b.num_computed_tokens - batch.num_new_tokens[batch.seqs.index(b)]
            assert b.block_table[0] == b_blocks[0]
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

    pending_at_launch = []
    sim.runner.on_launch = lambda batch: pending_at_launch.append(sim.bm.find_prefix(b).next_block_pending)
    batch = sim.step()
    assert [s.seq_id for s in batch.seqs] == [a.seq_id, c.seq_id]
    assert list(sim.sched.waiting) == [b] and b.block_table == []
    assert pending_at_launch == [True]  # a was computing the block b needs when b was deferred
    a_blocks = list(a.block_table)

    batch = sim.step()
    assert entries(batch) == [(a.seq_id, 1), (c.seq_id, 1), (b.seq_id, 3)]
    assert b.num_cached_tokens == 8 and b.num_computed_tokens == 11
    assert b.block_table[:2] == a_blocks[:2]
    assert all(sim.bm.pool.ref_cnt[i] == 2 for i in a_blocks[:2])
    sim.runner.on_launch = None
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
    batch = sim.step()
    assert entries(batch) == [(a.seq_id, 1), (c.seq_id, 1), (b.seq_id, 1), (d.seq_id, 2)]
    assert b.num_cached_tokens == 8  # admitted with the hit
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


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_forked_samples_share_prompt_blocks_and_copy_partial_block(async_scheduling):
    sim = Sim(num_blocks=32, budget=64, async_scheduling=async_scheduling)
    seq = sim.add(list(range(6)), max_tokens=4, n=3)
    sim.step()
    children = [s for s in sim.sched.running if s is not seq]
    assert len(children) == 2
    assert all(ch.block_table == seq.block_table for ch in children)
    assert len({s.row for s in [seq, *children]}) == 3  # each sample draws into its own row
    batch = sim.step()
    # three samples wrote into the shared half-full block: two copies, the last writes in place
    assert len(batch.copies) == 2
    assert len({s.block_table[1] for s in [seq, *children]}) == 3
    assert sim.bm.pool.ref_cnt[seq.block_table[0]] == 3
    sim.run()
    sim.assert_all_done()
    assert len({tuple(s.output_token_ids) for s in [seq, *children]}) == 3


# --------------------------------------------------------------------------- steps in flight


def test_async_steps_overlap_and_read_tokens_one_step_late():
    sim = Sim(num_blocks=32, budget=64, async_scheduling=True)
    a = sim.add(list(range(5)), max_tokens=4)
    sim.step()  # prefill launched; nothing read back yet
    assert a.num_pending == 1 and a.output_token_ids == []
    batch = sim.step()  # decodes the pending token from the device, then reads the first one
    assert entries(batch) == [(a.seq_id, 1)]
    assert len(a.output_token_ids) == 1 and a.num_pending == 1
    sim.run()
    sim.assert_all_done()
    assert len(a.output_token_ids) == 4
    # max_tokens is known ahead: the fourth token is never computed on, so no step is wasted
    assert sum(1 for b in sim.runner.batches for s in b.seqs if s is a) == 4


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_a_stop_read_a_step_late_costs_one_slot_and_is_never_emitted(async_scheduling):
    sim = Sim(num_blocks=32, budget=64, async_scheduling=async_scheduling)
    a = sim.add(list(range(5)), max_tokens=10, stream=True)
    b = sim.add(list(range(10, 15)), max_tokens=3)
    sim.runner.stop_rate = 0.5
    sim.runner._rng.random = iter([0.0] + [1.0] * 50).__next__  # a's first token is the stop token
    sim.run()
    sim.assert_all_done()
    assert a.finish_reason == "stop" and a.output_token_ids == [STOP]
    out = sim.finished[a.request_id]
    assert out.outputs[0].token_ids == [STOP]
    computed_after_stop = sum(1 for batch in sim.runner.batches for s in batch.seqs if s is a) - 1
    assert computed_after_stop == (1 if async_scheduling else 0)  # the one wasted slot-step
    assert len(b.output_token_ids) == 3


def test_cancel_between_launch_and_read_back_frees_everything_and_drops_the_token():
    sim = Sim(num_blocks=32, budget=64, async_scheduling=True)
    a = sim.add(list(range(6)), max_tokens=20, stream=True)
    b = sim.add(list(range(20, 26)), max_tokens=5)
    for _ in range(4):
        sim.step()
    assert a.num_pending == 1
    emitted = list(a.output_token_ids)
    out = sim.engine.abort_request(a.request_id)  # a step holding a's next token is in flight
    assert out.finished and out.outputs[0].finish_reason == "abort"
    assert out.outputs[0].token_ids == emitted
    sim.step()  # reads back the in-flight step: a's token is dropped
    assert a.output_token_ids == emitted
    sim.check_kv()
    sim.run()
    sim.assert_all_done()
    assert len(b.output_token_ids) == 5


def test_preemption_while_a_step_is_in_flight_recomputes_with_the_late_token():
    sim = Sim(num_blocks=6, budget=64, max_num_seqs=3, async_scheduling=True)
    seqs = [sim.add(list(range(k, k + 6)), max_tokens=8) for k in (0, 10, 20)]
    while not sim.sched.num_preemptions:
        sim.step()
        assert sim.steps < 50
    victim = next(s for s in seqs if s.num_preemptions)
    assert victim.status is SequenceStatus.WAITING and victim.block_table == [] and victim.row is None
    sim.run()
    sim.assert_all_done()
    assert [len(s.output_token_ids) for s in seqs] == [8, 8, 8]


# --------------------------------------------------------------------------- random workloads


request = st.tuples(
    st.integers(0, 2),  # shared prefix id
    st.integers(0, 3),  # shared prefix blocks
    st.lists(st.integers(0, 3), min_size=1, max_size=9),  # own tokens
    st.integers(1, 6),  # max_tokens
    st.integers(1, 2),  # n
    st.integers(0, 4),  # arrival step
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=st.lists(request, min_size=1, max_size=8),
    num_blocks=st.integers(4, 14),
    budget=st.sampled_from([4, 8, 16, 64]),
    max_num_seqs=st.integers(1, 5),
    async_scheduling=st.booleans(),
    stop_rate=st.sampled_from([0.0, 0.2]),
    cancels=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 12)), max_size=3),
    seed=st.integers(0, 1000),
)
def test_random_workloads_finish_with_correct_kv_and_empty_pool(reqs, num_blocks, budget, max_num_seqs,
                                                                 async_scheduling, stop_rate, cancels, seed):
    """Any mix of shared prefixes, forks, preemptions, early stops and cancels, with steps in flight
    or not: every computed KV slot holds what its tokens say, references match the tables after
    every step, and everything is returned at the end."""
    sim = Sim(num_blocks=num_blocks, budget=budget, max_num_seqs=max_num_seqs, async_scheduling=async_scheduling,
              stop_rate=stop_rate, seed=seed)
    prefixes = [[100 * (p + 1) + i for i in range(12)] for p in range(3)]
    by_step: dict[int, list] = {}
    for pid, pblocks, own, max_tokens, n, arrival in reqs:
        prompt = (prefixes[pid][:pblocks * 4] + own)[:sim.max_len - 1]
        by_step.setdefault(arrival, []).append((prompt, max_tokens, min(n, max_num_seqs)))
    cancel_at = {step: index for index, step in cancels}
    added = []
    step = 0
    while sim.engine.has_unfinished_requests() or any(k >= step for k in by_step):
        for prompt, max_tokens, n in by_step.pop(step, []):
            added.append(sim.add(prompt, max_tokens, n).request_id)
        if step in cancel_at and added:
            sim.engine.abort_request(added[cancel_at[step] % len(added)])
            sim.check_kv()
        step += 1
        if sim.engine.has_unfinished_requests():
            sim.step()
        assert sim.steps < 1000, "no progress"
    sim.assert_all_done()
    assert len(sim.all) <= sum(min(r[4], max_num_seqs) for r in reqs)
