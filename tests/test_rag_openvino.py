"""The OpenVINO path of issue 14, on the real bundled model: on real chunks it tokenizes as
sentence-transformers does and its vectors match the torch path's; the converted model is kept,
reused, and rebuilt (not loaded, not crashed on) when its cache entry is damaged; where OpenVINO is
missing, cannot take the model, or converts it wrongly, the Embedder embeds with torch and says so
in one log line. And OpenVINO's usage reports to Intel stay off."""
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rag import openvino_encoder
from rag.chunking import chunk_document
from rag.embedder import Embedder, bundled_model_path, cpu_has_native_bf16
from rag.eval.corpora import SETS, write_corpus
from rag.library import search_text
from rag.loaders import load_document
from rag.openvino_encoder import OpenVINOEncoder, unsupported_reason

TEXTS = ["Where is the spare key for the shed kept?", "word " * 30, "x"]


@pytest.fixture(scope="module")
def torch_fp32() -> Embedder:
    return Embedder(device="cpu", precision="fp32", backend="torch")


@pytest.fixture(scope="module")
def real_chunks(tmp_path_factory, torch_fp32) -> list[str]:
    """Two package READMEs (Markdown with code and links) chunked and titled as `Library.add`
    embeds them, and the edge cases: empty, padded with spaces, non-Latin, longer than the model reads."""
    paths = write_corpus(SETS["packages"], tmp_path_factory.mktemp("readmes"), ["chromadb", "fastapi"])
    texts = []
    for path in paths.values():
        doc = load_document(path)
        texts += [search_text(doc.title, c) for c in chunk_document(doc, torch_fp32.count_tokens)]
    assert len(texts) >= 20, "the READMEs of two installed packages give real chunks"
    return texts + ["", "   spaced out   ", "naïve café, Grüße, 東京の地図", "word " * 400]


def test_it_tokenizes_as_sentence_transformers(real_chunks, torch_fp32):
    encoder = OpenVINOEncoder(bundled_model_path(), "fp32")
    ids, mask = encoder.tokenize(real_chunks)
    features = torch_fp32.model.preprocess(real_chunks)
    np.testing.assert_array_equal(ids, features["input_ids"].numpy())
    np.testing.assert_array_equal(mask, features["attention_mask"].numpy())
    assert ids.shape == (len(real_chunks), encoder.max_seq_length) == (len(real_chunks), 256)


@pytest.mark.parametrize("precision, floor", [("fp32", 0.9999), ("bf16", 0.999)])
def test_its_vectors_match_the_torch_path_on_real_chunks(real_chunks, torch_fp32, precision, floor):
    if precision == "bf16" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    fast = Embedder(device="cpu", precision=precision, backend="openvino")
    assert fast.backend == "openvino" and fast.precision == precision
    vectors = fast.embed(real_chunks)
    reference = torch_fp32.embed(real_chunks)
    cosine = (vectors * reference).sum(axis=1)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosine.min() > floor, f"worst chunk: {real_chunks[int(cosine.argmin())][:80]!r}"


def test_the_cpu_default_is_openvino_in_the_precision_the_cpu_has():
    auto = Embedder(device="cpu")
    assert auto.backend == "openvino"
    assert auto.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert Embedder(device="cpu", backend="torch").backend == "torch"
    with pytest.raises(ValueError, match="backend"):
        Embedder(backend="onnx")


def _overwrite_weights(folder: Path) -> None:
    with open(folder / "model.bin", "r+b") as f:  # same size, other bytes: only the checksum can tell
        f.seek(1 << 20)
        f.write(bytes(4096))


def _cut_weights_short(folder: Path) -> None:
    with open(folder / "model.bin", "r+b") as f:
        f.truncate(1000)


def _drop_manifest(folder: Path) -> None:  # a crash after the model was saved, before the manifest
    (folder / "manifest.json").unlink()


def _garble_manifest(folder: Path) -> None:
    (folder / "manifest.json").write_text('{"format": 1, "sha256": ', encoding="utf-8")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A cache folder holding one freshly converted entry, and its vectors of TEXTS."""
    cache = tmp_path_factory.mktemp("converted")
    first = OpenVINOEncoder(bundled_model_path(), "fp32", cache_dir=cache)
    assert first.converted and (first.folder / "manifest.json").is_file()
    return cache, first.encode(TEXTS)


@pytest.mark.parametrize("damage", [_overwrite_weights, _cut_weights_short, _drop_manifest, _garble_manifest],
                         ids=lambda f: f.__name__.strip("_"))
def test_the_converted_model_is_reused_and_a_damaged_one_rebuilt(converted, tmp_path, caplog,
                                                                 damage: Callable[[Path], None]):
    kept, expected = converted
    cache = Path(shutil.copytree(kept, tmp_path / "cache"))
    again = OpenVINOEncoder(bundled_model_path(), "fp32", cache_dir=cache)
    assert not again.converted and again.folder.parent == cache
    np.testing.assert_array_equal(again.encode(TEXTS), expected)

    damage(again.folder)
    with caplog.at_level(logging.WARNING, logger="rag.openvino_encoder"):
        rebuilt = OpenVINOEncoder(bundled_model_path(), "fp32", cache_dir=cache)
    assert rebuilt.converted and "converting it again" in caplog.text
    np.testing.assert_allclose(rebuilt.encode(TEXTS), expected, atol=1e-5)
    assert not OpenVINOEncoder(bundled_model_path(), "fp32", cache_dir=cache).converted  # whole again
    assert [p.name for p in cache.iterdir()] == [again.folder.name]  # no half-written folder left


def test_a_cache_that_cannot_be_written_costs_only_the_next_start(tmp_path, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    with caplog.at_level(logging.WARNING, logger="rag.openvino_encoder"):
        encoder = OpenVINOEncoder(bundled_model_path(), "fp32", cache_dir=blocked)
    assert encoder.converted and "cannot keep the converted embedder" in caplog.text
    assert encoder.encode(TEXTS).shape == (len(TEXTS), 384)


def _torch_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rag.embedder"]


def test_without_openvino_the_embedder_uses_torch_and_says_so_once(monkeypatch, caplog, torch_fp32):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails as if not installed
    with caplog.at_level(logging.WARNING, logger="rag.embedder"):
        embedder = Embedder(device="cpu", precision="fp32")
        vectors = embedder.embed(TEXTS)
        embedder.embed(TEXTS)
    assert embedder.backend == "torch"
    messages = _torch_warnings(caplog)
    assert len(messages) == 1 and "OpenVINO is not installed" in messages[0]
    np.testing.assert_allclose(vectors, torch_fp32.embed(TEXTS), atol=1e-6)
    with pytest.raises(RuntimeError, match="not installed"):
        Embedder(device="cpu", backend="openvino").embed(TEXTS)


def test_a_conversion_that_disagrees_with_torch_is_neither_used_nor_kept(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("FOLIO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(openvino_encoder, "_MAX_PROBE_GAP", -1.0)  # no conversion can pass its check now
    with caplog.at_level(logging.WARNING, logger="rag.embedder"):
        embedder = Embedder(device="cpu", precision="fp32")
        assert embedder.backend == "torch"
    messages = _torch_warnings(caplog)
    assert len(messages) == 1 and "disagrees with torch" in messages[0]
    assert not list(tmp_path.rglob("manifest.json"))


def test_only_mean_pooled_sentence_transformers_folders_are_converted(tmp_path):
    assert unsupported_reason(bundled_model_path()) is None
    cls = Path(shutil.copytree(bundled_model_path(), tmp_path / "cls", ignore=shutil.ignore_patterns("*.safetensors")))
    config = cls / "1_Pooling" / "config.json"
    pooling = json.loads(config.read_text()) | {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}
    config.write_text(json.dumps(pooling))
    assert "pooling_mode_cls_token" in unsupported_reason(str(cls))
    (cls / "modules.json").write_text("[")
    assert "module list cannot be read" in unsupported_reason(str(cls))


def test_openvino_reports_nothing_to_intel(tmp_path):
    """OpenVINO sends usage events on import and conversion unless a consent file under ~/intel
    says no (none counts as yes), and counts them there; Folio's use of it must send none, so in
    a fresh process that converts the model nothing is written under that home."""
    code = ("import sys; from rag.embedder import Embedder; e = Embedder(device='cpu'); e.embed(['x']); "
            "print(e.backend, e.model.converted, sys.modules['openvino_telemetry'])")
    env = os.environ | {"HOME": str(tmp_path / "home"), "FOLIO_CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "home").mkdir()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["openvino", "True", "None"]
    assert list((tmp_path / "home").iterdir()) == []
