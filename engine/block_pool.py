"""The pool of KV blocks: reference counts, the prefix cache, and LRU eviction in O(1).

Names and invariants follow vLLM v1's block pool:
- a block with `ref_cnt == 0` sits in the free queue, whether or not it still caches a prefix;
- a block in `cached` holds exactly the tokens its hash was made from (`token_ids`), after the
  prefix whose hash is `parent_hash`;
- taking a block from the free queue evicts its cached prefix first.
"""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, field


@dataclass(eq=False)
class KVCacheBlock:
    """One physical KV block. The hash fields are set only while it caches a full block."""

    block_id: int
    ref_cnt: int = 0
    block_hash: bytes | None = None
    parent_hash: bytes | None = None
    token_ids: tuple[int, ...] | None = None
    prev_free: KVCacheBlock | None = field(default=None, repr=False)
    next_free: KVCacheBlock | None = field(default=None, repr=False)


class FreeBlockQueue:
    """Doubly linked list of free blocks, least recently freed first.

    A list with `remove` would be O(n) on every prefix hit; linking the blocks themselves
    makes append, popleft and remove-from-the-middle all O(1).
    """

    def __init__(self, blocks: list[KVCacheBlock]) -> None:
        self._head = KVCacheBlock(-1)
        self._tail = KVCacheBlock(-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self.num_free = 0
        for block in blocks:
            self.append(block)

    def append(self, block: KVCacheBlock) -> None:
        last = self._tail.prev_free
        assert last is not None and block.prev_free is None and block.next_free is None
        last.next_free = block
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self.num_free += 1

    def popleft(self) -> KVCacheBlock:
        block = self._head.next_free
        if block is None or block is self._tail:
            raise RuntimeError("no free KV blocks")
        self.remove(block)
        return block

    def remove(self, block: KVCacheBlock) -> None:
        prev, nxt = block.prev_free, block.next_free
        assert prev is not None and nxt is not None, f"block {block.block_id} is not free"
        prev.next_free = nxt
        nxt.prev_free = prev
        block.prev_free = block.next_free = None
        self.num_free -= 1

    def __iter__(self):
        block = self._head.next_free
        while block is not None and block is not self._tail:
            yield block
            block = block.next_free


def hash_block(parent_hash: bytes | None, token_ids: tuple[int, ...]) -> bytes:
    """Chained hash: a block's key covers every token before it, so equal keys mean equal prefixes.
    It is a 256-bit digest, not Python's 64-bit `hash`, and `BlockPool.lookup` still compares the
    block's tokens and its parent's key."""
    h = hashlib.blake2b(parent_hash or b"", digest_size=32)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached: dict[bytes, KVCacheBlock] = {}

    @property
    def num_free(self) -> int:
        return self.free_queue.num_free

    def allocate(self) -> KVCacheBlock:
        """Take the least recently freed block, evicting the prefix it cached."""
        block = self.free_queue.popleft()
        self._evict(block)
        block.ref_cnt = 1
        return block

    def touch(self, block: KVCacheBlock) -> None:
        """Add a reference; a free (cached) block leaves the free queue."""
        if block.ref_cnt == 0:
            self.free_queue.remove(block)
        block.ref_cnt += 1

    def release(self, block: KVCacheBlock) -> None:
        """Drop a reference; at zero the block becomes free but keeps its cached prefix."""
        if block.ref_cnt <= 0:
            raise RuntimeError(f"double free of KV block {block.block_id}")
        block.ref_cnt -= 1
        if block.ref_cnt == 0:
            self.free_queue.append(block)

    def lookup(self, block_hash: bytes, parent_hash: bytes | None, token_ids: tuple[int, ...]) -> KVCacheBlock | None:
        block = self.cached.get(block_hash)
        if block is None or block.token_ids != token_ids or block.parent_hash != parent_hash:
            return None
        return block

    def cache(self, block: KVCacheBlock, block_hash: bytes, parent_hash: bytes | None,
              token_ids: tuple[int, ...]) -> None:
        """Publish a computed full block. The first block cached under a hash stays the one."""
        if block.block_hash is not None or block_hash in self.cached:
            return
        block.block_hash = block_hash
        block.parent_hash = parent_hash
        block.token_ids = token_ids
        self.cached[block_hash] = block

    def _evict(self, block: KVCacheBlock) -> None:
        if block.block_hash is not None:
            if self.cached.get(block.block_hash) is block:
                del self.cached[block.block_hash]
            block.block_hash = block.parent_hash = None
            block.token_ids = None
