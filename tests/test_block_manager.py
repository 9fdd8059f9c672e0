"""Block pool and block manager: pure bookkeeping, no model, no tensors.

The stateful test at the bottom simulates the KV cache itself: every slot records the exact token
prefix whose K/V it would hold, copy-on-write copies slots, and each computed token writes one.
Then "a block hit by the prefix cache holds the right KV" becomes a plain equality check; the
tiered machine carries those contents down to RAM and disk and back, with disk reads in flight
(advanced block by block by the machine), aborted and failing.
"""
from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import numpy as np
import torch

from engine.block_manager import BlockManager
from engine.block_pool import BlockPool, FreeBlockQueue
from engine.kv_tiers.disk_reader import DiskReader
from engine.kv_tiers.disk_store import BlockLayout, DiskKVStore
from engine.kv_tiers.disk_writer import DiskWriter
from engine.kv_tiers.fingerprint import chain_digest
from engine.kv_tiers.host_pool import HostKVPool
from engine.kv_tiers.tiers import KVTiers
from engine.prefix_hash import PrefixHasher
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

PARAMS = SamplingParams(max_tokens=1000)


def make_seq(seq_id: int, tokens, output=()) -> Sequence:
    return Sequence(seq_id, f"req-{seq_id}", list(tokens), PARAMS, output_token_ids=list(output))


def chain_hashes(tokens, bs: int) -> list[int]:
    return PrefixHasher(bs).chain(np.asarray(list(tokens), dtype=np.int64))[0]


def queue_ids(pool: BlockPool) -> list[int]:
    return list(pool.free_queue)


def toks(*values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


class ConstantHasher(PrefixHasher):
    """Every block gets the same key: only the token and parent checks tell blocks apart."""

    def chain_states(self, tokens, state):
        k = len(tokens) // self.block_size
        return [42] * k, np.zeros(k, dtype=np.uint64)

    def extend(self, state, block_tokens):
        return 42, 0


def run_to_end(bm: BlockManager, seq: Sequence, hit=None, next_token: int | None = None) -> None:
    """Admit-or-extend `seq` for all its uncomputed tokens, compute them, commit, like one step."""
    n = seq.num_tokens - (hit.num_blocks * bm.block_size if hit is not None and hit.num_blocks else seq.num_computed_tokens)
    assert bm.allocate(seq, n, hit) is not None
    seq.num_computed_tokens += n
    bm.commit(seq)
    if next_token is not None:
        seq.append_token(next_token)


# --------------------------------------------------------------------------- FreeBlockQueue


def test_free_queue_append_popleft_remove_order():
    q = FreeBlockQueue(6)
    assert list(q) == [0, 1, 2, 3, 4, 5]
    assert q.num_free == 6

    q.remove(2)  # from the middle
    assert list(q) == [0, 1, 3, 4, 5]
    assert q.num_free == 5 and 2 not in q and 3 in q
    # O(1) removal is by relinking the neighbours
    assert q._next[1] == 3 and q._prev[3] == 1

    assert q.popleft() == 0
    q.append(2)
    q.append(0)
    assert list(q) == [1, 3, 4, 5, 2, 0]

    q.remove(0)  # the tail
    q.remove(1)  # the head
    assert list(q) == [3, 4, 5, 2]
    assert q.num_free == 4
    assert [q.popleft() for _ in range(4)] == [3, 4, 5, 2]
    assert q.num_free == 0 and list(q) == []
    with pytest.raises(RuntimeError):
        q.popleft()


def test_free_queue_rejects_removing_a_block_that_is_not_in_it():
    q = FreeBlockQueue(3)
    q.remove(1)
    with pytest.raises(AssertionError):
        q.remove(1)
    with pytest.raises(AssertionError):
        q.append(0)  # already queued: appending twice would corrupt the list
    assert list(q) == [0, 2] and q.num_free == 2


# --------------------------------------------------------------------------- BlockPool


def test_pool_reuses_least_recently_freed_first():
    pool = BlockPool(5, 2)
    blocks = pool.allocate(5)
    assert blocks == [0, 1, 2, 3, 4]
    assert pool.num_free == 0 and pool.ref_cnt.tolist() == [1] * 5
    for i in (3, 0, 4, 1):
        pool.release([blocks[i]])
    assert queue_ids(pool) == [3, 0, 4, 1]
    assert pool.allocate() == [3]
    assert pool.allocate() == [0]
    pool.release([blocks[2]])
    assert pool.allocate(3) == [4, 1, 2]


def test_pool_release_of_a_free_block_is_a_double_free():
    pool = BlockPool(2, 2)
    (b,) = pool.allocate()
    pool.release([b])
    with pytest.raises(RuntimeError, match="double free"):
        pool.release([b])
    assert pool.num_free == 2 and pool.ref_cnt[b] == 0


def test_pool_evicts_cached_key_when_block_is_reallocated():
    pool = BlockPool(3, 2)
    a, b, c = pool.allocate(3)
    assert pool.cache(a, 111, -1, toks(1, 2))
    assert pool.cache(b, 222, -1, toks(3, 4))
    pool.release([a, b, c])
    # free blocks keep their cached prefix
    assert pool.match([111], toks(1, 2)[None]).tolist() == [a] and pool.match([222], toks(3, 4)[None]).tolist() == [b]
    assert pool.num_free == 3

    # a hit revives a free cached block: it leaves the free queue and keeps its key
    pool.touch([b])
    assert pool.ref_cnt[b] == 1 and queue_ids(pool) == [a, c]

    gen_before = int(pool.gen[a])
    assert pool.allocate() == [a]  # least recently freed
    assert not pool.is_cached[a] and pool.gen[a] == gen_before + 1
    assert 111 not in pool.cached and pool.match([111], toks(1, 2)[None]).tolist() == []
    assert pool.cached == {222: b}  # the revived block's prefix survives
    assert pool.allocate() == [c]
    with pytest.raises(RuntimeError):
        pool.allocate()


def test_pool_match_checks_tokens_and_first_cached_block_wins():
    pool = BlockPool(2, 2)
    a, b = pool.allocate(2)
    assert pool.cache(a, 7, -1, toks(1, 2))
    assert not pool.cache(b, 7, -1, toks(1, 2))  # same content computed twice: the first stays the cached one
    assert pool.cached == {7: a} and not pool.is_cached[b]
    assert pool.match([7], toks(1, 2)[None]).tolist() == [a]
    assert pool.match([7], toks(1, 3)[None]).tolist() == []  # same key, other tokens: a collision, not a hit


def test_pool_match_refuses_a_child_whose_parent_was_evicted_and_reused():
    """A cached block is valid only after the very prefix it was cached after: when its parent
    block is evicted and reused for other tokens, the child no longer matches, even if the new
    occupant is cached under the same key."""
    pool = BlockPool(4, 2)
    parent, child, other = pool.allocate(3)
    pool.cache(parent, 1, -1, toks(1, 2))
    pool.cache(child, 2, parent, toks(3, 4))
    assert pool.match([1, 2], np.stack([toks(1, 2), toks(3, 4)])).tolist() == [parent, child]
    pool.release([parent])
    pool.allocate(2)  # takes the free block 3, then `parent`, evicting its prefix
    pool.cache(parent, 1, -1, toks(1, 2))  # same key and tokens, recomputed into the same block
    assert pool.match([1, 2], np.stack([toks(1, 2), toks(3, 4)])).tolist() == [parent]


# --------------------------------------------------------------------------- prefix cache


def test_hashes_are_chained_over_full_blocks_only():
    bs = 4
    bm = BlockManager(16, bs)
    tokens = list(range(10))  # two full blocks and a partial one
    seq = make_seq(0, tokens)
    hashes = list(bm.block_keys(seq))
    assert len(hashes) == 2
    assert hashes == chain_hashes(range(8), bs)
    assert chain_hashes([0, 1, 2, 3, 9, 9, 9, 9], bs)[0] == hashes[0]  # a key covers its prefix only
    # the same second block after a different first block has a different key
    other = make_seq(1, [9, 1, 2, 3, 4, 5, 6, 7, 8])
    assert bm.block_keys(other)[1] != hashes[1]

    run_to_end(bm, seq, bm.find_prefix(seq))
    # the partial third block is computed but never published
    assert len(bm.pool.cached) == 2
    assert set(bm.pool.cached.values()) == set(seq.block_table[:2])
    assert not bm.pool.is_cached[seq.block_table[2]]

    # more tokens fill the third block: now it is published, chained to the second
    seq.output_token_ids.extend([10, 11])
    run_to_end(bm, seq)
    h2 = chain_hashes(range(12), bs)[2]
    assert bm.block_keys(seq) == hashes + [h2]
    assert bm.pool.cached[h2] == seq.block_table[2]


def test_prefix_hits_stop_at_first_mismatch():
    bs = 4
    bm = BlockManager(32, bs)
    a = make_seq(0, list(range(13)))  # 3 full blocks + 1 token
    run_to_end(bm, a, bm.find_prefix(a))
    assert len(bm.pool.cached) == 3

    same = make_seq(1, list(range(13)))
    hit = bm.find_prefix(same)
    assert hit.blocks.tolist() == a.block_table[:3]
    assert not hit.next_block_pending

    diverge_second = make_seq(2, [0, 1, 2, 3, 4, 5, 6, 99, 8, 9, 10, 11, 12])
    assert bm.find_prefix(diverge_second).blocks.tolist() == a.block_table[:1]

    diverge_first = make_seq(3, [99] + list(range(1, 13)))  # blocks 2 and 3 equal, prefix not
    assert bm.find_prefix(diverge_first).blocks.tolist() == []

    prefix_caching_off = BlockManager(32, bs, enable_prefix_caching=False)
    b = make_seq(4, list(range(13)))
    run_to_end(prefix_caching_off, b, prefix_caching_off.find_prefix(b))
    assert prefix_caching_off.pool.cached == {}
    assert prefix_caching_off.find_prefix(make_seq(5, list(range(13)))).blocks.tolist() == []


def test_hit_is_confirmed_by_tokens_under_hash_collision():
    """With every key equal, only the token check tells blocks apart."""
    bs = 4
    bm = BlockManager(8, bs)
    bm.hasher = ConstantHasher(bs)
    a = make_seq(0, [1, 2, 3, 4, 5])
    run_to_end(bm, a, bm.find_prefix(a))
    assert list(bm.pool.cached) == [42]

    b = make_seq(1, [9, 9, 9, 9, 5])  # same key, different tokens
    hit = bm.find_prefix(b)
    assert hit.blocks.tolist() == []
    assert bm.allocate(b, b.num_tokens, hit) == []
    assert b.num_computed_tokens == 0
    assert a.block_table[0] not in b.block_table

    c = make_seq(2, [1, 2, 3, 4, 7])  # same key, same tokens: a genuine hit
    assert bm.find_prefix(c).blocks.tolist() == a.block_table[:1]


def test_hit_is_confirmed_by_whole_prefix_under_hash_collision():
    bs = 4
    bm = BlockManager(8, bs)
    bm.hasher = ConstantHasher(bs)
    a = make_seq(0, [1, 2, 3, 4, 5])
    run_to_end(bm, a, bm.find_prefix(a))

    # block 1 of `b` has the tokens of `a`'s block 0 but follows [1, 2, 3, 4]: its KV differs
    b = make_seq(1, [1, 2, 3, 4, 1, 2, 3, 4, 5])
    hit = bm.find_prefix(b)
    assert hit.blocks.tolist() == a.block_table[:1]


def test_full_prompt_hit_leaves_last_block_to_compute():
    bs = 4
    bm = BlockManager(8, bs)
    a = make_seq(0, list(range(8)))  # exactly two blocks
    hit = bm.find_prefix(a)
    assert hit.blocks.tolist() == []
    run_to_end(bm, a, hit)
    a_table = list(a.block_table)
    h0, h1 = chain_hashes(range(8), bs)
    assert bm.pool.cached == {h0: a_table[0], h1: a_table[1]}

    b = make_seq(1, list(range(8)))
    hit = bm.find_prefix(b)
    assert hit.blocks.tolist() == a_table[:1]  # not both: the last token needs logits
    free_before = bm.num_free_blocks
    assert bm.allocate(b, b.num_tokens - bs, hit) == []
    assert b.num_computed_tokens == 4
    assert b.block_table[0] == a_table[0] and b.block_table[1] != a_table[1]
    assert bm.num_free_blocks == free_before - 1  # the hit block was in use: only one fresh block
    assert bm.pool.ref_cnt[a_table[0]] == 2

    # one token past the boundary: both full blocks can be hit
    c = make_seq(2, list(range(8)) + [100])
    assert bm.find_prefix(c).blocks.tolist() == a_table


def test_finished_sequence_tail_is_evicted_before_its_prefix():
    bs = 4
    bm = BlockManager(4, bs)
    a = make_seq(0, list(range(14)))  # blocks: 3 full + 1 partial
    run_to_end(bm, a, bm.find_prefix(a))
    table = list(a.block_table)
    assert len(table) == 4 and bm.num_free_blocks == 0
    bm.free(a)
    assert queue_ids(bm.pool) == table[::-1]  # tail first into the queue, so evicted first

    # each new single-block request evicts from the tail of `a`
    x = make_seq(1, [100, 101])
    run_to_end(bm, x, bm.find_prefix(x))
    assert x.block_table == [table[3]]
    y = make_seq(2, [200, 201])
    run_to_end(bm, y, bm.find_prefix(y))
    assert y.block_table == [table[2]]
    # the prefix of `a` is still there
    again = make_seq(3, list(range(14)))
    assert bm.find_prefix(again).blocks.tolist() == table[:2]


# --------------------------------------------------------------------------- copy-on-write


def _forked_pair(bm: BlockManager, prompt):
    parent = make_seq(0, prompt)
    run_to_end(bm, parent, bm.find_prefix(parent))
    child = make_seq(1, prompt)
    bm.fork(parent, child)
    parent.append_token(500)  # as the engine does: fork, then each sample gets its own token
    child.append_token(600)
    return parent, child


def test_copy_on_write_of_shared_partial_last_block():
    bs = 4
    bm = BlockManager(8, bs)
    parent, child = _forked_pair(bm, [1, 2, 3, 4, 5, 6])  # last block holds 2 of 4 tokens
    p0, p1 = parent.block_table
    assert child.block_table == [p0, p1]
    assert child.num_computed_tokens == parent.num_computed_tokens == 6
    refs = bm.pool.ref_cnt
    assert refs[p0] == 2 and refs[p1] == 2
    free_before = bm.num_free_blocks

    copies = bm.allocate(child, 1)
    assert copies is not None and len(copies) == 1
    src, dst = copies[0]
    assert src == p1 and dst not in (p0, p1)
    assert child.block_table == [p0, dst]  # only the written index changed
    assert parent.block_table == [p0, p1]
    assert refs[p0] == 2 and refs[p1] == 1 and refs[dst] == 1
    assert bm.num_free_blocks == free_before - 1

    assert bm.allocate(parent, 1) == []  # the parent owns p1 alone now: no copy
    assert parent.block_table == [p0, p1]
    assert bm.num_free_blocks == free_before - 1

    bm.free(child)
    bm.free(parent)
    assert bm.num_free_blocks == 8 and not refs.any()


def test_copy_on_write_when_parent_writes_first_and_with_two_children():
    bs = 4
    bm = BlockManager(8, bs)
    parent, child = _forked_pair(bm, [1, 2, 3, 4, 5])
    child2 = make_seq(2, [1, 2, 3, 4, 5], output=[700])
    bm.fork(child, child2)  # all three share both blocks
    p0, p1 = child2.block_table
    assert bm.pool.ref_cnt[p1] == 3 and bm.pool.ref_cnt[p0] == 3

    (src, dst), = bm.allocate(parent, 1)
    assert src == p1 and parent.block_table == [p0, dst]
    (src2, dst2), = bm.allocate(child2, 1)
    assert src2 == p1 and dst2 != dst and child2.block_table == [p0, dst2]
    assert bm.allocate(child, 1) == []  # the last holder writes in place
    assert child.block_table == [p0, p1]
    assert [bm.pool.ref_cnt[i] for i in (p0, p1, dst, dst2)] == [3, 1, 1, 1]


def test_fork_at_block_boundary_needs_no_copy():
    bs = 4
    bm = BlockManager(8, bs)
    parent, child = _forked_pair(bm, [1, 2, 3, 4, 5, 6, 7, 8])  # both blocks full
    shared = list(parent.block_table)
    assert bm.allocate(child, 1) == []
    assert child.block_table[:2] == shared and len(child.block_table) == 3
    assert bm.allocate(parent, 1) == []
    assert parent.block_table[:2] == shared and parent.block_table[2] != child.block_table[2]
    assert all(bm.pool.ref_cnt[i] == 2 for i in shared)


# --------------------------------------------------------------------------- allocation failure


def _snapshot(bm: BlockManager, *seqs: Sequence):
    return (
        bm.num_free_blocks,
        queue_ids(bm.pool),
        bm.pool.ref_cnt.tolist(),
        dict(bm.pool.cached),
        [(list(s.block_table), s.num_computed_tokens) for s in seqs],
    )


def test_allocate_too_big_returns_none_and_changes_nothing():
    bs = 4
    bm = BlockManager(3, bs)
    big = make_seq(0, list(range(13)))  # needs 4 blocks
    hit = bm.find_prefix(big)
    before = _snapshot(bm, big)
    assert bm.allocate(big, big.num_tokens, hit) is None
    assert _snapshot(bm, big) == before
    assert bm.num_free_blocks == 3


def test_allocate_with_prefix_hit_too_big_changes_nothing():
    bs = 4
    bm = BlockManager(3, bs)
    a = make_seq(0, list(range(9)))  # 3 blocks, 2 of them cached
    run_to_end(bm, a, bm.find_prefix(a))
    bm.free(a)
    b = make_seq(1, list(range(16)))  # hits 2 (free, cached) blocks, needs 2 more: 4 > 3
    hit = bm.find_prefix(b)
    assert hit.num_blocks == 2
    before = _snapshot(bm, b)
    assert bm.allocate(b, b.num_tokens - 2 * bs, hit) is None
    assert _snapshot(bm, b) == before
    assert all(bm.pool.ref_cnt[blk] == 0 for blk in hit.blocks)  # the hit blocks were not revived
    # and the same hit still works once the request fits
    c = make_seq(2, list(range(12)))
    hit_c = bm.find_prefix(c)
    assert hit_c.num_blocks == 2
    assert bm.allocate(c, 4, hit_c) == []
    assert c.block_table[:2] == hit.blocks.tolist()


def test_allocate_needing_copy_on_write_without_room_changes_nothing():
    bs = 4
    bm = BlockManager(2, bs)
    parent, child = _forked_pair(bm, [1, 2, 3, 4, 5])
    assert bm.num_free_blocks == 0
    before = _snapshot(bm, parent, child)
    assert bm.allocate(child, 1) is None
    assert _snapshot(bm, parent, child) == before


# --------------------------------------------------------------------------- stateful


BS = 4
NUM_BLOCKS = 16
MAX_LEN = 28  # a sequence reaching this many tokens finishes (the engine's max_model_len)
ALPHABET = st.integers(0, 1)


class BlockManagerMachine(RuleBasedStateMachine):
    """Drives BlockManager as the scheduler and runner would, tracking what every KV slot holds.

    A slot's content is the token prefix its K/V depends on: `tuple(tokens[:position + 1])`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bm = BlockManager(NUM_BLOCKS, BS)
        self.pool = self.bm.pool
        self.live: dict[int, Sequence] = {}
        self.uncomputed: dict[int, int] = {}  # seq_id -> tokens allocated, not computed yet
        self.waiting: list[Sequence] = []  # preempted, or waiting for a disk read: to be admitted again
        self.content: list[list[tuple | None]] = [[None] * BS for _ in range(NUM_BLOCKS)]
        self.prefix_of_hash: dict[int, tuple[int, ...]] = {}
        self.next_id = 0
        self.fresh = 1000
        self.rng = random.Random(0)

    # ------------------------------------------------------------------ helpers

    def _new_seq(self, tokens) -> Sequence:
        seq = make_seq(self.next_id, tokens)
        self.next_id += 1
        return seq

    def _pick(self, seqs, idx):
        seqs = sorted(seqs, key=lambda s: s.seq_id)
        return seqs[idx % len(seqs)]

    def _record(self, seq: Sequence) -> None:
        tokens = tuple(seq.token_ids)
        for i, h in enumerate(chain_hashes(tokens, BS)):
            prefix = tokens[:(i + 1) * BS]
            known = self.prefix_of_hash.setdefault(h, prefix)
            assert known == prefix, "real hash collision in the test data"

    def _admit(self, seq: Sequence, chunk: int) -> bool:
        """Admit as the scheduler does; False when the pool is too small or the sequence waits for
        a disk read (it is then in `waiting`, holding its ticket)."""
        ticket = self.bm._reads.get(seq.seq_id)
        read_done = ticket is not None and ticket.done
        hit = self.bm.find_prefix(seq)
        if hit.loading:
            assert not read_done, "a sequence whose read is done waited again"
            assert self.bm._reads[seq.seq_id] is not None and hit.loads == []
            if seq not in self.waiting:
                self.waiting.append(seq)
            return False
        assert seq.seq_id not in self.bm._reads, "a ticket outlived its lookup"
        tokens = seq.token_ids
        k = hit.num_blocks  # device blocks, then blocks from RAM or disk
        on_device = len(hit.blocks)
        assert k * BS < seq.num_tokens, "a hit must leave at least the last token to compute"
        hashes = chain_hashes(tokens, BS)
        for i, blk in enumerate(hit.blocks):
            assert self.pool.block_key[blk] == hashes[i] and self.pool.is_cached[blk]
            assert tuple(self.pool.tokens[blk].tolist()) == tuple(tokens[i * BS:(i + 1) * BS])
        assert [h.key for h in hit.loads] == hashes[on_device:k]
        n = min(chunk, seq.num_tokens - k * BS)
        before = _snapshot(self.bm, seq)
        copies = self.bm.allocate(seq, n, hit)
        if copies is None:
            assert _snapshot(self.bm, seq) == before
            revived = sum(1 for b in hit.blocks if self.pool.ref_cnt[b] == 0)
            assert revived + len(hit.loads) + -(-(k * BS + n) // BS) - k > before[0]
            return False
        assert copies == []
        assert seq.num_computed_tokens == k * BS
        assert seq.block_table[:on_device] == hit.blocks.tolist()
        assert len(set(seq.block_table[on_device:k]) & set(before[1])) == len(hit.loads), "loads take free blocks"
        assert len(seq.block_table) == -(-(k * BS + n) // BS)
        self.live[seq.seq_id] = seq
        self.uncomputed[seq.seq_id] = n
        return True

    def _compute(self, seq: Sequence) -> None:
        n = self.uncomputed[seq.seq_id]
        tokens = seq.token_ids
        for p in range(seq.num_computed_tokens, seq.num_computed_tokens + n):
            block = seq.block_table[p // BS]
            refs = self.pool.ref_cnt[block]
            assert refs == 1, f"writing into block {block} shared {refs} ways"
            assert not self.pool.is_cached[block], f"writing into cached block {block}"
            self.content[block][p % BS] = tuple(tokens[:p + 1])
        seq.num_computed_tokens += n
        self.uncomputed[seq.seq_id] = 0
        self.bm.commit(seq)
        self._record(seq)
        if seq.num_computed_tokens == seq.num_tokens:
            seq.append_token(self.rng.randint(0, 1))
            if seq.num_tokens >= MAX_LEN:
                self._free(seq)

    def _free(self, seq: Sequence) -> None:
        table = list(seq.block_table)
        refs = {i: int(self.pool.ref_cnt[i]) for i in table}
        self.bm.free(seq)
        assert seq.block_table == []
        for i in table:
            assert self.pool.ref_cnt[i] == refs[i] - 1
        zeroed = [i for i in reversed(table) if refs[i] == 1]
        q = queue_ids(self.pool)
        assert q[len(q) - len(zeroed):] == zeroed, "freed blocks must join the queue tail first"
        del self.live[seq.seq_id]
        del self.uncomputed[seq.seq_id]

    # ------------------------------------------------------------------ rules

    @rule(tokens=st.lists(ALPHABET, min_size=1, max_size=18), chunk=st.integers(1, 20))
    def add_sequence(self, tokens, chunk):
        self._admit(self._new_seq(tokens), chunk)

    @precondition(lambda self: self.live)
    @rule(idx=st.integers(0, 100), blocks=st.integers(1, 6), suffix=st.lists(ALPHABET, max_size=6),
          chunk=st.integers(1, 20))
    def add_sharing_sequence(self, idx, blocks, suffix, chunk):
        """A request that starts with another's first blocks (a shared system prompt or document);
        an empty suffix makes a prompt of whole, possibly all cached, blocks."""
        src = self._pick(self.live.values(), idx)
        tokens = (src.token_ids[:blocks * BS] + suffix)[:MAX_LEN - 2] or suffix or [0]
        self._admit(self._new_seq(tokens), chunk)

    @precondition(lambda self: self.waiting)
    @rule(idx=st.integers(0, 100), chunk=st.integers(1, 30))
    def readmit_waiting(self, idx, chunk):
        """A preempted sequence, or one that waits for a disk read, tries again."""
        seq = self._pick(self.waiting, idx)
        if self._admit(seq, chunk):
            self.waiting.remove(seq)

    @precondition(lambda self: any(n == 0 for n in self.uncomputed.values()))
    @rule(idx=st.integers(0, 100), chunk=st.integers(1, 12))
    def allocate_more(self, idx, chunk):
        seq = self._pick([self.live[i] for i, n in self.uncomputed.items() if n == 0], idx)
        n = min(chunk, seq.num_tokens - seq.num_computed_tokens)
        before = _snapshot(self.bm, seq)
        write_idx = seq.num_computed_tokens // BS
        copies = self.bm.allocate(seq, n)
        if copies is None:
            assert _snapshot(self.bm, seq) == before
            return
        assert len(copies) <= 1
        old_table = before[4][0][0]
        for src, dst in copies:
            assert old_table[write_idx] == src and seq.block_table[write_idx] == dst
            assert self.pool.ref_cnt[src] >= 1 and self.pool.ref_cnt[dst] == 1
            self.content[dst] = list(self.content[src])
        expected = list(old_table)
        if copies:
            expected[write_idx] = copies[0][1]
        assert seq.block_table[:len(old_table)] == expected
        assert len(seq.block_table) == max(len(old_table), -(-(seq.num_computed_tokens + n) // BS))
        self.uncomputed[seq.seq_id] = n

    @precondition(lambda self: any(n > 0 for n in self.uncomputed.values()))
    @rule(idx=st.integers(0, 100))
    def compute(self, idx):
        self._compute(self._pick([self.live[i] for i, n in self.uncomputed.items() if n > 0], idx))

    @precondition(lambda self: any(n == 0 and self.live[i].num_tokens - self.live[i].num_computed_tokens == 1
                                   for i, n in self.uncomputed.items()))
    @rule(idx=st.integers(0, 100), token=ALPHABET)
    def fork(self, idx, token):
        parent = self._pick([self.live[i] for i, n in self.uncomputed.items()
                             if n == 0 and self.live[i].num_tokens - self.live[i].num_computed_tokens == 1], idx)
        child = make_seq(self.next_id, parent.prompt_token_ids, parent.output_token_ids[:-1] + [token])
        self.next_id += 1
        refs = [int(self.pool.ref_cnt[i]) for i in parent.block_table]
        self.bm.fork(parent, child)
        assert child.block_table == parent.block_table
        assert child.num_computed_tokens == parent.num_computed_tokens
        assert [int(self.pool.ref_cnt[i]) for i in parent.block_table] == [r + 1 for r in refs]
        self.live[child.seq_id] = child
        self.uncomputed[child.seq_id] = 0

    @precondition(lambda self: self.live)
    @rule(idx=st.integers(0, 100))
    def free(self, idx):
        self._free(self._pick(self.live.values(), idx))

    @precondition(lambda self: any(n == 0 for n in self.uncomputed.values()))
    @rule(idx=st.integers(0, 100))
    def preempt(self, idx):
        seq = self._pick([self.live[i] for i, n in self.uncomputed.items() if n == 0], idx)
        self._free(seq)
        seq.num_computed_tokens = 0
        self.waiting.append(seq)

    @rule()
    def flood_until_eviction(self):
        """Fresh requests with unseen tokens take blocks from the LRU head until a cached prefix
        is evicted (or the pool is full)."""
        for _ in range(NUM_BLOCKS):
            tokens = list(range(self.fresh, self.fresh + 2 * BS + 1))
            self.fresh += 2 * BS + 1
            seq = self._new_seq(tokens)
            hit = self.bm.find_prefix(seq)
            assert hit.blocks.tolist() == []
            cached_before = dict(self.pool.cached)
            lru = queue_ids(self.pool)[:3]
            if not self._admit(seq, seq.num_tokens):
                assert self.bm.num_free_blocks < 3
                return
            assert seq.block_table == lru, "fresh blocks must come least recently freed first"
            evicted = {h: b for h, b in cached_before.items() if h not in self.pool.cached}
            for h, b in evicted.items():
                assert b in seq.block_table and not self.pool.is_cached[b]
            for i in seq.block_table:  # every block it took lost its old prefix
                assert not self.pool.is_cached[i]
            assert len(cached_before) - len(evicted) == len(self.pool.cached)
            self._compute(seq)
            if evicted:
                return

    # ------------------------------------------------------------------ invariants

    @invariant()
    def ref_counts_match_block_tables(self):
        holders = [0] * NUM_BLOCKS
        for seq in self.live.values():
            assert len(set(seq.block_table)) == len(seq.block_table), "a block twice in one table"
            for i in seq.block_table:
                holders[i] += 1
        for seq in self.waiting:
            assert seq.block_table == []
        refs = self.pool.ref_cnt.tolist()
        assert all(r >= 0 for r in refs)
        assert sum(refs) == sum(len(s.block_table) for s in self.live.values()), "leaked block reference"
        assert refs == holders

    @invariant()
    def free_queue_is_exactly_the_unreferenced_blocks(self):
        q = queue_ids(self.pool)
        assert len(q) == len(set(q)), "a block is in the free queue twice"
        assert len(q) == self.pool.num_free == self.bm.num_free_blocks
        assert set(q) == {b for b in range(NUM_BLOCKS) if self.pool.ref_cnt[b] == 0}
        # the backward links agree with the forward ones
        fq = self.pool.free_queue
        back, node = [], fq._prev[fq._tail]
        while node != fq._head:
            back.append(node)
            node = fq._prev[node]
        assert back[::-1] == q

    @invariant()
    def cached_blocks_hold_their_prefix(self):
        for seq in self.live.values():
            self._record(seq)
        for h, block in self.pool.cached.items():
            assert self.pool.block_key[block] == h and self.pool.is_cached[block]
            assert h in self.prefix_of_hash, "cached key made from tokens no sequence had"
            prefix = self.prefix_of_hash[h]
            assert chain_hashes(prefix, BS)[-1] == h
            assert tuple(self.pool.tokens[block].tolist()) == prefix[-BS:]
            start = len(prefix) - BS
            assert self.content[block] == [prefix[:start + i + 1] for i in range(BS)], \
                f"block {block} cached under a prefix its KV does not hold"
        for block in range(NUM_BLOCKS):
            if self.pool.is_cached[block]:
                assert self.pool.cached.get(self.pool.block_key[block]) == block

    @invariant()
    def computed_tokens_are_in_the_cache(self):
        for seq in self.live.values():
            tokens = seq.token_ids
            c, n = seq.num_computed_tokens, self.uncomputed[seq.seq_id]
            assert len(seq.block_table) >= -(-(c + n) // BS)
            for p in range(c):
                assert self.content[seq.block_table[p // BS]][p % BS] == tuple(tokens[:p + 1]), \
                    f"seq {seq.seq_id} position {p} reads KV of another prefix"

    def teardown(self):
        for seq in list(self.live.values()):
            self._free(seq)
        for seq in self.waiting:
            self.bm.free(seq)
        assert self.bm.num_free_blocks == NUM_BLOCKS
        assert not self.pool.ref_cnt.any()
        assert sorted(queue_ids(self.pool)) == list(range(NUM_BLOCKS))
        # a pending mark that outlives its sequence would defer matching requests forever
        assert not self.bm._pending


BlockManagerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestBlockManagerStateful = BlockManagerMachine.TestCase


def test_a_long_prompt_hits_every_block_it_shares():
    """A 4096-token document: a second prompt over it hits all 256 of its blocks; one that
    differs at token 3000 hits exactly the 187 blocks before it."""
    bs = 16
    bm = BlockManager(600, bs)
    doc = np.random.default_rng(0).integers(0, 50_000, 4096).tolist()
    a = make_seq(0, doc + [1])
    run_to_end(bm, a, bm.find_prefix(a))
    b = make_seq(1, doc + [2, 3])
    assert bm.find_prefix(b).blocks.tolist() == a.block_table[:256]
    edited = list(doc)
    edited[3000] += 1
    c = make_seq(2, edited + [4])
    assert bm.find_prefix(c).blocks.tolist() == a.block_table[:3000 // bs]


def test_a_sequence_sharing_blocks_with_the_last_one_reuses_their_keys():
    """Chats over one document hash it once: the keys of shared leading blocks are taken from the
    last sequence keyed, and equal what a fresh hash gives; where the tokens part, hashing resumes."""
    bs = 4
    bm = BlockManager(32, bs)
    doc = list(range(100, 120))  # five full blocks
    a, b = make_seq(0, doc + [1, 2, 3, 4]), make_seq(1, doc + [5, 6, 7, 8])
    fresh = BlockManager(32, bs)
    assert bm.block_keys(a) == fresh.block_keys(make_seq(2, doc + [1, 2, 3, 4]))
    keys_b = bm.block_keys(b)
    assert keys_b == fresh.block_keys(make_seq(3, doc + [5, 6, 7, 8]))
    assert keys_b[:5] == bm.block_keys(a)[:5] and keys_b[5] != bm.block_keys(a)[5]
    c = make_seq(4, [999] + doc[1:] + [1, 2, 3, 4])  # parts at the first block: nothing shared
    assert bm.block_keys(c) == fresh.block_keys(make_seq(5, [999] + doc[1:] + [1, 2, 3, 4]))


def test_chats_arriving_together_reuse_the_last_hit_until_a_block_of_it_is_evicted():
    """Admitting many chats over one document takes the last hit again without re-checking every
    block, while nothing has been evicted since; an eviction in between (here of the hit's last
    block, reallocated to another prompt) makes the next chat match again and hit less."""
    bs = 4
    bm = BlockManager(8, bs)
    doc = list(range(100, 116))  # four full blocks
    first = make_seq(0, doc + [1])
    run_to_end(bm, first, bm.find_prefix(first))
    table = list(first.block_table)
    bm.free(first)
    assert bm.pool.num_free == 8 and bm.pool.stats()["blocks_cached"] == 4

    second = make_seq(1, doc + [2])
    hit = bm.find_prefix(second)
    assert hit.blocks.tolist() == table[:4] and hit.num_revived == 4
    assert bm.allocate(second, 1, hit) is not None
    third = make_seq(2, doc + [3])
    again = bm.find_prefix(third)  # the remembered hit: its blocks are held by `second` now
    assert again.blocks.tolist() == table[:4] and again.num_revived == 0
    bm.free(second)  # the document's blocks go back to the free queue, last block first
    evictions = bm.pool.num_evictions
    other = make_seq(3, list(range(500, 517)))  # five blocks: the four without a prefix, then the document's last
    assert bm.allocate(other, 17, bm.find_prefix(other)) is not None
    assert bm.pool.num_evictions == evictions + 1 and not bm.pool.is_cached[table[3]]
    fourth = make_seq(4, doc + [4])
    assert bm.find_prefix(fourth).blocks.tolist() == table[:3]


def test_a_remembered_hit_counts_its_free_blocks_again_once_a_block_is_freed():
    """The last hit's blocks count as held, without looking, only while no block has been freed
    since a sequence took them; once its holders are freed, the next chat over the document counts
    them as free again, and taking them takes them out of the free queue."""
    bs = 4
    bm = BlockManager(8, bs)
    doc = list(range(100, 116))  # four full blocks
    first = make_seq(0, doc + [1])
    run_to_end(bm, first, bm.find_prefix(first))
    second = make_seq(1, doc + [2])
    hit = bm.find_prefix(second)
    assert hit.num_revived == 0 and bm.allocate(second, 1, hit) is not None
    bm.free(first)
    bm.free(second)
    third = make_seq(2, doc + [3])
    hit = bm.find_prefix(third)  # the remembered hit, whose blocks are all free now
    assert hit.blocks.tolist() == first_blocks(bm, doc) and hit.num_revived == 4
    assert bm.allocate(third, 1, hit) is not None
    assert not any(b in bm.pool.free_queue for b in third.block_table)
    assert bm.pool.num_free == 8 - len(third.block_table)


def first_blocks(bm: BlockManager, doc: list[int]) -> list[int]:
    """The cached blocks holding `doc`, looked up key by key."""
    return [bm.pool.cached[k] for k in bm.block_keys(make_seq(99, doc + [0]))[:len(doc) // bm.block_size]]


def test_the_last_hit_is_taken_again_only_for_the_same_tokens():
    """Under a hash that gives every block one key, a prompt whose keys equal the last hit's but
    whose tokens differ is matched block by block: it gets no block it does not share."""
    bs = 4
    bm = BlockManager(16, bs)
    bm.hasher = ConstantHasher(bs)  # one key for all: the pool caches one block under it
    first = make_seq(0, [100, 101, 102, 103, 1])
    run_to_end(bm, first, bm.find_prefix(first))
    same = make_seq(1, [100, 101, 102, 103, 2])
    assert bm.find_prefix(same).blocks.tolist() == first.block_table[:1]
    edited = make_seq(2, [100, 101, 999, 103, 3])
    assert bm.find_prefix(edited).blocks.tolist() == []
    assert bm.find_prefix(make_seq(3, [100, 101, 102, 103, 4])).blocks.tolist() == first.block_table[:1]


# --------------------------------------------------------------------------- stateful, with KV tiers

ROW_BYTES = 4096  # a simulated block: its slots' contents as JSON


def encode(content: list) -> np.ndarray:
    raw = json.dumps(content).encode()
    assert len(raw) <= ROW_BYTES
    return np.frombuffer(bytearray(raw.ljust(ROW_BYTES)), dtype=np.uint8)


def decode(row) -> list:
    return [None if c is None else tuple(c) for c in json.loads(bytes(np.asarray(row)).decode())]


class ContentCopier:
    """KVCopier's contract over the simulated cache: blocks are the machine's `content` lists."""

    def __init__(self, content: list[list]) -> None:
        self.content = content

    def run(self, plan, host, staging) -> None:
        for block, slot in plan.offload:
            host[slot] = torch.from_numpy(encode(self.content[block]))
        for slot, block in plan.load:
            self.content[block] = decode(host[slot].numpy())
        for block, row in plan.stage:
            staging[row] = torch.from_numpy(encode(self.content[block]))

    def before_host_write(self, slot: int) -> None:
        pass


RAM_SLOTS = 10


class TieredBlockManagerMachine(BlockManagerMachine):
    """The same rules over a block manager with a 10-slot RAM tier and a disk tier (every prompt of
    8 tokens or more is written), plus restarts: a new device pool and RAM over the same disk.
    Every block that comes back from a tier must hold its prefix, and nothing may leak."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="folio-bm-tiers-"))
        self.store = DiskKVStore(self.folder, b"F" * 16, BlockLayout("uint8", (ROW_BYTES,), ROW_BYTES), BS, 1 << 30)
        self.damaged: set[int] = set()  # keys whose file the machine deleted or corrupted
        super().__init__()
        self._start()

    def _start(self) -> None:
        """A fresh device pool and RAM tier (the disk store stays): what a restart does."""
        self.content = [[None] * BS for _ in range(NUM_BLOCKS)]
        self.writer = DiskWriter(self.store, NUM_BLOCKS, pin=False)
        host = HostKVPool(RAM_SLOTS, ROW_BYTES, BS, pin=False)
        self.reader = DiskReader(self.store, start_thread=False)  # advanced by the reader_reads rule
        self.tiers = KVTiers(ContentCopier(self.content), host, b"R" * 16, 0, NUM_BLOCKS, self.store, self.writer,
                             min_disk_tokens=8, reader=self.reader)
        self.bm = BlockManager(NUM_BLOCKS, BS, tiers=self.tiers)
        self.pool = self.bm.pool

    def _expected(self, key: int) -> list:
        prefix = self.prefix_of_hash[key]
        start = len(prefix) - BS
        return [prefix[:start + i + 1] for i in range(BS)]

    @precondition(lambda self: self.prefix_of_hash)
    @rule(idx=st.integers(0, 10_000), suffix=st.lists(ALPHABET, max_size=6), chunk=st.integers(1, 20))
    def add_remembered_sequence(self, idx, suffix, chunk):
        """A request over a prefix seen before, wherever its blocks are now (device, RAM, disk)."""
        prefixes = sorted(self.prefix_of_hash.values())
        tokens = (list(prefixes[idx % len(prefixes)]) + suffix)[:MAX_LEN - 2]
        self._admit(self._new_seq(tokens), chunk)

    @precondition(lambda self: self.reader._q.reads)
    @rule(blocks=st.integers(1, 6))
    def reader_reads(self, blocks):
        """The reader thread's progress: a few blocks of the queued reads."""
        self.reader.run_queued(blocks)

    @rule()
    def collect_reads(self):
        """What each schedule does first."""
        self.bm.collect_reads()

    @precondition(lambda self: any(s.seq_id in self.bm._reads for s in self.waiting))
    @rule(idx=st.integers(0, 100), chunk=st.integers(1, 20))
    def admit_once_read(self, idx, chunk):
        """The reads finish and are collected; a sequence waiting for one is admitted with what it
        brought (or fails for room) and never waits again."""
        self.reader.run_queued()
        self.bm.collect_reads()
        seq = self._pick([s for s in self.waiting if s.seq_id in self.bm._reads], idx)
        if self._admit(seq, chunk):
            self.waiting.remove(seq)

    @rule(idx=st.integers(0, 10_000), suffix=st.lists(ALPHABET, max_size=6), chunk=st.integers(1, 20))
    def restart_and_remember(self, idx, suffix, chunk):
        """A restart, then a request over a prefix seen before: what is on disk is read."""
        self.restart()
        if self.prefix_of_hash:
            self.add_remembered_sequence(idx, suffix, chunk)

    @precondition(lambda self: any(s.seq_id in self.bm._reads for s in self.waiting))
    @rule(idx=st.integers(0, 100))
    def abort_while_reading(self, idx):
        seq = self._pick([s for s in self.waiting if s.seq_id in self.bm._reads], idx)
        self.bm.free(seq)
        self.waiting.remove(seq)
        assert seq.seq_id not in self.bm._reads

    @precondition(lambda self: self.store.known)
    @rule(idx=st.integers(0, 10_000), how=st.sampled_from(["delete", "corrupt"]))
    def damage_a_file(self, idx, how):
        """A file vanishes (another process's cap, `folio cache --clear`) or rots, perhaps while a
        read of it is queued: the read stops there and the blocks are computed."""
        assert self.writer.drain(30)
        key = sorted(self.store.known)[idx % len(self.store.known)]
        path = self.store.path(key)
        self.damaged.add(key)
        if how == "delete":
            path.unlink(missing_ok=True)
        elif path.exists():
            data = bytearray(path.read_bytes())
            data[-7] ^= 0x10
            path.write_bytes(bytes(data))

    @rule()
    def finish_all(self):
        """Every request done: all blocks free but cached, the next ones evict them to RAM."""
        for seq in list(self.live.values()):
            self._free(seq)

    @rule()
    def restart(self):
        for seq in list(self.live.values()):
            self._free(seq)
        for seq in self.waiting:
            self.bm.free(seq)
        self.waiting.clear()
        self._drain_reads()
        self.writer.close()
        self._start()

    def _drain_reads(self) -> None:
        """Every read finished and collected, nobody waiting: no slot may stay filling or pinned."""
        self.reader.run_queued()
        self.bm.collect_reads()
        host = self.tiers.host
        assert not host.filling and not self.tiers._reading, "a RAM slot stayed reserved for a read"
        assert not +host.pinned, "a RAM slot stayed pinned"
        assert sorted(list(host.lru.values()) + host.free) == list(range(RAM_SLOTS)), "a RAM slot leaked"

    @invariant()
    def ram_slots_hold_their_prefix(self):
        host = self.tiers.host
        assert not host.locked
        assert sorted(list(host.lru.values()) + host.free) == list(range(RAM_SLOTS)), "a RAM slot leaked"
        for key, slot in host.lru.items():
            if slot not in host.filling:  # a slot being read holds nothing yet
                assert decode(host.row(slot)) == self._expected(key), f"RAM slot {slot} holds another prefix"

    @invariant()
    def read_slots_are_accounted_for(self):
        """Slots being read are exactly those of the reads not collected; the pins are exactly the
        waiting sequences' (their blocks before the read, and the blocks a collected read brought)."""
        host, bm = self.tiers.host, self.bm
        assert host.filling == set(self.tiers._reading)
        labelled = set(host.lru.values())
        assert host.filling <= labelled and set(+host.pinned) <= labelled
        for slot, read in self.tiers._reading.items():
            assert not read.collected and slot in read.slots
        waiting_ids = {s.seq_id for s in self.waiting}
        assert set(bm._reads) <= waiting_ids, "a ticket of a sequence that is not waiting"
        expected: Counter = Counter()
        reads = {}
        for ticket in bm._reads.values():
            expected.update(ticket.pinned)
            reads[id(ticket.read)] = ticket.read
        for read in reads.values():
            assert read.waiters == sum(t.read is read for t in bm._reads.values())
            if read.collected:
                expected.update(read.slots[:read.num_read])
        assert +host.pinned == +expected, "pinned slots do not match the waiting sequences"

    @invariant()
    def disk_files_hold_their_prefix(self):
        assert self.writer.drain(30)
        out = np.empty(ROW_BYTES, np.uint8)
        for key in sorted(self.store.known - self.damaged):
            prefix = self.prefix_of_hash[key]
            keys = chain_hashes(prefix, BS)
            digest = b"R" * 16
            for j in range(len(keys)):
                digest = chain_digest(digest, np.asarray(prefix[j * BS:(j + 1) * BS]))
            assert self.store.read_into(key, keys[-2] if len(keys) > 1 else 0, digest,
                                        np.asarray(prefix[-BS:]), out), f"block {key:x} unreadable"
            assert decode(out) == self._expected(key)

    def teardown(self):
        super().teardown()
        self._drain_reads()
        self.writer.close()
        shutil.rmtree(self.folder, ignore_errors=True)


TieredBlockManagerMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestTieredBlockManagerStateful = TieredBlockManagerMachine.TestCase
