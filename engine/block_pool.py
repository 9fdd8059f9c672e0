"""The pool of KV blocks: reference counts, the prefix cache, and LRU eviction in O(1).

Names and invariants follow vLLM v1's block pool:
- a block with `ref_cnt == 0` sits in the free queue, whether or not it still caches a prefix;
- a cached block holds exactly the tokens `tokens[b]` after the prefix that ends in block
  `parent[b]`, as that parent was when `b` was cached (`parent_gen[b] == gen[parent[b]]`);
- taking a block from the free queue evicts its cached prefix first (and bumps its generation,
  which invalidates every block cached after it).

Blocks are integers and their state lives in arrays, so a prefix hit of hundreds of blocks is
checked and referenced with a few array operations, not a Python loop per block. The free queue
is a doubly linked list over block ids: append, popleft and remove from the middle are O(1).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np


class FreeBlockQueue:
    """Free block ids, least recently freed first, linked through two lists."""

    def __init__(self, num_blocks: int) -> None:
        self._head, self._tail = num_blocks, num_blocks + 1
        self._next = [-1] * (num_blocks + 2)
        self._prev = [-1] * (num_blocks + 2)
        self._next[self._head], self._prev[self._tail] = self._tail, self._head
        self._in = [False] * num_blocks
        self.num_free = 0
        for b in range(num_blocks):
            self.append(b)

    def append(self, block: int) -> None:
        assert not self._in[block], f"block {block} is free already"
        last = self._prev[self._tail]
        self._next[last], self._prev[block] = block, last
        self._next[block], self._prev[self._tail] = self._tail, block
        self._in[block] = True
        self.num_free += 1

    def popleft(self) -> int:
        block = self._next[self._head]
        if block == self._tail:
            raise RuntimeError("no free KV blocks")
        self.remove(block)
        return block

    def remove(self, block: int) -> None:
        assert self._in[block], f"block {block} is not free"
        prev, nxt = self._prev[block], self._next[block]
        self._next[prev], self._prev[nxt] = nxt, prev
        self._in[block] = False
        self.num_free -= 1

    def remove_many(self, blocks: list[int]) -> None:
        """`remove` for each, in one loop: a document's hundreds of blocks taken back at once."""
        nxt_of, prev_of, free = self._next, self._prev, self._in
        for block in blocks:
            assert free[block], f"block {block} is not free"
            prev, nxt = prev_of[block], nxt_of[block]
            nxt_of[prev], prev_of[nxt] = nxt, prev
            free[block] = False
        self.num_free -= len(blocks)

    def __contains__(self, block: int) -> bool:
        return self._in[block]

    def __iter__(self) -> Iterator[int]:
        block = self._next[self._head]
        while block != self._tail:
            yield block
            block = self._next[block]


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_queue = FreeBlockQueue(num_blocks)
        self.ref_cnt = np.zeros(num_blocks, dtype=np.int32)
        self.is_cached = np.zeros(num_blocks, dtype=bool)
        self.block_key = [0] * num_blocks
        self.tokens = np.zeros((num_blocks, block_size), dtype=np.int64)
        self.parent = np.full(num_blocks, -1, dtype=np.int64)
        self.parent_gen = np.zeros(num_blocks, dtype=np.int64)
        self.gen = np.zeros(num_blocks, dtype=np.int64)
        self.cached: dict[int, int] = {}  # key -> block id
        # Bumped by every eviction: while it stands still, every cached block is still cached as it
        # was (nothing else uncaches a block), so a remembered hit needs no per-block re-check.
        self.num_evictions = 0
        # Bumped by every block whose last reference goes: while it stands still, every block
        # referenced at some moment since is referenced still.
        self.num_freed = 0
        # Called with a cached block's id just before its content is dropped (the KV tiers keep it).
        self.on_evict: Callable[[int], None] | None = None

    @property
    def num_free(self) -> int:
        return self.free_queue.num_free

    def allocate(self, count: int = 1) -> list[int]:
        """Take the `count` least recently freed blocks, evicting the prefixes they cached."""
        if count > self.free_queue.num_free:
            raise RuntimeError("no free KV blocks")
        ids = [self.free_queue.popleft() for _ in range(count)]
        for b in ids:
            if self.is_cached[b]:
                self._evict(b)
        self.ref_cnt[ids] = 1
        return ids

    def touch(self, ids: list[int] | np.ndarray, num_free: int | None = None) -> None:
        """Add a reference to each (distinct) block; free (cached) ones leave the free queue.
        `num_free`, where the caller has counted them already: how many of `ids` are free."""
        if not len(ids):
            return
        arr = np.asarray(ids)
        if num_free != 0:
            self.free_queue.remove_many(arr[self.ref_cnt[arr] == 0].tolist())
        self.ref_cnt[arr] += 1

    def touch_one(self, block: int) -> None:
        if self.ref_cnt[block] == 0:
            self.free_queue.remove(block)
        self.ref_cnt[block] += 1

    def release(self, ids: list[int]) -> None:
        """Drop a reference to each (distinct) block, in order; at zero a block becomes free, last
        in the LRU order, but keeps its cached prefix."""
        if not ids:
            return
        arr = np.asarray(ids)
        if bool((self.ref_cnt[arr] <= 0).any()):
            raise RuntimeError(f"double free of KV blocks {arr[self.ref_cnt[arr] <= 0].tolist()}")
        self.ref_cnt[arr] -= 1
        freed = arr[self.ref_cnt[arr] == 0].tolist()
        self.num_freed += len(freed)
        for b in freed:
            self.free_queue.append(b)

    def match(self, keys: list[int], tokens: np.ndarray) -> np.ndarray:
        """The cached blocks holding the longest run of `keys` from the start, confirmed by their
        tokens ([len(keys), block_size]) and their parent chain: a collision is no hit."""
        found = list(map(self.cached.get, keys))
        n = found.index(None) if None in found else len(found)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        arr = np.array(found[:n], dtype=np.int64)
        ok = (self.tokens[arr] == tokens[:n]).all(axis=1)
        ok[0] &= self.parent[arr[0]] == -1
        if n > 1:
            ok[1:] &= (self.parent[arr[1:]] == arr[:-1]) & (self.parent_gen[arr[1:]] == self.gen[arr[:-1]])
        if bool(ok.all()):
            return arr
        return arr[:int(np.argmin(ok))]

    def cache(self, block: int, key: int, parent: int, tokens: np.ndarray) -> bool:
        """Publish a computed full block under `key`, after block `parent` (-1 for the first).
        The first block cached under a key stays the one; returns whether this one became it."""
        if self.is_cached[block] or key in self.cached:
            return False
        self.is_cached[block] = True
        self.block_key[block] = key
        self.tokens[block] = tokens
        self.parent[block] = parent
        self.parent_gen[block] = self.gen[parent] if parent >= 0 else 0
        self.cached[key] = block
        return True

    def _evict(self, block: int) -> None:
        if self.on_evict is not None:
            self.on_evict(block)
        key = self.block_key[block]
        if self.cached.get(key) == block:
            del self.cached[key]
        self.is_cached[block] = False
        self.gen[block] += 1
        self.num_evictions += 1

    def stats(self) -> dict[str, int]:
        used = self.ref_cnt > 0
        return {
            "blocks_total": self.num_blocks,
            "blocks_used": int(used.sum()),
            "blocks_shared": int((self.ref_cnt > 1).sum()),
            "blocks_cached": int((~used & self.is_cached).sum()),
            "blocks_free": int((~used).sum()),
        }
