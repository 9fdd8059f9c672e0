"""Host-RAM slots for KV blocks: a fixed number of rows, LRU by block key, allocated on first use.

A slot holds one block's bytes (device layout, [2, layers, block_size, kv_heads, head_dim]) with
the block's 64-bit key, its prefix digest and its tokens; a lookup must match all three. Slots
named in `locked` are not reused: they are the source of a load being planned.
"""
from __future__ import annotations

from collections import OrderedDict

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

    @property
    def num_cached(self) -> int:
        return len(self.lru)

    def storage(self) -> torch.Tensor:
        if self.data is None:  # pinning gigabytes takes a while: only once something is evicted
            self.data = torch.empty((self.num_slots, self.block_bytes), dtype=torch.uint8, pin_memory=self.pin)
        return self.data

    def row(self, slot: int) -> np.ndarray:
        return self.storage()[slot].numpy()

    def find(self, key: int, digest: bytes, tokens: np.ndarray) -> int | None:
        """The slot holding this very block, made most recently used; None if none does."""
        slot = self.lru.get(key)
        if slot is None or self.digests[slot].tobytes() != digest or not np.array_equal(self.tokens[slot], tokens):
            return None
        self.lru.move_to_end(key)
        return slot

    def reserve(self, key: int, digest: bytes, tokens: np.ndarray) -> int | None:
        """A slot to copy this block into, labelled with it and most recently used: a free one or
        the least recently used unlocked one. None when the block is held already or every slot is
        locked."""
        if self.find(key, digest, tokens) is not None:
            return None
        old = self.lru.get(key)
        if old is not None:  # the same key for another prefix: this one replaces it
            if old in self.locked:
                return None
            self.discard(old)
        if self.free:
            slot = self.free.pop()
        else:
            victim = next((k for k, s in self.lru.items() if s not in self.locked), None)
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
        """Forget a slot's block (a disk read into it failed, or its key is taken over)."""
        if self.lru.get(self.keys[slot]) == slot:
            del self.lru[self.keys[slot]]
            self.free.append(slot)
