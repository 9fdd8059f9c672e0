"""Shared prefixes hold their KV blocks once; multi-turn chats and n>1 samples reuse blocks."""
import pytest

from conftest import PASSAGE
from engine import LLM, SamplingParams
from engine.llm_engine import LLMEngine

SYSTEM = "You answer questions about this lighthouse history.\n\n" + PASSAGE * 4
USERS = ["Who rowed across the bay?", "When was the storm?", "What does the museum show?",
         "Who polishes the brass?", "What did the keeper carry?", "How are lighthouses run today?",
         "What is told at the festival?", "How old is the tower?"]


def conversations():
    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": u}] for u in USERS]


def common_prefix(lists):
    n = 0
    while all(len(x) > n and x[n] == lists[0][n] for x in lists):
        n += 1
    return n


@pytest.mark.usefixtures("both_schedulers")
def test_eight_chats_hold_the_system_prompt_once():
    engine = LLMEngine(num_kv_blocks=512)
    bs = engine.config.block_size
    prompts = [engine.tokenizer.apply_chat_template(c) for c in conversations()]
    shared_blocks = common_prefix(prompts) // bs
    assert shared_blocks * bs >= 512
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    ids = [engine.add_request(p, params) for p in prompts]

    seen_all_running = False
    outputs = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = out
        seqs = engine.scheduler.running
        if len(seqs) == 8 and not seen_all_running:
            seen_all_running = True
            tables = [s.block_table[:shared_blocks] for s in seqs]
            assert all(t == tables[0] for t in tables)  # the same physical blocks ...
            refs = [int(engine.block_manager.pool.ref_cnt[b]) for b in tables[0]]
            assert refs == [8] * shared_blocks  # ... each referenced by all eight chats
            stats = engine.stats()
            assert stats["blocks_shared"] >= shared_blocks
            assert stats["blocks_used"] < 2 * shared_blocks  # not 8 copies
    assert seen_all_running
    outs = [outputs[i] for i in ids]
    assert outs[0].metrics.num_cached_tokens == 0
    for i, out in enumerate(outs[1:], start=1):  # later chats prefill only what follows shared blocks
        best = max(common_prefix([prompts[i], prompts[j]]) for j in range(i)) // bs * bs
        assert out.metrics.num_cached_tokens == best >= shared_blocks * bs
    assert engine.stats()["blocks_used"] == 0

    unshared = LLM(num_kv_blocks=512, enable_prefix_caching=False).generate(prompts, params)
    assert [o.token_ids for o in outs] == [o.token_ids for o in unshared]
    assert all(o.metrics.num_cached_tokens == 0 for o in unshared)


@pytest.mark.usefixtures("both_schedulers")
def test_second_turn_reuses_first_turn_blocks():
    llm = LLM(num_kv_blocks=256)
    bs = llm.engine.config.block_size
    params = SamplingParams(max_tokens=48, temperature=0)
    turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USERS[0]}]
    first = llm.chat([turn1], params)[0]
    turn2 = turn1 + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Why did she do it?"}]
    second = llm.chat([turn2], params)[0]
    turn1_tokens = first.metrics.num_prompt_tokens + len(first.token_ids)
    # Everything of turn 1 that filled whole blocks (prompt and answer) is served from cache.
    assert second.metrics.num_cached_tokens >= (first.metrics.num_prompt_tokens // bs) * bs
    assert second.metrics.num_cached_tokens >= ((turn1_tokens - 2) // bs) * bs
    assert llm.stats()["prefix_hit_rate"] > 0


@pytest.mark.usefixtures("both_schedulers")
def test_n_samples_share_prompt_blocks_and_copy_on_write():
    engine = LLMEngine(num_kv_blocks=128)
    bs = engine.config.block_size
    prompt = engine.tokenizer.encode(PASSAGE)[: 3 * bs + 5]  # three full blocks and a partial one
    params = SamplingParams(n=4, max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    rid = engine.add_request(prompt, params)
    engine.step()  # prefill; the other three samples fork off here
    seqs = [s.seq for s in engine.requests[rid].samples]
    assert len(seqs) == 4
    assert all(s.block_table == seqs[0].block_table for s in seqs)
    assert [int(engine.block_manager.pool.ref_cnt[b]) for b in seqs[0].block_table] == [4] * 4
    engine.step()  # every sample appends into the shared partial block: three copy it
    tails = {s.block_table[3] for s in seqs}
    assert len(tails) == 4
    assert all(s.block_table[:3] == seqs[0].block_table[:3] for s in seqs)
    assert [int(engine.block_manager.pool.ref_cnt[b]) for b in seqs[0].block_table[:3]] == [4] * 3
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


@pytest.mark.usefixtures("both_schedulers")
def test_seeded_samples_reproduce():
    llm = LLM(num_kv_blocks=128)
    params = SamplingParams(n=3, max_tokens=16, temperature=0.9, top_p=0.95, seed=123)
    a = llm.generate(["Once upon a time"], params)[0]
    b = llm.generate(["Once upon a time"], params)[0]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    assert len({tuple(o.token_ids) for o in a.outputs}) > 1  # the samples differ from each other
    single = llm.generate(["Once upon a time"], SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=123))[0]
    assert single.token_ids == a.outputs[0].token_ids  # sample 0 does not depend on n


@pytest.mark.parametrize("blocks", [40])
@pytest.mark.usefixtures("both_schedulers")
def test_preemption_finishes_everything_with_the_same_text(blocks):
    prompts = [f"Story {i}: " + PASSAGE[: 200 + 40 * i] for i in range(6)]
    params = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
    roomy = LLM(num_kv_blocks=512).generate(prompts, params)
    tight = LLM(num_kv_blocks=blocks, max_num_batched_tokens=128)
    outs = tight.generate(prompts, params)
    assert tight.stats()["num_preemptions"] > 0
    assert [o.token_ids for o in outs] == [o.token_ids for o in roomy]
    assert tight.stats()["blocks_used"] == 0


@pytest.mark.usefixtures("both_schedulers")
def test_aborting_one_request_leaves_shared_params_alone():
    """Two requests share one SamplingParams(n=2); aborting one before it forks must not change
    how many samples the other gets, and must free everything."""
    engine = LLMEngine(num_kv_blocks=64)
    params = SamplingParams(n=2, max_tokens=4, temperature=0.8, seed=1)
    a = engine.add_request(engine.tokenizer.encode("First request"), params)
    b = engine.add_request(engine.tokenizer.encode("Second request"), params)
    aborted = engine.abort_request(a)
    assert aborted.finished and aborted.finish_reason == "abort" and len(aborted.outputs) == 1
    done = {}
    while engine.has_unfinished_requests():
        done.update((o.request_id, o) for o in engine.step() if o.finished)
    assert params.n == 2 and len(done[b].outputs) == 2
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
