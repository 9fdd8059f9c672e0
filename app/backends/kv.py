"""The local engine's KV memory as four disjoint counts that add up to the device pool, in blocks
and in the tokens of context they hold (a block holds `block_size` tokens), and the blocks kept
beyond it, in host RAM and on disk.

The engine's `blocks_free` counts cached blocks (kept for a prefix hit, reusable at once) as
free, and its `blocks_used` counts shared blocks as used; a person reading the numbers wants each
block counted once.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KvBlocks:
    shared: int = 0    # used by several requests
    used: int = 0      # used by exactly one request
    cached: int = 0    # no request, but kept for a prefix hit
    free: int = 0      # holding nothing
    block_size: int = 16
    # Beyond the device (engine/kv_tiers): cached blocks kept in host RAM and on disk, and the
    # blocks each tier can hold (0: the tier is off).
    ram: int = 0
    ram_total: int = 0
    disk: int = 0
    disk_total: int = 0

    @classmethod
    def from_stats(cls, stats: dict) -> KvBlocks:
        total, used = int(stats.get("blocks_total", 0)), int(stats.get("blocks_used", 0))
        shared, cached = int(stats.get("blocks_shared", 0)), int(stats.get("blocks_cached", 0))
        tiers = {name: int(stats.get(key, 0)) for name, key in (
            ("ram", "ram_blocks_cached"), ("ram_total", "ram_blocks_total"),
            ("disk", "disk_blocks_cached"), ("disk_total", "disk_blocks_total"))}
        return cls(shared, used - shared, cached, max(total - used - cached, 0), int(stats.get("block_size", 16)),
                   **tiers)

    @property
    def total(self) -> int:
        return self.shared + self.used + self.cached + self.free

    def counts(self) -> list[tuple[str, int]]:
        return [("shared", self.shared), ("used", self.used), ("cached", self.cached), ("free", self.free)]

    def token_counts(self) -> list[tuple[str, int]]:
        """`counts()` as tokens of context: what a person can compare with a prompt's length."""
        return [(kind, n * self.block_size) for kind, n in self.counts()]

    @property
    def total_tokens(self) -> int:
        """The tokens of context the pool holds."""
        return self.total * self.block_size

    @property
    def tokens_in_use(self) -> int:
        """Tokens held for running requests (shared blocks once); cached ones are reusable at once."""
        return (self.shared + self.used) * self.block_size

    def tier_tokens(self) -> list[tuple[str, int]]:
        """("RAM", tokens), ("disk", tokens) for the tiers that are on."""
        return [(name, n * self.block_size) for name, n, cap in (("RAM", self.ram, self.ram_total),
                                                                   ("disk", self.disk, self.disk_total)) if cap]

    def usage(self) -> str:
        """"3,200 of 93,200 tokens in use"."""
        return f"{self.tokens_in_use:,} of {self.total_tokens:,} tokens in use"
