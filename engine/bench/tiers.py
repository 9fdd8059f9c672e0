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

`steps_during_read` (`python -m engine.bench.tiers`): the decode step time of a running chat while
another chat's document is read from disk, with the read in the step (the old way: the step that
admits the reader waits for the disk) and in the background (the reader waits; the chat steps).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.bench.patterns import forced, random_prompts, run_batch
from engine.bench.report import table
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


# ---------------------------------------------------------------------- a chat's steps during a read

@dataclass
class StepsDuringRead:
    """A running chat's decode steps, alone and from another chat's arrival over a document on disk
    to that chat's first token."""

    background: bool  # the read ran on the reader thread (else in the step that admits the reader)
    page_cache: bool  # the document's files were in the page cache (else read from the disk)
    alone_ms: list[float]
    during_ms: list[float]  # the last one admits the reader: it loads its blocks and computes its question
    schedule_ms: list[float]  # of the steps in during_ms: the schedule alone (a read in the step is in it)
    read_ms: float  # the store reading the document's files, wherever it ran
    reader_ttft_s: float
    reader_disk_tokens: int
    reader_computed_tokens: int

    @property
    def while_reading_ms(self) -> float:
        """The chat's longest step while the read was in flight: in the background, the steps
        before the admitting one; in the step, the admitting one (the read is inside it)."""
        return max(self.during_ms[:-1] if self.background else self.during_ms[-1:])

    @property
    def admitting_ms(self) -> float:
        return self.during_ms[-1]


def _timed_step(engine) -> float:
    start = time.perf_counter()
    engine.step()
    return (time.perf_counter() - start) * 1000


class _TimedSchedule:
    """Wraps a scheduler's `schedule` to time each call (the host part of a step)."""

    def __init__(self, scheduler) -> None:
        self.scheduler, self.real, self.ms = scheduler, scheduler.schedule, []
        scheduler.schedule = self

    def __call__(self):
        start = time.perf_counter()
        try:
            return self.real()
        finally:
            self.ms.append((time.perf_counter() - start) * 1000)

    def remove(self) -> None:
        del self.scheduler.schedule


def _chat_during_read(llm: LLM, doc: list[int], chat: list[int], question: list[int], background: bool,
                      page_cache: bool, alone_steps: int = 8) -> StepsDuringRead:
    engine = llm.engine
    engine.kv_tiers.read_in_background = background
    _run(llm, chat[:32] + question)  # first-call costs stay out (and, on CUDA, graph captures)
    chatting = engine.add_request(chat, forced(100_000))
    seq = engine.requests[chatting].samples[0].seq
    while seq.num_generated < 2:
        engine.step()
    alone = [_timed_step(engine) for _ in range(alone_steps)]
    if not page_cache:
        _drop_page_cache(list(engine.kv_tiers.disk.folder.glob("*.kv")))
    store = engine.kv_tiers.disk
    read_s = []
    real_read = store.read_into

    def timed_read(*args):
        start = time.perf_counter()
        try:
            return real_read(*args)
        finally:
            read_s.append(time.perf_counter() - start)
    store.read_into = timed_read
    reader = engine.add_request(doc + question, forced(4))
    reader_seq = engine.requests[reader].samples[0].seq
    during = []
    timer = _TimedSchedule(engine.scheduler)
    while reader_seq.num_generated == 0:
        during.append(_timed_step(engine))
    timer.remove()
    del store.read_into
    engine.abort_request(chatting)
    out = None
    while out is None:
        out = next((o for o in engine.step() if o.request_id == reader and o.finished), None)
    m = out.metrics
    return StepsDuringRead(background, page_cache, alone, during, timer.ms, sum(read_s) * 1000, m.ttft_s,
                           m.num_disk_cached_tokens, m.num_computed_prompt_tokens)


def forget_cached(llm: LLM) -> None:
    """What a restart forgets: every cached block on the device and in RAM (the disk keeps its
    files), without the minute a new engine takes to load."""
    bm = llm.engine.block_manager
    pool, host = bm.pool, bm.tiers.host
    on_evict, pool.on_evict = pool.on_evict, None  # dropped, not moved to RAM
    pool.release(pool.allocate(pool.num_free))
    pool.on_evict = on_evict
    for slot in list(host.lru.values()):
        host.discard(slot)


def steps_during_read(model: str | None, engine_kwargs: dict, doc_tokens: int = 4096, chat_tokens: int = 64,
                      question: int = 24, seed: int = 7, repeats: int = 3) -> list[StepsDuringRead]:
    """One engine reads the document cold (its blocks go to disk), then stops writing; for each
    repeat and each way of reading, it forgets what it cached (as a restart does), runs a chat and,
    while the chat decodes, a second chat over the document arrives. The ways alternate within a
    repeat, so a change in the machine's load falls on all of them alike."""
    folder = Path(tempfile.mkdtemp(prefix="folio-bench-kv-read-"))
    kwargs = dict(engine_kwargs, disk_kv_cache="64GiB", disk_kv_dir=folder, disk_kv_min_prefix_tokens=doc_tokens)
    kwargs.setdefault("host_kv_cache", "2GiB")  # the disk tier reads through RAM
    runs = []
    try:
        llm = LLM(model, **kwargs)
        vocab = llm.engine.model_config.vocab_size
        doc = random_prompts(1, doc_tokens, vocab, seed)[0]
        chat, q, q2 = random_prompts(3, chat_tokens, vocab, seed + 1)
        _run(llm, doc + q2[:question])
        llm.engine.kv_tiers.drain()
        llm.engine.kv_tiers.min_disk_tokens = 1 << 40  # from now on the disk stays as it is
        for _ in range(repeats):
            for page_cache in (True, False):
                for background in (False, True):
                    forget_cached(llm)
                    runs.append(_chat_during_read(llm, doc, chat, q[:question], background, page_cache))
        llm.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return runs


def format_steps_during_read(runs: list[StepsDuringRead], doc_tokens: int) -> str:
    rows = []
    for page_cache in (True, False):
        for background in (False, True):
            mine = [r for r in runs if r.background == background and r.page_cache == page_cache]
            if not mine:
                continue

            def med(f) -> float:
                return statistics.median(f(r) for r in mine)
            alone = statistics.median(ms for r in mine for ms in r.alone_ms)
            reading = med(lambda r: r.while_reading_ms)
            rows.append([
                f"{'in the background' if background else 'in the step (before)'}, "
                f"{'page cache' if page_cache else 'from the disk'}",
                f"{med(lambda r: r.read_ms):.0f}", f"{alone:.1f}", f"{reading:.1f}", f"{reading / alone:.2f}x",
                f"{med(lambda r: r.admitting_ms):.1f}", f"{med(lambda r: r.schedule_ms[-1]):.1f}",
                f"{statistics.mean(len(r.during_ms) for r in mine):.1f}",
                f"{med(lambda r: r.reader_ttft_s) * 1000:.0f}",
                f"{mine[0].reader_disk_tokens}/{mine[0].reader_computed_tokens}"])
    return table([f"disk read of a {doc_tokens}-token document", "read ms", "chat step alone ms",
                  "chat step while reading ms", "of alone", "admitting step ms", "its schedule ms", "steps",
                  "reader TTFT ms", "reader disk/computed"], rows)


def main(argv: list[str] | None = None) -> list[StepsDuringRead]:
    ap = argparse.ArgumentParser(prog="python -m engine.bench.tiers",
                                 description="A running chat's step time while another chat's document is "
                                             "read from disk: the read in the step against in the background.")
    ap.add_argument("--model", default=None, help="HF folder or .gguf (default: the bundled model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--doc-tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3, help="runs per row (medians are printed)")
    args = ap.parse_args(argv)
    print(f"load average before {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    kwargs = {"device": args.device, "max_num_batched_tokens": 8192}
    if args.device.startswith("cuda"):
        kwargs["max_model_len"] = 8192
    runs = steps_during_read(args.model, kwargs, args.doc_tokens, repeats=args.repeats)
    print(f"load average after {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(format_steps_during_read(runs, args.doc_tokens))
    print("read: the store reading the document's block files (on the reader thread, or in the step). "
          "chat step while reading: the running chat's longest step while the read was in flight (in the step: "
          "the step that reads, which also admits the reader). admitting step: the step that loads the "
          "reader's blocks from RAM and computes its question; its schedule holds the RAM->device copy (and, "
          "in the step, the read). steps: the chat's steps from the reader's arrival to its first token. "
          "Medians over the repeats.")
    return runs


if __name__ == "__main__":
    main()
