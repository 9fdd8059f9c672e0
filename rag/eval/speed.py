"""Indexing speed, today's embedding path against the old one on the same chunks, in one run:
`python -m rag.eval --speed [--device cuda] [--quick] [--json OUT]`.

The chunks are the man-page set's (rag.eval.corpora), chunked and titled as `Library.add` does.
Timed, each on the same chunks and in the same process, so the ratios hold on a noisy machine:

- "issue 4": the path before issue 14 (fp32 on the CPU, batches of 64 in document order);
- "cpu fp32": the current path held to fp32 (batches cut from the chunks sorted by length);
- "cpu": the current default on the CPU (bf16 where the CPU has it natively);
- "<device>": the current default on `--device` (fp16, batches of 256), when asked for.

Then whole-library indexing (load, chunk, embed, store) of a few documents with the issue-4 path
and with the default path, since that is what a user waits for.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.chunking import chunk_document
from rag.embedder import Embedder
from rag.eval.corpora import SETS, write_corpus
from rag.library import Library, search_text
from rag.loaders import load_document

QUICK_DOCUMENTS = 4
END_TO_END_DOCUMENTS = 40


class Issue4Embedder(Embedder):
    """The embedding path before issue 14, for comparison: fp32, batches of 64 in the order given."""

    def __init__(self) -> None:
        super().__init__(device="cpu", batch_size=64, precision="fp32")

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


@dataclass
class PathSpeed:
    name: str
    device: str
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
    end_to_end: dict              # {"documents", "chunks", "issue 4 s", "default s", "ratio"}


def corpus_chunks(folder: Path, quick: bool) -> tuple[list[Path], list[str]]:
    man = SETS["man"]
    keys = list(man.distractors)[:QUICK_DOCUMENTS if quick else None]
    paths = list(write_corpus(man, folder, keys).values())
    texts = []
    counter = Embedder(device="cpu")
    for path in paths:
        doc = load_document(path)
        texts += [search_text(doc.title, c) for c in chunk_document(doc, counter.count_tokens)]
    return paths, texts


def time_path(name: str, embedder: Embedder, texts: list[str], reference: np.ndarray | None) -> tuple[PathSpeed,
                                                                                                       np.ndarray]:
    embedder.embed(texts[:8])  # load and warm up, not timed
    if embedder.device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()
    start = time.perf_counter()
    vectors = embedder.embed(texts)
    seconds = time.perf_counter() - start
    agreement = float((vectors * reference).sum(axis=1).min()) if reference is not None else 1.0
    return PathSpeed(name, embedder.device, embedder.precision, embedder.batch_size, len(texts), seconds,
                     len(texts) / seconds, agreement), vectors


def end_to_end(paths: list[Path], work: Path, old: Embedder, new: Embedder) -> dict:
    seconds, chunks = {}, 0
    for label, embedder in (("issue 4 s", old), ("default s", new)):
        with Library(work / label.split()[0], embedder=embedder) as lib:
            start = time.perf_counter()
            report = lib.add(paths)
            seconds[label] = time.perf_counter() - start
            chunks = sum(r.num_chunks for r in report.added)
    return {"documents": len(paths), "chunks": chunks, **seconds,
            "ratio": seconds["issue 4 s"] / seconds["default s"]}


def run(quick: bool = False, device: str | None = None, log: Callable[[str], None] = print) -> SpeedReport:
    from rag.eval.retrieval import machine

    with tempfile.TemporaryDirectory(prefix="folio-speed-") as tmp:
        work = Path(tmp)
        paths, texts = corpus_chunks(work / "corpus", quick)
        counter = Embedder(device="cpu")
        tokens = sum(min(counter.count_tokens(t), 254) + 2 for t in texts)
        log(f"{len(texts)} chunks ({tokens} word pieces) from {len(paths)} man pages")
        old = Issue4Embedder()
        issue4, reference = time_path("issue 4: fp32, batches of 64 in document order", old, texts, None)
        log(f"{issue4.name}: {issue4.chunks_per_s:.1f} chunks/s")
        results = [issue4]
        candidates = [("cpu fp32: sorted by length", Embedder(device="cpu", precision="fp32")),
                      ("cpu: the default on the CPU", Embedder(device="cpu"))]
        if device and device != "cpu":
            candidates.append((f"{device}: the default on the device", Embedder(device=device)))
        for name, embedder in candidates:
            result, _ = time_path(name, embedder, texts, reference)
            log(f"{name}: {result.chunks_per_s:.1f} chunks/s ({result.precision})")
            results.append(result)
        documents = paths[:QUICK_DOCUMENTS if quick else END_TO_END_DOCUMENTS]
        log(f"indexing {len(documents)} documents end to end, both ways...")
        whole = end_to_end(documents, work, old, candidates[-1][1])
    return SpeedReport(machine(), len(texts), tokens, results, whole)


def format_speed(report: SpeedReport) -> str:
    m = report.machine
    base = report.paths[0].chunks_per_s
    lines = [
        f"Embedding speed, {report.chunks} chunks ({report.tokens} word pieces); {m['cpu']}, {m['cpus']} CPUs, "
        f"torch {m['torch']}",
        "",
        "| path | device | precision | batch | chunks/s | × issue 4 | min cosine to fp32 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for p in report.paths:
        lines.append(f"| {p.name} | {p.device} | {p.precision} | {p.batch_size} | {p.chunks_per_s:.1f} "
                     f"| {p.chunks_per_s / base:.2f}× | {p.min_cosine_to_issue4:.4f} |")
    e = report.end_to_end
    lines += ["", (f"Whole-library indexing of {e['documents']} documents ({e['chunks']} chunks): issue 4 path "
                   f"{e['issue 4 s']:.1f} s, default path ({report.paths[-1].device}) {e['default s']:.1f} s: "
                   f"{e['ratio']:.2f}×")]
    return "\n".join(lines)


def main(quick: bool = False, device: str | None = None, json_out: Path | None = None) -> int:
    if device and device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            print(f"error: --device {device}: torch sees no CUDA device here", file=sys.stderr)
            return 2
    report = run(quick, device, log=lambda message: print(message, file=sys.stderr, flush=True))
    print(format_speed(report))
    if json_out:
        try:
            json_out.write_text(json.dumps(dataclasses.asdict(report), indent=2), encoding="utf-8")
        except OSError as e:
            print(f"error: cannot write {json_out}: {e.strerror or e}", file=sys.stderr)
            return 1
    return 0
