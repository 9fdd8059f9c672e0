"""The embedding path of issue 14: texts embedded in order of length still come back in the order
given, progress and cancel behave as before, the device and precision are chosen as documented,
and indexing on the new path stores the same chunks as the path before it."""
import numpy as np
import pytest

from conftest import PASSAGE
from rag import Library
from rag.embedder import CPU_BATCH, GPU_BATCH, Embedder, cpu_has_native_bf16
from rag.eval.speed import Issue4Embedder

TEXTS = [("word " * n).strip() + f" {n}" for n in (3, 200, 17, 90, 1, 140, 40)]


@pytest.fixture(scope="module")
def fp32():
    return Embedder(device="cpu", precision="fp32", batch_size=3)


def test_length_sorted_batches_come_back_in_the_order_given(fp32):
    together = fp32.embed(TEXTS)
    alone = np.stack([fp32.embed([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert together.dtype == np.float32 and together.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_progress_counts_each_batch_and_raising_in_it_stops_the_rest(fp32):
    seen = []
    fp32.embed(TEXTS, progress=seen.append)
    assert seen == [3, 6, 7]

    class Stop(Exception):
        pass

    def cancel(done):
        seen.append(done)
        raise Stop

    seen.clear()
    with pytest.raises(Stop):
        fp32.embed(TEXTS, progress=cancel)
    assert seen == [3]


def test_device_and_batch_follow_the_hardware():
    import torch
    auto = Embedder()
    assert auto.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert Embedder(device="cpu").batch_size == CPU_BATCH and Embedder(device="cuda").batch_size == GPU_BATCH
    with pytest.raises(ValueError, match="precision"):
        Embedder(precision="int4")


def test_a_busy_gpu_hands_its_batches_to_the_cpu(fp32):
    """`may_use_device` says no (the engine is answering): the batch runs on the CPU, and the
    GPU is never touched, so this runs on a machine without one."""
    asked = []

    def engine_idle() -> bool:
        asked.append(True)
        return False

    gpu = Embedder(device="cuda", precision="fp32", batch_size=3, may_use_device=engine_idle)
    vectors = gpu.embed(TEXTS)
    assert len(asked) == 3  # once a batch
    assert list(gpu._models) == ["cpu"]
    np.testing.assert_allclose(vectors, fp32.embed(TEXTS), atol=1e-5)


def test_bf16_only_where_the_cpu_has_it(tmp_path):
    plain = tmp_path / "cpuinfo"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not cpu_has_native_bf16(str(plain))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))
    native = tmp_path / "cpuinfo-bf16"
    native.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    import torch
    assert cpu_has_native_bf16(str(native)) == torch.ops.mkldnn._is_mkldnn_bf16_supported()

    auto = Embedder(device="cpu")
    assert auto.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert Embedder(device="cpu", precision="fp32").precision == "fp32"


def test_bf16_vectors_agree_with_fp32(fp32):
    bf16 = Embedder(device="cpu", precision="bf16")
    cosine = (bf16.embed(TEXTS) * fp32.embed(TEXTS)).sum(axis=1)
    assert cosine.min() > 0.99


def test_indexing_on_the_new_path_stores_the_same_chunks_as_before(tmp_path):
    files = []
    for n in range(3):
        files.append(tmp_path / f"doc{n}.txt")
        files[-1].write_text("\n\n".join(f"Part {n}.{i}. " + PASSAGE[: 150 + 97 * i] for i in range(12)),
                             encoding="utf-8")
    stored = {}
    for label, embedder in (("issue 4", Issue4Embedder()), ("new", Embedder(device="cpu"))):
        with Library(tmp_path / label, embedder=embedder) as lib:
            lib.add(files)
            store = lib._store
            rows = store._query("SELECT id, doc_id, chunk_index, text, start, end, page, section FROM chunks "
                                "ORDER BY id")
            vectors = store._vectors.get(ids=[str(r[0]) for r in rows], include=["embeddings"])
            stored[label] = (rows, dict(zip(map(int, vectors["ids"]), np.asarray(vectors["embeddings"]))))
    old_rows, old_vectors = stored["issue 4"]
    new_rows, new_vectors = stored["new"]
    assert len(old_rows) > 20 and new_rows == old_rows
    assert min(float(old_vectors[i] @ new_vectors[i]) for i in old_vectors) > 0.99


def test_the_speed_benchmark_times_every_path_on_the_same_chunks(tmp_path, capsys):
    """`python -m rag.eval --speed --quick`, as the lead runs it with `--device cuda` on a GPU host."""
    import json

    from rag.eval.retrieval import main
    out = tmp_path / "speed.json"
    assert main(["--speed", "--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    if not report["chunks"]:
        pytest.skip("no man pages on this machine")
    names = [p["name"].split(":")[0] for p in report["paths"]]
    assert names == ["issue 4", "cpu fp32", "cpu"]
    assert all(p["chunks"] == report["chunks"] and p["chunks_per_s"] > 0 for p in report["paths"])
    assert all(p["min_cosine_to_issue4"] > 0.99 for p in report["paths"])
    assert report["end_to_end"]["chunks"] > 0 and report["end_to_end"]["ratio"] > 0
    table = capsys.readouterr().out
    assert "× issue 4" in table and "Whole-library indexing" in table

    import torch
    if not torch.cuda.is_available():
        assert main(["--speed", "--quick", "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
