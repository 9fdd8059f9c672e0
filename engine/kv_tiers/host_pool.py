"""Host-RAM slots for KV blocks: a fixed number of rows, LRU by block key, allocated on first use.

A slot holds one block's bytes (device layout, [2, layers, block_size, kv_heads, head_dim]) with
the block's 64-bit key, its prefix digest and its tokens; a lookup must match all three.

Every slot is free or labelled (in `lru`). A labelled slot is not reused while it is
- `locked`: the source of a load being planned (until the next flush);
- `filling`: the disk reader is writing it (its bytes are not the block's yet);
- `pinned`: a sequence waiting for a disk read counts on it (see KVTiers).
"""
from __future__ import annotations

from collections import Counter, OrderedDict

import numpy as np
import torch

from engine.kv_tiers.fingerprint import DIGEST_SIZE


class HostKVPool:
    def __init__(self, num_slots: int, block_bytes: int, block_size: int, pin: bool) -> None:
        self.num_slots = num_slots
        self.block_bytes = block_bytes
        self.pin = pin
        self.data: torch.Tensor | None = None  # uint8 [num_slots, block_bytes], pinned on CUDA
        self.keys = [0] * num_slots
        self.digests = np.zeros((num_slots, DIGEST_SIZE), dtype=np.uint8)
        self.tokens = np.zeros((num_slots, block_size), dtype=np.int64)
        self.from_disk = np.zeros(num_slots, dtype=bool)  # read from disk, not loaded to the device yet
        self.lru: OrderedDict[int, int] = OrderedDict()  # key -> slot, least recently used first
        self.free = list(range(num_slots - 1, -1, -1))
        self.locked: set[int] = set()
        self.filling: set[int] = set()
        self.pinned: Counter[int] = Counter()

    @property
    def num_cached(self) -> int:
        return len(self.lru)

    def storage(self) -> torch.Tensor:
        if self.data is None:  # pinning gigabytes takes a while: only once something is evicted
            self.data = torch.empty((self.num_slots, self.block_bytes), dtype=torch.uint8, pin_memory=self.pin)
        return self.data

    def row(self, slot: int) -> np.ndarray:
        return self.storage()[slot].numpy()

    def in_use(self, slot: int) -> bool:
        """Whether the slot must keep its block: locked, filling or pinned."""
        return slot in self.locked or slot in self.filling or self.pinned[slot] > 0

    def find(self, key: int, digest: bytes, tokens: np.ndarray) -> int | None:
        """The slot labelled with this very block, made most recently used; None if none is. A
        `filling` slot is returned too: the caller must not read it yet."""
        slot = self.lru.get(key)
        if slot is None or self.digests[slot].tobytes() != digest or not np.array_equal(self.tokens[slot], tokens):
            return None
        self.lru.move_to_end(key)
        return slot

    def reserve(self, key: int, digest: bytes, tokens: np.ndarray) -> int | None:
        """A slot to copy this block into, labelled with it and most recently used: a free one or
        the least recently used one not in use. None when the block is held (or being read) already,
        or every slot is in use."""
        if self.find(key, digest, tokens) is not None:
            return None
        old = self.lru.get(key)
        if old is not None:  # the same key for another prefix: this one replaces it
            if self.in_use(old):
                return None
            self.discard(old)
        if self.free:
            slot = self.free.pop()
        else:
            victim = next((k for k, s in self.lru.items() if not self.in_use(s)), None)
            if victim is None:
                return None
            slot = self.lru.pop(victim)
        self.keys[slot] = key
        self.digests[slot] = np.frombuffer(digest, dtype=np.uint8)
        self.tokens[slot] = tokens
        self.from_disk[slot] = False
        self.lru[key] = slot
        return slot

    def discard(self, slot: int) -> None:
        """Forget a slot's block (a disk read into it failed or was cancelled, or its key is taken
        over)."""
        if self.lru.get(self.keys[slot]) == slot:
            del self.lru[self.keys[slot]]
            self.free.append(slot)
