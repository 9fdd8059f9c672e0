"""Keys for the prefix cache: one 64-bit key per full block, chained over every token before it.

A block's key must depend on all the tokens of the prefix it ends, so the key of block j is
built from a chain `H_j = H_{j-1} * P + d_j (mod 2**64)`, where `d_j` is a mixed digest of the
block's own tokens and `H_{-1}` is the model's key (another model's blocks never match). The
recurrence is linear, so a whole prompt's chain is a prefix sum:
`H_j = P**j * (P * H_{-1} + sum_{i<=j} d_i * P**-i)`, computed with array operations in
microseconds for thousands of tokens; a block filled later extends the chain in O(1).
The key handed out is a non-linear mix of `H_j`.

These keys only find candidates. A hit is confirmed by the block's stored tokens and by its
parent being the block matched just before it (`BlockPool.match`), so a collision, accidental or
crafted, is refused and never serves another prefix's KV.
"""
from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
P = 0x100000001B3  # odd, so invertible mod 2**64
P_INV = pow(P, -1, 1 << 64)


def _odd_constants(n: int) -> np.ndarray:
    """The same n constants in every process: keys must not change between runs."""
    rng = np.random.default_rng(0x5EED)
    return rng.integers(0, 1 << 63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, elementwise on uint64 (products wrap)."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


class PrefixHasher:
    """Block keys for one block size and one model (`model_key`, e.g. from its fingerprint)."""

    def __init__(self, block_size: int, model_key: int = 0) -> None:
        self.block_size = block_size
        self.model_key = model_key & MASK64
        self._weights = _odd_constants(block_size)  # per position in a block
        self._pow = np.ones(1, dtype=np.uint64)  # P**i
        self._inv = np.ones(1, dtype=np.uint64)  # P**-i

    def digests(self, tokens: np.ndarray) -> np.ndarray:
        """d_j for each full block of `tokens` (uint64)."""
        k = len(tokens) // self.block_size
        blocks = tokens[:k * self.block_size].reshape(k, self.block_size).astype(np.uint64) + np.uint64(1)
        with np.errstate(over="ignore"):
            return fmix64((blocks * self._weights).sum(axis=1, dtype=np.uint64))

    def chain(self, tokens: np.ndarray) -> tuple[list[int], int]:
        """(keys of every full block of `tokens`, the chain state after the last one)."""
        keys, states = self.chain_states(tokens, self.model_key)
        return keys, int(states[-1]) if len(states) else self.model_key

    def chain_states(self, tokens: np.ndarray, state: int) -> tuple[list[int], np.ndarray]:
        """(keys of every full block of `tokens` after chain state `state`, the state after each)."""
        d = self.digests(tokens)
        k = len(d)
        if k == 0:
            return [], np.zeros(0, dtype=np.uint64)
        self._grow(k)
        with np.errstate(over="ignore"):
            s = np.cumsum(d * self._inv[:k], dtype=np.uint64) + np.uint64(P * state & MASK64)
            h = s * self._pow[:k]
            keys = fmix64(h)
        return keys.tolist(), h

    def extend(self, state: int, block_tokens: np.ndarray) -> tuple[int, int]:
        """(key, new state) of one more block after the chain state `state`."""
        d = int(self.digests(block_tokens)[0])
        h = (state * P + d) & MASK64
        return int(fmix64(np.array([h], dtype=np.uint64))[0]), h

    def _grow(self, k: int) -> None:
        if len(self._pow) >= k:
            return
        n = max(k, 2 * len(self._pow))
        with np.errstate(over="ignore"):
            self._pow = np.concatenate([[np.uint64(1)], np.cumprod(np.full(n - 1, P, dtype=np.uint64),
                                                                    dtype=np.uint64)])
            self._inv = np.concatenate([[np.uint64(1)], np.cumprod(np.full(n - 1, P_INV, dtype=np.uint64),
                                                                    dtype=np.uint64)])
