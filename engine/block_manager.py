"""Maps sequences to KV blocks: prefix hits, slot allocation, copy-on-write, fork and free.

The scheduler asks; this module answers with block ids and never touches tensors. Copies that
copy-on-write needs are returned as (src, dst) block pairs for the runner to perform before
the step's forward pass.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from engine.block_pool import BlockPool, KVCacheBlock, hash_block
from engine.sequence import Sequence


@dataclass
class PrefixHit:
    """The longest cached prefix of a sequence, and whether the block after it is being computed
    right now by another sequence (then waiting a step beats computing it twice)."""

    blocks: list[KVCacheBlock]
    next_block_pending: bool

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks)
        self._hashes: dict[int, list[bytes]] = {}  # seq_id -> chained hashes of its full blocks
        self._num_committed: dict[int, int] = {}  # seq_id -> full blocks already published
        self._pending: Counter[bytes] = Counter()  # hashes of full blocks allocated but not computed
        self._pending_by_seq: dict[int, list[bytes]] = {}
        self.num_queried_tokens = 0
        self.num_hit_tokens = 0

    @property
    def num_blocks(self) -> int:
        return len(self.pool.blocks)

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    def block_hashes(self, seq: Sequence) -> list[bytes]:
        """Hashes of every full block of the sequence's known tokens, computed once each."""
        hashes = self._hashes.setdefault(seq.seq_id, [])
        tokens = seq.token_ids
        bs = self.block_size
        for i in range(len(hashes), len(tokens) // bs):
            parent = hashes[i - 1] if i else None
            hashes.append(hash_block(parent, tuple(tokens[i * bs:(i + 1) * bs])))
        return hashes

    def find_prefix(self, seq: Sequence) -> PrefixHit:
        """Longest run of cached full blocks that starts the sequence.

        At least the last token is left to compute, because sampling needs its logits; so a
        prompt that is all full cached blocks recomputes its last block.
        """
        if not self.enable_prefix_caching:
            return PrefixHit([], False)
        hashes = self.block_hashes(seq)
        max_blocks = (seq.num_tokens - 1) // self.block_size
        tokens = seq.token_ids
        bs = self.block_size
        blocks: list[KVCacheBlock] = []
        for i, h in enumerate(hashes[:max_blocks]):
            block = self.pool.lookup(h, hashes[i - 1] if i else None, tuple(tokens[i * bs:(i + 1) * bs]))
            if block is None:
                break
            blocks.append(block)
        nxt = len(blocks)
        pending = nxt < max_blocks and self._pending[hashes[nxt]] > 0
        return PrefixHit(blocks, pending)

    def allocate(self, seq: Sequence, num_new_tokens: int, hit: PrefixHit | None = None) -> list[tuple[int, int]] | None:
        """Give `seq` room for `num_new_tokens` more tokens after its computed ones.

        `hit` is passed when the sequence is admitted with no blocks; its blocks become the start
        of the block table. Returns the copy-on-write pairs, or None (changing nothing) when the
        pool is too small.
        """
        bs = self.block_size
        hit_blocks = hit.blocks if hit is not None else []
        if hit_blocks:
            assert not seq.block_table, "a prefix hit is only taken on admission"
        num_computed = len(hit_blocks) * bs if hit_blocks else seq.num_computed_tokens
        num_have = len(seq.block_table) + len(hit_blocks)
        num_new_blocks = max(0, -(-(num_computed + num_new_tokens) // bs) - num_have)
        write_idx = num_computed // bs
        cow = (
            num_new_tokens > 0
            and write_idx < len(seq.block_table)
            and self.pool.blocks[seq.block_table[write_idx]].ref_cnt > 1
        )
        revived = sum(1 for b in hit_blocks if b.ref_cnt == 0)
        if num_new_blocks + int(cow) + revived > self.pool.num_free:
            return None

        for block in hit_blocks:
            self.pool.touch(block)
        if hit_blocks:
            seq.block_table = [b.block_id for b in hit_blocks]
            seq.num_computed_tokens = num_computed
        if hit is not None:
            self.num_queried_tokens += seq.num_tokens
            self.num_hit_tokens += num_computed
        copies: list[tuple[int, int]] = []
        if cow:
            old = self.pool.blocks[seq.block_table[write_idx]]
            new = self.pool.allocate()
            self.pool.release(old)
            seq.block_table[write_idx] = new.block_id
            copies.append((old.block_id, new.block_id))
        first_new = len(seq.block_table)
        seq.block_table.extend(self.pool.allocate().block_id for _ in range(num_new_blocks))
        self._mark_pending(seq, first_new)
        return copies

    def _mark_pending(self, seq: Sequence, first_new: int) -> None:
        """New blocks whose tokens are all known will become cached blocks once computed."""
        if not self.enable_prefix_caching:
            return
        hashes = self.block_hashes(seq)
        mine = self._pending_by_seq.setdefault(seq.seq_id, [])
        for i in range(first_new, min(len(seq.block_table), len(hashes))):
            self._pending[hashes[i]] += 1
            mine.append(hashes[i])

    def commit(self, seq: Sequence) -> None:
        """Publish the full blocks the last step finished computing, so later requests hit them."""
        if not self.enable_prefix_caching:
            return
        hashes = self.block_hashes(seq)
        start = self._num_committed.get(seq.seq_id, 0)
        end = min(seq.num_computed_tokens // self.block_size, len(hashes))
        if end <= start:
            return
        tokens = seq.token_ids
        bs = self.block_size
        mine = self._pending_by_seq.get(seq.seq_id, [])
        for i in range(start, end):
            block = self.pool.blocks[seq.block_table[i]]
            self.pool.cache(block, hashes[i], hashes[i - 1] if i else None, tuple(tokens[i * bs:(i + 1) * bs]))
            if hashes[i] in mine:
                mine.remove(hashes[i])
                self._release_pending(hashes[i])
        self._num_committed[seq.seq_id] = end

    def free(self, seq: Sequence) -> None:
        """Return the sequence's blocks, tail first, so that eviction takes a request's tail
        before the prefix other requests are likelier to share."""
        for block_id in reversed(seq.block_table):
            self.pool.release(self.pool.blocks[block_id])
        seq.block_table = []
        for h in self._pending_by_seq.pop(seq.seq_id, []):
            self._release_pending(h)
        self._hashes.pop(seq.seq_id, None)
        self._num_committed.pop(seq.seq_id, None)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """The child shares every block of the parent; the first write to a shared partial
        block copies it (see `allocate`)."""
        for block_id in parent.block_table:
            self.pool.touch(self.pool.blocks[block_id])
        child.block_table = list(parent.block_table)
        child.num_computed_tokens = parent.num_computed_tokens
        self._num_committed[child.seq_id] = self._num_committed.get(parent.seq_id, 0)

    def _release_pending(self, block_hash: bytes) -> None:
        self._pending[block_hash] -= 1
        if self._pending[block_hash] <= 0:
            del self._pending[block_hash]

    def stats(self) -> dict[str, float]:
        blocks = self.pool.blocks
        used = sum(1 for b in blocks if b.ref_cnt > 0)
        return {
            "blocks_total": len(blocks),
            "blocks_used": used,
            "blocks_shared": sum(1 for b in blocks if b.ref_cnt > 1),
            "blocks_cached": sum(1 for b in blocks if b.ref_cnt == 0 and b.block_hash is not None),
            "blocks_free": len(blocks) - used,
            "block_size": self.block_size,
            "prefix_hit_rate": self.num_hit_tokens / self.num_queried_tokens if self.num_queried_tokens else 0.0,
        }
