"""KV tiers: blocks evicted from the device come back from RAM, blocks of long prompts come back
from disk after a restart, and nothing that is damaged, foreign or half-written is ever used.

Engine tests run a tiny random-weight Llama through the real loader (decisive logits, so greedy
text is a sharp equality) and compare every answer with one computed fresh by an engine without
tiers; one restart test runs the bundled model. Disk reads run on the reader thread; the tests that
need a read to stay in flight hold that thread inside the store's read (`HeldDisk`), so nothing
depends on timing. Store tests drive `DiskKVStore` directly,
including from other processes (SIGKILL mid-write, two writers at once).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PASSAGE
from engine import LLM, SamplingParams
from engine.kv_tiers.disk_store import TMP_PREFIX, BlockLayout, DiskKVStore
from engine.kv_tiers.fingerprint import chain_digest

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
BS = 16
ROOT = Path(__file__).resolve().parents[1]


def tiny_llama(folder: Path, bundled_folder: Path, seed: int) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    cfg = AutoConfig.for_model(
        "llama", vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(bundled_folder)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, bundled_folder) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny"), bundled_folder, seed=1)


@pytest.fixture(scope="module")
def fresh(tiny):
    """Answers computed from scratch: no tiers, no prefix cache."""
    llm = LLM(tiny, num_kv_blocks=128, host_kv_cache=0, enable_prefix_caching=False)
    return lambda prompt: llm.generate([prompt], GREEDY)[0].token_ids


def prompt(seed: int, length: int) -> list[int]:
    return np.random.default_rng(seed).integers(100, 40000, length).tolist()


def on_disk(folder: Path, **config) -> dict:
    return dict(disk_kv_cache="64MiB", disk_kv_dir=folder, disk_kv_min_prefix_tokens=32, **config)


def run(llm: LLM, tokens: list[int]):
    out = llm.generate([tokens], GREEDY)[0]
    llm.engine.kv_tiers.drain()
    return out


def block_files(llm: LLM, tokens: list[int]) -> list[Path]:
    """The disk files of the prompt's full blocks, in order."""
    keys = llm.engine.block_manager.hasher.chain(np.asarray(tokens))[0]
    return [llm.engine.kv_tiers.disk.path(k) for k in keys]


# --------------------------------------------------------------------------- engine: RAM

def test_evicted_blocks_come_back_from_ram(tiny, fresh):
    llm = LLM(tiny, num_kv_blocks=24)
    doc = prompt(0, 160)
    first = run(llm, doc)
    assert first.metrics.num_cached_tokens == 0
    for seed in (1, 2):  # 2 x 11 blocks through a 24-block pool: the document's blocks are evicted
        run(llm, prompt(seed, 170))
    assert llm.stats()["blocks_offloaded"] >= 9
    again = run(llm, doc)
    m = again.metrics
    assert m.num_ram_cached_tokens == 144 and m.num_cached_tokens == 144  # 9 full blocks; the 10th holds the last token
    assert m.num_disk_cached_tokens == 0 and m.num_device_cached_tokens == 0
    assert again.token_ids == first.token_ids == fresh(doc)
    # and from the device now: the loaded blocks are cached like computed ones
    third = run(llm, doc + [7])
    assert third.metrics.num_device_cached_tokens == 160 and third.token_ids == fresh(doc + [7])
    assert llm.stats()["blocks_used"] == 0


def test_a_ram_pool_smaller_than_the_prefix_gives_what_it_holds(tiny, fresh):
    block_bytes = 2 * 2 * BS * 2 * 16 * 4  # K and V, 2 layers, 16 tokens, 2 heads of 16, fp32
    llm = LLM(tiny, num_kv_blocks=24, host_kv_cache=4 * block_bytes)
    assert llm.stats()["ram_blocks_total"] == 4
    doc = prompt(3, 160)
    run(llm, doc)
    for seed in (4, 5):
        run(llm, prompt(seed, 170))
    again = run(llm, doc)
    assert again.metrics.num_ram_cached_tokens <= 4 * BS
    assert again.token_ids == fresh(doc)


def assert_nothing_held(llm: LLM) -> None:
    """Idle: every device block free, every read collected, no RAM slot reserved or pinned."""
    engine = llm.engine
    tiers = engine.kv_tiers
    engine.scheduler.block_manager.collect_reads()
    host = tiers.host
    assert engine.stats()["blocks_used"] == 0
    assert tiers.reader.num_in_flight == 0 and not tiers._reading and not engine.block_manager._reads
    assert not host.filling and not +host.pinned and not host.locked
    assert sorted(list(host.lru.values()) + host.free) == list(range(host.num_slots))


# --------------------------------------------------------------------------- engine: disk

@pytest.mark.parametrize("background,async_scheduling", [(True, False), (True, True), (False, False)],
                         ids=["read-in-background", "read-in-background-async-steps", "read-in-the-step"])
def test_restart_reads_the_prefix_from_disk(tiny, fresh, tmp_path, background, async_scheduling):
    doc = prompt(6, 200)
    first = run(LLM(tiny, num_kv_blocks=64, **on_disk(tmp_path)), doc)
    llm = LLM(tiny, num_kv_blocks=64, async_scheduling=async_scheduling, **on_disk(tmp_path))
    llm.engine.kv_tiers.read_in_background = background
    again = run(llm, doc)
    assert again.metrics.num_disk_cached_tokens == again.metrics.num_cached_tokens == 192
    assert again.token_ids == first.token_ids == fresh(doc)
    s = llm.stats()
    assert s["disk_blocks_cached"] == 13 and s["disk_hit_blocks"] == 12  # 13: the answer filled one more
    # a prompt below the length setting is not written
    short = prompt(7, 31)
    run(llm, short)
    assert not any(p.exists() for p in block_files(llm, short))
    assert s["disk_reads"] == 1
    assert_nothing_held(llm)


class HeldDisk:
    """Holds the reader thread inside the store's first read until `release()`: a disk read stays
    in flight for as long as a test needs, whatever the machine's speed."""

    def __init__(self, store: DiskKVStore, monkeypatch) -> None:
        self.reading = threading.Event()
        self._gate = threading.Event()
        real = store.read_into

        def read_into(*args):
            self.reading.set()
            assert self._gate.wait(120), "the test never released the disk"
            return real(*args)
        monkeypatch.setattr(store, "read_into", read_into)

    def release(self) -> None:
        self._gate.set()


def finish(llm: LLM, ids: list[str]) -> dict:
    """Step until these requests are done; their outputs by id."""
    done = {}
    while len(done) < len(ids):
        done.update((o.request_id, o) for o in llm.engine.step() if o.finished)
    llm.engine.kv_tiers.drain()
    return done


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync-steps", "async-steps"])
def test_a_disk_read_never_holds_up_a_running_chat(tiny, fresh, tmp_path, monkeypatch, async_scheduling):
    doc, chat = prompt(10, 200), prompt(11, 20)
    run(LLM(tiny, num_kv_blocks=64, **on_disk(tmp_path)), doc)
    llm = LLM(tiny, num_kv_blocks=64, async_scheduling=async_scheduling, **on_disk(tmp_path))
    engine = llm.engine
    disk = HeldDisk(engine.kv_tiers.disk, monkeypatch)
    a = engine.add_request(chat, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    for _ in range(3):
        engine.step()
    chatting = engine.requests[a].samples[0].seq
    b = engine.add_request(doc, GREEDY)
    c = engine.add_request(chat[:9], GREEDY)  # arrives after the reader, not on disk
    reader, behind = (engine.requests[r].samples[0].seq for r in (b, c))
    before = chatting.num_generated
    engine.step()  # starts the read of the document's blocks, steps the chat, admits the one behind
    assert disk.reading.wait(120)  # the reader thread is inside the read now, and stays there
    for _ in range(5):
        engine.step()
    assert chatting.num_generated == before + 6, "the chat got a token every step"
    assert behind.num_generated >= 4, "the request behind the reader was admitted meanwhile"
    assert list(engine.scheduler.waiting) == [reader], "the reader waits, keeping its place"
    assert reader.block_table == [] and reader.num_computed_tokens == 0
    assert engine.stats()["disk_reads_in_flight"] == 1
    disk.release()
    done = finish(llm, [a, b, c])
    assert done[b].metrics.num_disk_cached_tokens == done[b].metrics.num_cached_tokens == 192
    assert done[b].token_ids == fresh(doc)
    assert done[a].token_ids[:GREEDY.max_tokens] == fresh(chat)
    assert done[c].token_ids == fresh(chat[:9])
    assert_nothing_held(llm)


def test_abort_during_a_disk_read_gives_its_slots_back(tiny, fresh, tmp_path, monkeypatch):
    doc = prompt(12, 200)
    run(LLM(tiny, num_kv_blocks=64, **on_disk(tmp_path)), doc)
    llm = LLM(tiny, num_kv_blocks=64, **on_disk(tmp_path))
    engine, host = llm.engine, llm.engine.kv_tiers.host
    disk = HeldDisk(engine.kv_tiers.disk, monkeypatch)
    b = engine.add_request(doc, GREEDY)
    engine.step()
    assert disk.reading.wait(120)
    assert len(host.filling) == 12  # the slots the read goes into
    out = engine.abort_request(b)
    assert out.finished and out.outputs[0].finish_reason == "abort" and out.token_ids == []
    assert len(host.filling) == 12  # the reader still writes into them: freed once it lets go
    disk.release()
    assert engine.kv_tiers.reader.wait(120)
    engine.step()  # nothing to run; the schedule collects the cancelled read
    assert_nothing_held(llm)
    # cancelled after the block it was reading: that one stays in RAM, the others' slots were freed
    assert host.num_cached == 1 and host.from_disk.sum() == 1
    again = run(llm, doc)
    assert again.metrics.num_disk_cached_tokens == 192 and again.token_ids == fresh(doc)
    assert_nothing_held(llm)


@pytest.mark.parametrize("failure", ["vanished", "corrupt", "error"])
def test_a_read_that_fails_counts_as_a_miss(failure, tiny, fresh, tmp_path, monkeypatch):
    """A file deleted or damaged while its read is queued, or a reader that raises: the blocks from
    there on are computed, and the request is answered as if fresh."""
    doc = prompt(13, 200)
    run(LLM(tiny, num_kv_blocks=64, **on_disk(tmp_path)), doc)
    llm = LLM(tiny, num_kv_blocks=64, **on_disk(tmp_path))
    engine = llm.engine
    store = engine.kv_tiers.disk
    if failure == "error":
        def broken(*args):
            raise RuntimeError("a bug in the read")
        monkeypatch.setattr(store, "read_into", broken)
        expected = 0
    else:
        disk = HeldDisk(store, monkeypatch)
        b = engine.add_request(doc, GREEDY)
        engine.step()
        assert disk.reading.wait(120)  # block 0 is being read; the others are queued behind it
        bad = block_files(llm, doc)[4]
        if failure == "vanished":
            bad.unlink()
        else:
            data = bytearray(bad.read_bytes())
            data[-3] ^= 1
            bad.write_bytes(bytes(data))
        disk.release()
        expected = 4 * BS
    out = finish(llm, [b])[b] if failure != "error" else run(llm, doc)
    assert out.metrics.num_disk_cached_tokens == out.metrics.num_cached_tokens == expected
    assert out.token_ids == fresh(doc)
    assert_nothing_held(llm)


def test_chats_over_one_document_wait_for_one_read(tiny, fresh, tmp_path):
    doc = prompt(14, 200)
    run(LLM(tiny, num_kv_blocks=64, **on_disk(tmp_path)), doc)
    llm = LLM(tiny, num_kv_blocks=64, **on_disk(tmp_path))
    outs = llm.generate([doc + [5], doc + [6], doc + [7]], GREEDY)
    assert [o.metrics.num_cached_tokens for o in outs] == [192, 192, 192]
    # the first loads what the read brought; the others share those device blocks
    assert [o.metrics.num_disk_cached_tokens for o in outs] == [192, 0, 0]
    assert [o.token_ids for o in outs] == [fresh(doc + [t]) for t in (5, 6, 7)]
    s = llm.stats()
    assert s["disk_reads"] == 1 and s["disk_hit_blocks"] == 12  # read once, loaded once
    assert_nothing_held(llm)


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "foreign"])
def test_a_damaged_or_foreign_file_is_recomputed(damage, tiny, fresh, tmp_path, bundled_folder):
    doc = prompt(8, 200)
    writer = LLM(tiny, num_kv_blocks=64, **on_disk(tmp_path))
    run(writer, doc)
    files = block_files(writer, doc)
    bad = files[5]
    if damage == "corrupt":
        data = bytearray(bad.read_bytes())
        data[-100] ^= 0x40  # one bit of the payload
        bad.write_bytes(bytes(data))
    elif damage == "truncated":
        os.truncate(bad, bad.stat().st_size - 1000)
    else:  # the same block of another model, put where this model looks for block 5
        other = LLM(tiny_llama(tmp_path / "other", bundled_folder, seed=2), num_kv_blocks=64, **on_disk(tmp_path))
        run(other, doc)
        os.replace(block_files(other, doc)[5], bad)
    llm = LLM(tiny, num_kv_blocks=64, **on_disk(tmp_path))
    out = run(llm, doc)
    assert out.metrics.num_disk_cached_tokens == 5 * BS  # blocks 0-4; block 5 and after computed
    assert out.token_ids == fresh(doc)
    # the bad file was deleted, and the recomputed block written again in its place
    assert bad.exists() and llm.engine.kv_tiers.disk.read_into(
        *_header_args(llm, doc, 5), np.empty(llm.engine.kv_tiers.disk.layout.nbytes, np.uint8))


def _header_args(llm: LLM, tokens: list[int], j: int):
    bm = llm.engine.block_manager
    keys = bm.hasher.chain(np.asarray(tokens))[0]
    digest = llm.engine.kv_tiers.root_digest
    blocks = np.asarray(tokens[:(j + 1) * BS]).reshape(-1, BS)
    for b in blocks:
        digest = chain_digest(digest, b)
    return keys[j], keys[j - 1] if j else bm.hasher.model_key, digest, blocks[-1]


def test_another_model_never_finds_the_blocks(tiny, tmp_path, bundled_folder):
    doc = prompt(9, 200)
    run(LLM(tiny, num_kv_blocks=64, **on_disk(tmp_path)), doc)
    other = LLM(tiny_llama(tmp_path / "other", bundled_folder, seed=3), num_kv_blocks=64, **on_disk(tmp_path))
    assert run(other, doc).metrics.num_cached_tokens == 0
    assert len([p for p in tmp_path.iterdir() if p.is_dir() and p.name != "other"]) == 2  # a folder per model


def test_bundled_model_restart_gives_the_same_answer(tmp_path):
    chat = [[{"role": "user", "content": PASSAGE * 2 + "\nWho rowed across the bay?"}]]
    params = SamplingParams(max_tokens=16, temperature=0)
    first = LLM(num_kv_blocks=64, **on_disk(tmp_path))
    a = first.chat(chat, params)[0]
    first.close()
    b = LLM(num_kv_blocks=64, **on_disk(tmp_path)).chat(chat, params)[0]
    assert a.metrics.num_cached_tokens == 0
    assert b.metrics.num_disk_cached_tokens == (b.metrics.num_prompt_tokens - 1) // BS * BS > 300
    assert b.text == a.text and b.token_ids == a.token_ids


# --------------------------------------------------------------------------- the store itself

LAYOUT = BlockLayout("uint8", (4, 1024), 4096)
FP = b"F" * 16


def payload(key: int, nbytes: int = LAYOUT.nbytes) -> np.ndarray:
    return np.random.default_rng(key).integers(0, 256, nbytes, dtype=np.uint8)


def put(store: DiskKVStore, key: int) -> bool:
    return store.write(key, key + 1, key.to_bytes(16, "little"), np.arange(BS) + key, payload(key, store.layout.nbytes))


def get(store: DiskKVStore, key: int) -> np.ndarray | None:
    out = np.empty(store.layout.nbytes, np.uint8)
    ok = store.read_into(key, key + 1, key.to_bytes(16, "little"), np.arange(BS) + key, out)
    return out if ok else None


def test_store_reads_back_only_exactly_the_block_written(tmp_path):
    store = DiskKVStore(tmp_path, FP, LAYOUT, BS, 1 << 30)
    assert put(store, 5) and np.array_equal(get(store, 5), payload(5))
    out = np.empty(LAYOUT.nbytes, np.uint8)
    tokens = np.arange(BS) + 5
    assert not store.read_into(5, 6, (5).to_bytes(16, "little"), tokens + 1, out)  # other tokens
    assert not store.read_into(5, 7, (5).to_bytes(16, "little"), tokens, out)  # other parent
    assert not store.read_into(5, 6, b"x" * 16, tokens, out)  # other prefix
    assert store.path(5).exists()  # a valid block of another prefix under a colliding key is kept
    assert get(DiskKVStore(tmp_path, b"G" * 16, LAYOUT, BS, 1 << 30), 5) is None  # another model: refused
    assert not store.path(5).exists()  # ... and deleted
    assert get(store, 6) is None


def test_cap_evicts_least_recently_used(tmp_path):
    store = DiskKVStore(tmp_path, FP, LAYOUT, BS, 1 << 30)
    for key in range(4):
        put(store, key)
        os.utime(store.path(key), (1000 + key, 1000 + key))
    assert get(store, 0) is not None  # read: now the most recently used
    store.cap_bytes = int(3.5 * store.file_bytes)
    put(store, 4)  # over the cap: delete the least recently used down to 90% of it
    left = sorted(int(p.stem, 16) for p in tmp_path.glob("*.kv"))
    assert left == [0, 3, 4]
    assert sum(p.stat().st_size for p in tmp_path.glob("*.kv")) <= store.cap_bytes
    assert store.known == {0, 3, 4} and store.bytes_used == 3 * store.file_bytes


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


WRITER = """
    from pathlib import Path
    import numpy as np
    from engine.kv_tiers.disk_store import BlockLayout, DiskKVStore
    store = DiskKVStore(Path({folder!r}), {fp!r}, BlockLayout("uint8", ({nbytes},), {nbytes}), {bs}, {cap})
    while not Path({go!r}).exists():
        pass
    for key in {keys!r}:  # as put() does
        data = np.random.default_rng(key).integers(0, 256, {nbytes}, dtype=np.uint8)
        assert store.write(key, key + 1, key.to_bytes(16, "little"), np.arange({bs}) + key, data)
"""


def writer_process(folder: Path, keys, nbytes: int, cap: int = 1 << 40, go: Path | None = None) -> subprocess.Popen:
    """Another process writing blocks `keys` (the payloads `put` writes) once `go` exists."""
    code = WRITER.format(folder=str(folder), fp=FP, nbytes=nbytes, bs=BS, cap=cap, go=str(go or folder),
                         keys=list(keys))
    return subprocess.Popen(_python(code), env={**os.environ, "PYTHONPATH": str(ROOT)})


def _block_tmp_files(folder: Path) -> list[Path]:
    """Temporary files of block writes (not the store's model.json, written once at its start)."""
    return [p for p in folder.glob(TMP_PREFIX + "*")
            if re.fullmatch(r"[0-9a-f]{16}-\d+-\d+", p.name[len(TMP_PREFIX):])]


def _writing(folder: Path) -> bool:
    for p in _block_tmp_files(folder):
        try:
            if p.stat().st_size:
                return True
        except FileNotFoundError:  # renamed meanwhile: that write is done
            pass
    return False


def _killed_mid_write(folder: Path, nbytes: int) -> list[Path]:
    """Start a writer, SIGKILL it once a write is under way; the temporary files it left."""
    proc = writer_process(folder, range(1000), nbytes)
    while proc.poll() is None and not _writing(folder):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return _block_tmp_files(folder)


def test_sigkill_during_a_write_leaves_nothing_that_is_read(tmp_path):
    nbytes = 32 << 20  # a write (and its fsync) takes long enough to be killed inside it
    for attempt in range(5):  # the kill may land between two writes; then it proves nothing: again
        folder = tmp_path / str(attempt)
        folder.mkdir()
        if left := _killed_mid_write(folder, nbytes):
            break
    assert left, "the writer was never killed inside a write"
    store = DiskKVStore(folder, FP, BlockLayout("uint8", (nbytes,), nbytes), BS, 1 << 40)
    half = [int(p.name[len(TMP_PREFIX):].split("-")[0], 16) for p in left]
    for key in half:
        assert key not in store.known and get(store, key) is None
    assert store.known == set(range(len(store.known)))  # the blocks written before, each whole
    for key in store.known:
        assert np.array_equal(get(store, key), payload(key, nbytes))


def test_two_processes_writing_the_same_blocks(tmp_path):
    go = tmp_path / "go"
    folder = tmp_path / "kv"
    nbytes = 1 << 20
    procs = [writer_process(folder, range(40), nbytes, go=go) for _ in range(2)]
    procs += [writer_process(tmp_path / "capped", range(40), nbytes, cap=12 * (nbytes + 1024), go=go)
              for _ in range(2)]
    time.sleep(0.5)  # both started and waiting (only so that they overlap; nothing is timed)
    go.touch()
    assert [p.wait(300) for p in procs] == [0, 0, 0, 0]
    layout = BlockLayout("uint8", (nbytes,), nbytes)
    store = DiskKVStore(folder, FP, layout, BS, 1 << 40)
    assert store.known == set(range(40))
    assert not list(folder.glob(TMP_PREFIX + "*"))
    for key in range(40):
        assert np.array_equal(get(store, key), payload(key, nbytes))
    capped = DiskKVStore(tmp_path / "capped", FP, layout, BS, 12 * (nbytes + 1024))
    assert capped.known and not list((tmp_path / "capped").glob(TMP_PREFIX + "*"))
    for key in capped.known:  # each other's deletions tolerated; what is left is whole
        assert np.array_equal(get(capped, key), payload(key, nbytes))


# --------------------------------------------------------------------------- folio cache

def test_folio_cache_stats_and_clear(tmp_path):
    store = DiskKVStore(tmp_path / "model", FP, LAYOUT, BS, 1 << 30, description="tiny.gguf")
    for key in range(3):
        put(store, key)
    code = ("import sys; from app.cli.main import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'folio cache loaded torch'; sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stats = subprocess.run([sys.executable, "-c", code, "cache", "--stats", "--dir", str(tmp_path)],
                           capture_output=True, text=True, env=env)
    assert stats.returncode == 0, stats.stderr
    assert "tiny.gguf: 3 blocks" in stats.stdout
    cleared = subprocess.run([sys.executable, "-c", code, "cache", "--clear", "--dir", str(tmp_path)],
                             capture_output=True, text=True, env=env)
    assert cleared.returncode == 0 and "Removed 3 blocks" in cleared.stdout
    assert not list(tmp_path.rglob("*.kv"))
    assert put(store, 7) and get(store, 7) is not None  # a store in use carries on after a clear


def test_stat_line_says_where_cached_tokens_came_from():
    from app.cli.chat import format_stat_line
    from engine.outputs import RequestMetrics
    m = RequestMetrics(num_prompt_tokens=4120, num_cached_tokens=4096, num_generated_tokens=8, arrival_time=1.0,
                       first_token_time=1.5, finish_time=2.0, num_ram_cached_tokens=96, num_disk_cached_tokens=4000)
    assert m.num_device_cached_tokens == 0 and m.num_computed_prompt_tokens == 24
    assert format_stat_line(m, "stop").endswith("cached 4096/4120 prompt tokens · 96 from RAM, 4000 from disk]")
