"""The KV tiers suite: TTFT of a chat over a document read before, from disk after a restart and from
host RAM after eviction, against reading it cold; and the disk store's read speed against `dd`.

One cache folder (a temporary one) for the whole run:
1. engine A reads the document cold (its blocks are written to disk in the background);
2. engine B, a new `LLM` over the same folder (a restart), answers a new question over it: the
   document comes from disk, first with its files still in the page cache (a restart), then, in
   engine C, with the files dropped from the page cache (a reboot);
3. in C, every device block is evicted (to RAM, as a full pool would), and a third question is
   asked: the document comes from RAM.
Each engine is freed before the next is made, so each has the device to itself.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.bench.patterns import random_prompts, run_batch
from engine.kv_tiers.fingerprint import chain_digest
from engine.llm import LLM


@dataclass
class TierRun:
    ttft_s: float
    device: int
    ram: int
    disk: int
    computed: int


@dataclass
class TiersResult:
    doc_tokens: int
    cold: TierRun
    restart: TierRun  # files in the page cache
    reboot: TierRun  # files dropped from the page cache first
    ram: TierRun
    disk_read_mb_s: float  # the store reading the document's files (not in the page cache)
    dd_mb_s: float  # dd reading a file of the same size (not in the page cache)
    disk_bytes: int
    notes: list[str] = field(default_factory=list)

    def ratio(self, run: TierRun) -> float:
        return run.ttft_s / self.cold.ttft_s

    @property
    def read_ratio(self) -> float:
        return self.disk_read_mb_s / self.dd_mb_s


def _run(llm: LLM, prompt: list[int]) -> TierRun:
    (out,) = run_batch(llm.engine, [prompt], 8)[2]
    m = out.metrics
    return TierRun(m.ttft_s, m.num_device_cached_tokens, m.num_ram_cached_tokens, m.num_disk_cached_tokens,
                   m.num_computed_prompt_tokens)


def _drop_page_cache(paths: list[Path]) -> None:
    """Ask the kernel to forget the files' pages (they are written and fsynced: clean)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def evict_device_blocks(llm: LLM) -> None:
    """Take every free block once, as a full pool would: each cached block is evicted to RAM."""
    bm = llm.engine.block_manager
    blocks = bm.pool.allocate(bm.pool.num_free)
    bm.tiers.flush()
    bm.pool.release(blocks)


def _read_speed(llm: LLM, doc: list[int]) -> tuple[float, int]:
    """MB/s of the store reading (and checking) the document's block files from the disk, one by
    one after a read-ahead, as a lookup does."""
    tiers = llm.engine.kv_tiers
    store = tiers.disk
    bs = store.block_size
    keys = llm.engine.block_manager.hasher.chain(np.asarray(doc))[0]
    blocks = np.asarray(doc[:len(keys) * bs]).reshape(-1, bs)
    paths = [store.path(k) for k in keys]
    _drop_page_cache(paths)
    out = np.empty(store.layout.nbytes, np.uint8)
    digest, parent = tiers.root_digest, llm.engine.block_manager.hasher.model_key
    start = time.perf_counter()
    store.prefetch(keys)  # as KVTiers.lookup does
    for key, toks in zip(keys, blocks):
        digest = chain_digest(digest, toks)
        if not store.read_into(key, parent, digest, toks, out):
            raise RuntimeError(f"block {key:016x} of the document is not on disk")
        parent = key
    elapsed = time.perf_counter() - start
    nbytes = sum(p.stat().st_size for p in paths)
    return nbytes / elapsed / 1e6, nbytes


def _dd_speed(folder: Path, nbytes: int) -> float:
    """MB/s of `dd` reading a file of `nbytes` in the same folder, not in the page cache."""
    path = folder / "dd-probe"
    chunk = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        for _ in range(-(-nbytes // len(chunk))):
            f.write(chunk)
        os.fsync(f.fileno())
    _drop_page_cache([path])
    start = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    size = path.stat().st_size
    path.unlink()
    return size / elapsed / 1e6


def kv_tiers(model: str | None, engine_kwargs: dict, doc_tokens: int = 4096, question: int = 24,
             seed: int = 5, release=lambda: None) -> TiersResult:
    folder = Path(tempfile.mkdtemp(prefix="folio-bench-kv-"))
    cuda = str(engine_kwargs.get("device", "cpu")).startswith("cuda")
    kwargs = dict(engine_kwargs, disk_kv_cache="64GiB", disk_kv_dir=folder, disk_kv_min_prefix_tokens=doc_tokens)
    try:
        first = LLM(model, **kwargs)
        vocab = first.engine.model_config.vocab_size
        doc = random_prompts(1, doc_tokens, vocab, seed)[0]
        questions = random_prompts(5, question, vocab, seed + 1)
        warm = random_prompts(1, doc_tokens if cuda else 256, vocab, seed + 2)[0]
        _run(first, warm + questions[4])  # first-call costs (and, on CUDA, kernel compiles) stay out
        cold = _run(first, doc + questions[0])
        first.close()
        del first
        release()

        second = LLM(model, **kwargs)
        _run(second, warm[:256] + questions[4])
        restart = _run(second, doc + questions[1])
        second.close()
        del second
        release()

        third = LLM(model, **kwargs)
        _run(third, warm[:256] + questions[4])
        disk_mb_s, disk_bytes = _read_speed(third, doc)  # drops the files from the page cache after
        _drop_page_cache(list(third.engine.kv_tiers.disk.folder.glob("*.kv")))
        reboot = _run(third, doc + questions[2])
        evict_device_blocks(third)
        ram = _run(third, doc + questions[3])
        dd_mb_s = _dd_speed(third.engine.kv_tiers.disk.folder, disk_bytes)
        third.close()
        del third
        release()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return TiersResult(doc_tokens, cold, restart, reboot, ram, disk_mb_s, dd_mb_s, disk_bytes)
