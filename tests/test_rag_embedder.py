"""The embedding path of issue 14: texts embedded in order of length still come back in the order
given, progress and cancel behave as before, the device and precision are chosen as documented,
and indexing on the new path stores the same chunks as the path before it."""
import numpy as np
import pytest

from conftest import PASSAGE
from rag import Library
from rag.batch_tokenizer import BatchTokenizer
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


def test_the_rust_tokenizer_feeds_the_model_what_sentence_transformers_would():
    """A text past the model's 256 word pieces, an empty one and non-ASCII ones: the torch path's
    ids and masks are sentence-transformers' own, and so are its vectors."""
    texts = ["word " * 400, "", "Ünïcödé — tëxt, ¿sí?", "The spare key is under the flower pot.", "x"]
    torch_path = Embedder(device="cpu", precision="fp32", backend="torch")
    model = torch_path.model
    expected = model.tokenize(texts)
    ids, mask = BatchTokenizer(torch_path.model_path, model.max_seq_length)(texts)
    assert ids.shape == (len(texts), 256)
    np.testing.assert_array_equal(ids, expected["input_ids"].numpy())
    np.testing.assert_array_equal(mask, expected["attention_mask"].numpy())
    vectors = model.encode(texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=True)
    np.testing.assert_allclose(torch_path.embed(texts), vectors, atol=1e-6)


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
    assert names == ["issue 4", "cpu torch", "cpu openvino fp32", "cpu"]
    assert [p["backend"] for p in report["paths"]] == ["torch", "torch", "openvino", "openvino"]
    assert all(p["chunks"] == report["chunks"] and p["chunks_per_s"] > 0 for p in report["paths"])
    assert all(p["min_cosine_to_issue4"] > 0.99 for p in report["paths"])
    whole = report["end_to_end"]
    assert whole["chunks"] > 0 and whole["ratio"] > 0
    assert 0 < whole["issue 4 embedding s"] < whole["issue 4 s"] and 0 < whole["default embedding s"] < whole["default s"]
    table = capsys.readouterr().out
    assert "× issue 4" in table and "Whole-library indexing" in table

    import torch
    if not torch.cuda.is_available():
        assert main(["--speed", "--quick", "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_a_model_folder_saved_in_fp16_runs_in_the_precision_asked_for(tmp_path, fp32):
    """transformers loads weights in their stored dtype; a path that says fp32 must run fp32."""
    import torch
    from rag.eval.speed import save_fp16_copy
    folder = save_fp16_copy(tmp_path / "minilm-fp16")
    copy = Embedder(str(folder), device="cpu", precision="fp32", batch_size=3, backend="torch")
    assert copy.precision == "fp32" and {p.dtype for p in copy.model.parameters()} == {torch.float32}
    assert copy.model_name == "minilm-fp16"
    cosine = (copy.embed(TEXTS) * fp32.embed(TEXTS)).sum(axis=1)
    assert cosine.min() > 0.999  # fp16 rounding of the weights only


def test_speed_benchmark_falls_back_to_package_readmes_without_man_pages(tmp_path, monkeypatch, capsys):
    """A bare GPU image has no man pages: the benchmark embeds package READMEs instead and says so,
    and with nothing at all to embed it stops with a clear error, not a division by zero."""
    from rag.eval import corpora, speed
    from rag.eval.retrieval import main
    monkeypatch.setattr(corpora, "MAN_ROOT", tmp_path / "no-man")
    name, paths, texts = speed.corpus_chunks(tmp_path / "corpus", quick=True)
    assert name == "packages" and len(paths) == speed.QUICK_DOCUMENTS and len(texts) >= len(paths)
    assert all(p.suffix in (".md", ".rst", ".txt") for p in paths)

    monkeypatch.setattr(corpora, "package_description", lambda name: None)
    with pytest.raises(speed.NoCorpus):
        speed.corpus_chunks(tmp_path / "empty", quick=True)
    assert main(["--speed", "--quick"]) == 2
    assert "no package READMEs" in capsys.readouterr().err
    assert main(["--speed", "--model", str(tmp_path)]) == 2  # not a model folder
    assert "modules.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path)])  # --model is for --speed only


needs_cuda = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_on_the_gpu_vectors_agree_with_the_cpu_in_fp16_batches(fp32):
    gpu = Embedder(device="cuda")
    assert gpu.precision == "fp16" and gpu.batch_size == GPU_BATCH
    texts = TEXTS * 60  # 420 texts: two batches of 256, the second ragged
    vectors = gpu.embed(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), 384)
    cosine = (vectors * np.tile(fp32.embed(TEXTS), (60, 1))).sum(axis=1)
    assert cosine.min() > 0.99


@needs_cuda
def test_batches_move_between_the_gpu_and_the_cpu_as_the_engine_comes_and_goes(fp32):
    turns = iter([True, False, True])  # GPU, CPU (the engine answers), GPU

    gpu = Embedder(device="cuda", batch_size=3, may_use_device=lambda: next(turns))
    vectors = gpu.embed(TEXTS)
    assert sorted(gpu._models) == ["cpu", "cuda"]
    assert gpu._precisions["cuda"] == "fp16" and gpu._precisions["cpu"] in ("fp32", "bf16")
    assert (vectors * fp32.embed(TEXTS)).sum(axis=1).min() > 0.99


def test_the_speed_report_says_when_whole_library_indexing_was_not_run():
    """Where chromadb is missing (a bare GPU image) the embedding table stands alone, and says why."""
    from rag.eval.speed import PathSpeed, SpeedReport, format_speed
    paths = [PathSpeed("issue 4", "cpu", "torch", "fp32", 64, 100, 10.0, 10.0, 1.0),
             PathSpeed("cuda", "cuda", "torch", "fp16", 256, 100, 0.05, 2000.0, 0.9999)]
    report = SpeedReport({"cpu": "x", "cpus": 16, "torch": "2"}, 100, 5000, paths, None, "packages",
                         "minilm-fp16", "chromadb is not installed here: whole-library indexing not run")
    table = format_speed(report)
    assert "| cuda | cuda | torch | fp16 | 256 | 2000.0 | 200.00× | 0.9999 |" in table
    assert "of the packages corpus, model minilm-fp16" in table and "not run (chromadb is not installed" in table
