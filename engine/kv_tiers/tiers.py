"""`KVTiers`: the RAM and disk tiers under the device prefix cache, as the block manager sees them.

The block manager stays bookkeeping: it tells the tiers which device block was evicted, which
was published (computed and cached) and which tier hits it allocated blocks for; the tiers pick
RAM slots and staging rows, queue the copies, and run them all at `flush()`, once per allocation
or commit (on CUDA: enqueued on a side stream, ordered after the step in flight and before the
next step that needs them).

- Eviction: a cached device block about to be reused is copied to a RAM slot (LRU) first.
- Publication: every cached block gets its prefix digest; the blocks of a sequence whose prompt
  is at least `min_disk_tokens` long (a document, a long system prompt or history) are copied to
  staging and written to disk in the background, unless already there. The engine has no notion
  of pinned documents; pinned documents and system prompts come first in the prompt
  (rag/context.py), so they are written whenever the prompt that carries them is long enough.
- Lookup: after the device's longest hit, each next block is looked for in RAM, verified by its
  digest and tokens; the hits are then loaded into fresh device blocks like computed ones.
- Disk reads happen off the step: when the next block is on disk, the lookup reserves RAM slots
  for it and the blocks after it, hands them to the reader thread (`DiskReader`) and answers with
  a `ReadTicket` instead of hits. The sequence waits (not admitted) while the other sequences
  step; once the read is collected (`collect_reads`, each schedule), its next lookup finds the
  blocks in RAM, and whatever the read could not bring (a missing, damaged or foreign file) is
  computed: the lookup after a read never waits for the disk again, so a sequence never waits
  forever. A second sequence over the same prefix waits for the same read.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.cache_dir import kv_cache_root
from engine.kv_tiers.copies import CopyPlan, KVCopier
from engine.kv_tiers.disk_reader import BlockRead, DiskRead, DiskReader
from engine.kv_tiers.disk_store import BlockLayout, DiskKVStore
from engine.kv_tiers.disk_writer import DiskWriter, WriteJob
from engine.kv_tiers.fingerprint import DIGEST_SIZE, chain_digest
from engine.kv_tiers.host_pool import HostKVPool

log = logging.getLogger(__name__)


@dataclass
class TierLoad:
    """One block found below the device: the RAM slot it is in now, and where it came from."""

    key: int
    slot: int
    digest: bytes
    tier: str  # "ram" or "disk"


@dataclass
class ReadTicket:
    """A waiting sequence's claim on a disk read, and on the RAM slots of its blocks before the
    read's (pinned until the sequence is admitted or freed, so its prefix is whole by then)."""

    read: DiskRead
    pinned: list[int]

    @property
    def done(self) -> bool:
        """The read is collected: look up again, and compute what it did not bring."""
        return self.read.collected


@dataclass
class TierLookup:
    """What a lookup found below the device: blocks in RAM now, or a disk read to wait for."""

    loads: list[TierLoad]
    wait: ReadTicket | None = None


class KVTiers:
    def __init__(self, copier: KVCopier, host: HostKVPool, root_digest: bytes, root_key: int, num_blocks: int,
                 disk: DiskKVStore | None = None, writer: DiskWriter | None = None,
                 min_disk_tokens: int = 1024, reader: DiskReader | None = None) -> None:
        self.copier = copier
        self.host = host
        self.disk = disk
        self.writer = writer
        self.reader = reader if reader is not None or disk is None else DiskReader(disk)
        # False: a lookup reads from disk itself and the step waits (the benchmark's baseline)
        self.read_in_background = True
        self._reading: dict[int, DiskRead] = {}  # RAM slot -> the read filling it
        self.root_digest = root_digest
        self.root_key = root_key
        self.min_disk_tokens = min_disk_tokens
        self.digests = np.zeros((num_blocks, DIGEST_SIZE), dtype=np.uint8)  # per device block, once published
        self.on_disk = np.zeros(num_blocks, dtype=bool)  # written, queued, or read from disk
        self.plan = CopyPlan()
        self._jobs: list[WriteJob] = []  # the disk writes of `plan.stage`, in order
        self.num_offloaded = self.num_ram_hits = self.num_disk_hits = 0

    def digest_of(self, block: int) -> bytes:
        return self.root_digest if block < 0 else self.digests[block].tobytes()

    def wants_disk(self, num_prompt_tokens: int) -> bool:
        return self.writer is not None and num_prompt_tokens >= self.min_disk_tokens

    # ------------------------------------------------------------------ lookup and load

    def lookup(self, keys: list[int], tokens: np.ndarray, parent_block: int, parent_key: int,
               limit: int, read_disk: bool = True) -> TierLookup:
        """The blocks after `parent_block` (-1: the start) found in RAM, in order, at most `limit`.
        When the next block is on disk (or being read for another sequence), and `read_disk`, the
        answer is instead a ticket for the read that brings it to RAM: wait for it, then look up
        again with `read_disk=False`."""
        if keys and keys[0] not in self.host.lru and not (read_disk and self.reader is not None
                                                         and self.disk.has(keys[0])):
            return TierLookup([])  # the usual miss (a chat's question), without hashing its tokens
        digest = self.digest_of(parent_block)
        hits: list[TierLoad] = []
        wait = None
        for j, (key, toks) in enumerate(zip(keys[:limit], tokens)):
            digest = chain_digest(digest, toks)
            slot = self.host.find(key, digest, toks)
            if slot is not None and slot not in self.host.filling:
                hits.append(TierLoad(key, slot, digest, "disk" if self.host.from_disk[slot] else "ram"))
                self.host.locked.add(slot)  # reservations later in this lookup must not reuse it
                parent_key = key
                continue
            if not read_disk or self.reader is None:
                break
            if slot is not None:  # being read for another sequence: wait for that read
                wait = self._ticket(self._reading[slot], hits)
            elif (read := self._start_read(keys[j:limit], tokens[j:limit], digest, parent_key)) is not None:
                if self.read_in_background:
                    wait = self._ticket(read, hits)
                else:  # the step waits for the disk
                    self.reader.run(read)
                    self.collect_reads()
                    hits += [TierLoad(b.key, b.slot, b.digest, "disk") for b in read.blocks[:read.num_read]]
            break
        self.host.locked.difference_update(h.slot for h in hits)
        return TierLookup([], wait) if wait is not None else TierLookup(hits)

    def _start_read(self, keys: list[int], tokens: np.ndarray, digest: bytes, parent_key: int) -> DiskRead | None:
        """Reserve RAM slots for the run of blocks on disk that starts here (`digest` is the
        first one's) and queue their read; None when the first is not on disk or gets no slot."""
        blocks: list[BlockRead] = []
        for i, (key, toks) in enumerate(zip(keys, tokens)):
            if i:
                digest = chain_digest(digest, toks)
            if not self.disk.has(key):
                break
            slot = self.host.reserve(key, digest, toks)
            if slot is None:  # in RAM already (the next lookup finds it), or no slot free
                break
            self.host.filling.add(slot)
            self.copier.before_host_write(slot)
            blocks.append(BlockRead(key, parent_key, digest, np.array(toks), slot, self.host.row(slot)))
            parent_key = key
        if not blocks:
            return None
        read = DiskRead(blocks)
        for b in blocks:
            self._reading[b.slot] = read
        if self.read_in_background:
            self.reader.submit(read)
        return read

    def _ticket(self, read: DiskRead, before: list[TierLoad]) -> ReadTicket:
        pinned = [h.slot for h in before]
        self.host.pinned.update(pinned)
        read.waiters += 1
        read.cancelled = False  # a sequence wants it again
        return ReadTicket(read, pinned)

    def collect_reads(self) -> None:
        """Take the finished reads: the blocks read become RAM blocks (pinned while sequences wait
        for them), the slots of the others are freed."""
        if self.reader is None:
            return
        for read in self.reader.completed():
            for i, b in enumerate(read.blocks):
                self.host.filling.discard(b.slot)
                del self._reading[b.slot]
                if i < read.num_read:
                    self.host.from_disk[b.slot] = True
                else:
                    self.host.discard(b.slot)
            read.collected = True
            if read.waiters:
                self.host.pinned.update(read.slots[:read.num_read])

    def release(self, ticket: ReadTicket) -> None:
        """The sequence was admitted or freed: it no longer counts on the read or its slots. A read
        nobody waits for any more is cancelled; its slots are freed when it is collected."""
        self._unpin(ticket.pinned)
        read = ticket.read
        read.waiters -= 1
        if read.waiters == 0:
            if read.collected:
                self._unpin(read.slots[:read.num_read])
            else:
                read.cancelled = True

    def _unpin(self, slots: list[int]) -> None:
        pinned = self.host.pinned
        pinned.subtract(slots)
        for s in slots:
            if pinned[s] <= 0:
                pinned.pop(s, None)

    def wait_for_reads(self, timeout: float) -> bool:
        """Wait until a disk read finishes (or `timeout`); whether one has."""
        return self.reader is not None and self.reader.wait(timeout)

    def lock(self, loads: list[TierLoad]) -> None:
        """Keep the slots of hits about to be loaded from being reused by evictions meanwhile."""
        self.host.locked.update(h.slot for h in loads)

    def load(self, loads: list[TierLoad], blocks: list[int]) -> None:
        for h, b in zip(loads, blocks):
            self.plan.load.append((h.slot, b))
            self.digests[b] = np.frombuffer(h.digest, dtype=np.uint8)
            self.on_disk[b] = h.tier == "disk" or (self.disk is not None and h.key in self.disk.known)
            self.host.from_disk[h.slot] = False
            if h.tier == "disk":
                self.num_disk_hits += 1
            else:
                self.num_ram_hits += 1

    # ------------------------------------------------------------------ what the device does

    def evicted(self, block: int, key: int, tokens: np.ndarray) -> None:
        """A cached device block is about to be reused: keep a copy in RAM."""
        slot = self.host.reserve(key, self.digest_of(block), tokens)
        if slot is not None:
            self.plan.offload.append((block, slot))
            self.num_offloaded += 1

    def published(self, block: int, parent_block: int, tokens: np.ndarray) -> None:
        """A computed full block: its digest follows from its parent's."""
        self.digests[block] = np.frombuffer(chain_digest(self.digest_of(parent_block), tokens), dtype=np.uint8)
        self.on_disk[block] = False

    def write_through(self, block: int, key: int, parent_key: int, tokens: np.ndarray) -> None:
        """Queue a cached device block for disk unless it is there (or the staging rows are full)."""
        if self.on_disk[block]:
            return
        if key in self.disk.known:
            self.on_disk[block] = True
            return
        row = self.writer.take_row()
        if row is None:
            return
        self.plan.stage.append((block, row))
        self._jobs.append(WriteJob(row, key, parent_key, self.digest_of(block), tokens.copy()))
        self.on_disk[block] = True

    def flush(self) -> None:
        """Run the copies decided since the last flush; hand staged blocks to the disk writer."""
        self.host.locked.clear()
        if not self.plan:
            return
        plan, self.plan = self.plan, CopyPlan()
        host = self.host.storage() if plan.offload or plan.load else None
        staging = self.writer.rows() if plan.stage else None
        event = self.copier.run(plan, host, staging)
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.event = event
            self.writer.submit(job)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for queued disk writes (tests, shutdown)."""
        return self.writer.drain(timeout) if self.writer is not None else True

    def close(self, timeout: float | None = None) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.writer is not None:
            self.writer.close(timeout)

    def stats(self) -> dict[str, int]:
        s = {"ram_blocks_cached": self.host.num_cached, "ram_blocks_total": self.host.num_slots,
             "ram_hit_blocks": self.num_ram_hits, "disk_hit_blocks": self.num_disk_hits,
             "blocks_offloaded": self.num_offloaded}
        if self.disk is not None:
            s.update(self.disk.stats())
            s["disk_writes_dropped"] = self.writer.num_dropped
            s["disk_reads"] = self.reader.num_reads
            s["disk_reads_in_flight"] = self.reader.num_in_flight
        return s


def build_tiers(config, kv_cache, fingerprint: bytes, root_key: int, description: str) -> KVTiers | None:
    """The tiers an `EngineConfig` asks for over a runner's KV cache; None when the RAM tier is off
    (the disk tier reads through RAM slots) or there is no prefix cache. A disk folder that cannot
    be created turns the disk tier off, with a warning."""
    if not config.host_kv_cache or not config.enable_prefix_caching:
        return None
    copier = KVCopier(kv_cache)
    bs = config.block_size
    host = HostKVPool(max(1, config.host_kv_cache // copier.block_bytes), copier.block_bytes, bs, copier.cuda)
    disk = writer = None
    if config.disk_kv_cache:
        folder = Path(config.disk_kv_dir or kv_cache_root()) / fingerprint.hex()
        shape = tuple(kv_cache.shape[:2]) + tuple(kv_cache.shape[3:])
        layout = BlockLayout(str(kv_cache.dtype).removeprefix("torch."), shape, copier.block_bytes)
        try:
            disk = DiskKVStore(folder, fingerprint, layout, bs, config.disk_kv_cache, description)
        except OSError as e:
            log.warning("KV blocks will not be kept on disk: cannot use %s: %s", folder, e)
        else:
            writer = DiskWriter(disk, max(1, config.disk_kv_write_buffer // copier.block_bytes), copier.cuda)
    return KVTiers(copier, host, fingerprint, root_key, kv_cache.shape[2], disk, writer,
                   config.disk_kv_min_prefix_tokens)
