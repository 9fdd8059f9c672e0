"""Maps sequences to KV blocks: prefix hits, slot allocation, copy-on-write, fork and free.

The scheduler asks; this module answers with block ids and never touches tensors. Copies that
copy-on-write needs are returned as (src, dst) block pairs for the runner to perform before
the step's forward pass.

Prefix-cache keys come from `PrefixHasher`: a prompt's keys are computed once, with array
operations, when it is first looked up; a block filled by generated tokens gets its key when
it is published. A hit is confirmed by tokens and parent chain (`BlockPool.match`).

With KV tiers (engine/kv_tiers), a device miss looks in host RAM and on disk: the blocks found
there get fresh device blocks, are published at once as if computed, and the tiers copy them in
before the step's forward pass. Such blocks are referenced and released like any other, so the
accounting is the same whichever tier a block came from. Blocks on disk are read in the
background first: the sequence keeps a `ReadTicket` and waits (`PrefixHit.loading`) until the
read is collected; freeing the sequence gives the ticket back.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from engine.block_pool import BlockPool
from engine.kv_tiers.tiers import KVTiers, ReadTicket, TierLoad
from engine.prefix_hash import PrefixHasher
from engine.sequence import Sequence


@dataclass
class PrefixHit:
    """The longest cached prefix of a sequence: device blocks, then blocks found in RAM or on disk;
    and whether the block after the device ones is being computed right now by another sequence
    (then waiting a step beats computing it twice), or is being read from disk (then the
    sequence waits for the read: other sequences step meanwhile)."""

    blocks: np.ndarray  # device block ids, int64
    next_block_pending: bool
    loads: list[TierLoad] = field(default_factory=list)
    loading: bool = False
    num_revived: int = 0  # of `blocks`, those free now (cached, unreferenced): taking them uses free blocks
    table: list[int] | None = None  # `blocks` as a list (None where there are none)

    @property
    def num_blocks(self) -> int:
        """All blocks of the hit, whatever their tier: the tokens before them need no computing."""
        return len(self.blocks) + len(self.loads)

    def num_from(self, tier: str) -> int:
        return sum(h.tier == tier for h in self.loads)


@dataclass
class RememberedHit:
    """The last device hit, kept so that chats arriving together over one document take it again
    without matching it block by block (`BlockManager._repeat_hit`)."""

    keys: list[int]
    tokens: np.ndarray  # [blocks, block_size]
    blocks: np.ndarray
    table: list[int]  # `blocks` as the list a block table starts with
    gens: np.ndarray  # the blocks' generations, and pool.num_evictions, when matched
    num_evictions: int
    seq_id: int  # the last sequence it was taken for: its first blocks hold `tokens`
    # pool.num_freed when a sequence last took a reference to every block: while it stands still,
    # none of them is free (-1: not known)
    held_at: int = -1


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 model_key: int = 0, tiers: KVTiers | None = None) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, block_size)
        self.tiers = tiers if enable_prefix_caching else None
        if self.tiers is not None:
            pool = self.pool
            self.pool.on_evict = lambda b: self.tiers.evicted(b, pool.block_key[b], pool.tokens[b])
        self.hasher = PrefixHasher(block_size, model_key)
        self._num_committed: dict[int, int] = {}  # seq_id -> full blocks already published
        self._pending: Counter[int] = Counter()  # keys of full blocks allocated but not computed
        self._pending_by_seq: dict[int, list[int]] = {}
        self._reads: dict[int, ReadTicket] = {}  # seq_id -> the disk read a waiting sequence waits for
        self.num_queried_tokens = 0
        self.num_hit_tokens = 0
        self._last_hit: RememberedHit | None = None
        # the last sequence keyed: its id, tokens, block keys and chain states (see _chain)
        self._last_chain: tuple[int, np.ndarray, list[int], np.ndarray] = (
            -1, np.zeros(0, dtype=np.int64), [], np.zeros(0, dtype=np.uint64))
        # of the last sequence keyed: the one keyed before it, and how many first blocks of tokens they share
        self._chained_after: tuple[int, int] = (-1, 0)

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    def block_keys(self, seq: Sequence) -> list[int]:
        """Keys of every full block of the sequence's known tokens, each computed once."""
        keys = seq.block_keys
        bs = self.block_size
        full = seq.num_tokens // bs
        if not keys and full:
            keys[:], seq.hash_state = self._chain(seq.seq_id, seq.tokens_between(0, full * bs))
        while len(keys) < full:
            i = len(keys)
            state = self.hasher.model_key if seq.hash_state is None else seq.hash_state
            key, seq.hash_state = self.hasher.extend(state, seq.tokens_between(i * bs, (i + 1) * bs))
            keys.append(key)
        return keys

    def _chain(self, seq_id: int, tokens: np.ndarray) -> tuple[list[int], int]:
        """A new sequence's keys, reusing those of the blocks it shares with the last sequence
        keyed (chats arriving together over one document hash it once, not once each)."""
        bs = self.block_size
        last_id, last_tokens, last_keys, last_states = self._last_chain
        common = min(len(tokens), len(last_tokens)) // bs
        m = 0
        if common:
            same = (tokens[:common * bs] == last_tokens[:common * bs]).reshape(common, bs).all(axis=1)
            m = common if same.all() else int(np.argmin(same))
        state = int(last_states[m - 1]) if m else self.hasher.model_key
        rest, states = self.hasher.chain_states(tokens[m * bs:], state)
        keys = last_keys[:m] + rest
        self._last_chain = (seq_id, tokens, keys, np.concatenate([last_states[:m], states]))
        self._chained_after = (last_id, m)
        return keys, int(self._last_chain[3][-1]) if keys else self.hasher.model_key

    def find_prefix(self, seq: Sequence) -> PrefixHit:
        """Longest run of cached full blocks that starts the sequence.

        At least the last token is left to compute, because sampling needs its logits; so a
        prompt that is all full cached blocks recomputes its last block.
        """
        if not self.enable_prefix_caching:
            return PrefixHit(np.zeros(0, dtype=np.int64), False)
        ticket = self._reads.get(seq.seq_id)
        if ticket is not None and not ticket.done:
            return PrefixHit(np.zeros(0, dtype=np.int64), False, loading=True)
        keys = self.block_keys(seq)
        max_blocks = (seq.num_tokens - 1) // self.block_size
        bs = self.block_size
        tokens = seq.tokens_between(0, max_blocks * bs).reshape(max_blocks, bs)
        last = self._repeat_hit(seq.seq_id, keys, tokens, max_blocks)
        if last is None:
            blocks = self.pool.match(keys[:max_blocks], tokens)
            last = self._last_hit = RememberedHit(keys[:len(blocks)], tokens[:len(blocks)], blocks, blocks.tolist(),
                                                  self.pool.gen[blocks], self.pool.num_evictions, seq.seq_id)
        blocks = last.blocks
        nxt = len(blocks)
        pending = nxt < max_blocks and self._pending[keys[nxt]] > 0
        if not nxt or last.held_at == self.pool.num_freed:
            revived = 0
        else:
            revived = int(np.count_nonzero(self.pool.ref_cnt[blocks] == 0))
        loads: list[TierLoad] = []
        if self.tiers is not None and nxt < max_blocks and not pending:
            # Each load takes a free block; leave one for the tokens after the hit.
            room = self.pool.num_free - revived - 1
            if room > 0:
                parent = int(blocks[-1]) if nxt else -1
                parent_key = keys[nxt - 1] if nxt else self.hasher.model_key
                # A sequence whose read is done takes what it brought and computes the rest.
                found = self.tiers.lookup(keys[nxt:max_blocks], tokens[nxt:], parent, parent_key, room,
                                          read_disk=ticket is None)
                if found.wait is not None:
                    self._reads[seq.seq_id] = found.wait
                    return PrefixHit(blocks, False, loading=True, table=last.table)
                loads = found.loads
        if ticket is not None:  # after the lookup: its slots stay pinned until the loads are found
            self.tiers.release(self._reads.pop(seq.seq_id))
        return PrefixHit(blocks, pending, loads, num_revived=revived, table=last.table)

    def collect_reads(self) -> None:
        """Take the disk reads finished since the last schedule: their sequences can be admitted."""
        if self.tiers is not None:
            self.tiers.collect_reads()

    @property
    def num_waiting_for_reads(self) -> int:
        """Sequences waiting for a disk read not collected yet."""
        return sum(not t.done for t in self._reads.values())

    def wait_for_reads(self, timeout: float) -> bool:
        """Wait until a disk read a sequence waits for finishes (or `timeout`); whether one has."""
        return self.num_waiting_for_reads > 0 and self.tiers.wait_for_reads(timeout)

    def _repeat_hit(self, seq_id: int, keys: list[int], tokens: np.ndarray, max_blocks: int) -> RememberedHit | None:
        """The last hit again, when this sequence starts with the same keys and tokens and those
        blocks are still cached as they were (chats arriving together over one document). None
        when it does not apply; then the full match runs."""
        last = self._last_hit
        if last is None:
            return None
        k = len(last.keys)
        # Keys chain every block before them, so the last one stands for all; the tokens confirm it.
        if k == 0 or k > max_blocks or keys[k - 1] != last.keys[-1]:
            return None
        keyed_after, shares = self._chained_after if self._last_chain[0] == seq_id else (-1, 0)
        # Keyed right after the sequence the hit was last taken for, sharing its first k blocks of
        # tokens, it holds the hit's tokens too; otherwise they are compared.
        if not (keyed_after == last.seq_id and shares >= k) and not (tokens[:k] == last.tokens).all():
            return None
        if last.num_evictions != self.pool.num_evictions and not (
                self.pool.is_cached[last.blocks].all() and np.array_equal(self.pool.gen[last.blocks], last.gens)):
            return None
        if k < max_blocks and keys[k] in self.pool.cached:  # it may go on further than the last one did
            return None
        last.seq_id = seq_id
        return last

    def allocate(self, seq: Sequence, num_new_tokens: int, hit: PrefixHit | None = None) -> list[tuple[int, int]] | None:
        """Give `seq` room for `num_new_tokens` more tokens after its computed ones.

        `hit` is passed when the sequence is admitted with no blocks; its blocks become the start
        of the block table. Returns the copy-on-write pairs, or None (changing nothing) when the
        pool is too small.
        """
        bs = self.block_size
        pool = self.pool
        num_hit = hit.num_blocks if hit is not None else 0
        if num_hit:
            assert not seq.block_table, "a prefix hit is only taken on admission"
        num_computed = num_hit * bs if num_hit else seq.num_computed_tokens
        num_have = len(seq.block_table) + num_hit
        num_new_blocks = max(0, -(-(num_computed + num_new_tokens) // bs) - num_have)
        write_idx = num_computed // bs
        cow = (num_new_tokens > 0 and write_idx < len(seq.block_table)
               and pool.ref_cnt[seq.block_table[write_idx]] > 1)
        revived = hit.num_revived if hit is not None else 0
        num_loads = len(hit.loads) if hit is not None else 0
        if num_loads + num_new_blocks + int(cow) + revived > pool.num_free:
            return None

        if num_hit:
            pool.touch(hit.blocks, num_free=revived)
            seq.block_table = list(hit.table)
            if self._last_hit is not None and hit.blocks is self._last_hit.blocks:
                self._last_hit.held_at = pool.num_freed
            if num_loads:
                self._load(seq, hit.loads)
            seq.num_computed_tokens = num_computed
            self._num_committed[seq.seq_id] = num_hit  # published already: commit() starts after them
        if hit is not None:
            self.num_queried_tokens += seq.num_tokens
            self.num_hit_tokens += num_computed
        copies: list[tuple[int, int]] = []
        if cow:
            old = seq.block_table[write_idx]
            new = pool.allocate()[0]
            pool.release([old])
            seq.block_table[write_idx] = new
            seq.table_version += 1
            copies.append((old, new))
        first_new = len(seq.block_table)
        if num_new_blocks:
            seq.block_table.extend(pool.allocate(num_new_blocks))
        self._mark_pending(seq, first_new)
        if self.tiers is not None:
            if num_hit and self.tiers.wants_disk(seq.num_prompt_tokens):
                self._write_through(seq, 0, num_hit)  # a long prompt's prefix, however it was found
            self.tiers.flush()
        return copies

    def _load(self, seq: Sequence, loads: list[TierLoad]) -> None:
        """Fresh device blocks for tier hits, published as computed (their KV is copied in before
        the step runs)."""
        bs = self.block_size
        start = len(seq.block_table)
        self.tiers.lock(loads)  # allocating evicts into RAM: not into the slots being loaded from
        blocks = self.pool.allocate(len(loads))
        self.tiers.load(loads, blocks)
        tokens = seq.tokens_between(start * bs, (start + len(loads)) * bs).reshape(len(loads), bs)
        keys = self.block_keys(seq)
        for i, b in enumerate(blocks):
            self.pool.cache(b, keys[start + i], seq.block_table[-1] if seq.block_table else -1, tokens[i])
            seq.block_table.append(b)

    def _write_through(self, seq: Sequence, start: int, end: int) -> None:
        """Queue the sequence's cached full blocks [start, end) for disk (those not there yet)."""
        table = np.asarray(seq.block_table[start:end], dtype=np.int64)
        missing = np.flatnonzero(~self.tiers.on_disk[table] & self.pool.is_cached[table])
        if not len(missing):
            return
        keys = self.block_keys(seq)
        bs = self.block_size
        for j in (start + missing).tolist():
            block = seq.block_table[j]
            if self.pool.cached.get(keys[j]) != block:
                continue  # another block holds this key: that one is the cached copy
            self.tiers.write_through(block, keys[j], keys[j - 1] if j else self.hasher.model_key,
                                     seq.tokens_between(j * bs, (j + 1) * bs))

    def _mark_pending(self, seq: Sequence, first_new: int) -> None:
        """New blocks whose tokens are all known will become cached blocks once computed."""
        if not self.enable_prefix_caching:
            return
        keys = self.block_keys(seq)
        end = min(len(seq.block_table), len(keys))
        if first_new >= end:
            return
        mine = self._pending_by_seq.setdefault(seq.seq_id, [])
        for key in keys[first_new:end]:
            self._pending[key] += 1
            mine.append(key)

    def commit(self, seq: Sequence) -> None:
        """Publish the full blocks whose KV is computed (or being written by a launched step) and
        whose tokens are all known, so later requests hit them."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        start = self._num_committed.get(seq.seq_id, 0)
        end = min(seq.num_computed_tokens, seq.num_tokens) // bs
        if end <= start:
            return
        keys = self.block_keys(seq)
        table = seq.block_table
        tokens = seq.tokens_between(start * bs, end * bs).reshape(end - start, bs)
        mine = self._pending_by_seq.get(seq.seq_id)
        tiers = self.tiers
        for i in range(start, end):
            if tiers is not None:
                tiers.published(table[i], table[i - 1] if i else -1, tokens[i - start])
            self.pool.cache(table[i], keys[i], table[i - 1] if i else -1, tokens[i - start])
            if mine and mine[0] == keys[i]:
                mine.pop(0)
                self._release_pending(keys[i])
        self._num_committed[seq.seq_id] = end
        if tiers is not None and tiers.wants_disk(seq.num_prompt_tokens):
            self._write_through(seq, start, end)
            tiers.flush()

    def free(self, seq: Sequence) -> None:
        """Return the sequence's blocks, tail first, so that eviction takes a request's tail
        before the prefix other requests are likelier to share."""
        self.pool.release(seq.block_table[::-1])
        seq.block_table = []
        for key in self._pending_by_seq.pop(seq.seq_id, []):
            self._release_pending(key)
        self._num_committed.pop(seq.seq_id, None)
        ticket = self._reads.pop(seq.seq_id, None)
        if ticket is not None:  # aborted while waiting for a disk read
            self.tiers.release(ticket)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """The child shares every block of the parent; the first write to a shared partial
        block copies it (see `allocate`)."""
        self.pool.touch(parent.block_table)
        child.block_table = list(parent.block_table)
        child.num_computed_tokens = parent.num_computed_tokens
        child.block_keys = list(parent.block_keys)
        child.hash_state = parent.hash_state
        self._num_committed[child.seq_id] = self._num_committed.get(parent.seq_id, 0)

    def _release_pending(self, key: int) -> None:
        self._pending[key] -= 1
        if self._pending[key] <= 0:
            del self._pending[key]

    def stats(self) -> dict[str, float]:
        s: dict[str, float] = dict(self.pool.stats())
        s["block_size"] = self.block_size
        s["prefix_hit_rate"] = self.num_hit_tokens / self.num_queried_tokens if self.num_queried_tokens else 0.0
        if self.tiers is not None:
            s.update(self.tiers.stats())
        return s
