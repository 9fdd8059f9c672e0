"""Retrieval quality and ingestion speed on documentation nobody here wrote: `python -m rag.eval`.

The corpus is on every machine that ran `make test`: the long descriptions that installed Python
packages ship in their METADATA, plus two real PDF manuals where the system has them. The
questions in data/qa.jsonl were written by reading those documents. Each names its source
and a short verbatim answer; a retrieved chunk is relevant when it comes from that source and
contains the answer (whitespace normalised). Package docs change between versions, so a question
whose answer no longer occurs in its source is reported and dropped, not counted as a miss.

Compared, on one corpus and one embedder: a naive baseline (fixed 1000-character chunks, dense
search by brute-force cosine), the library's token-aware chunks searched dense only, keyword only,
and hybrid (the default). Ingestion speed: PDF pages per second (load + chunk, and end to end into
a library) and chunks embedded per second.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from rag.chunking import chunk_document
from rag.embedder import Embedder
from rag.eval.pdf_maker import make_pdf
from rag.library import Library
from rag.loaders import LoadedDocument, load_document
from rag.retrieve import RRF_K

QA_PATH = Path(__file__).with_name("data") / "qa.jsonl"
PDFS = {
    "libtasn1.pdf": Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
    "shared-mime-info-spec.pdf": Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
}
# Package docs with no questions: they are indexed too, so that search must pick the right
# document out of many similar ones (several are HTTP, JSON or CLI libraries like the sources).
DISTRACTORS = (
    "httpcore", "starlette", "uvicorn", "numpy", "scipy", "chromadb", "jsonschema", "attrs",
    "sympy", "mmh3", "annotated-types", "narwhals", "h11", "markdown-it-py", "idna", "urllib3",
    "sortedcontainers", "python-dateutil", "cloudpickle", "websocket-client", "networkx",
    "scikit-learn", "fsspec", "platformdirs", "gguf",
)
QUICK_SOURCES = ("httpx", "pytest", "pypdf")
QUICK_DISTRACTORS = ("uvicorn", "starlette")
QUICK_PDF = "shared-mime-info-spec.pdf"
NAIVE_CHARS = 1000
KS = (1, 5)
EMBED_SAMPLE = 512   # chunks timed for the embedding speed
QUICK_EMBED_SAMPLE = 64
T = TypeVar("T")


@dataclass(frozen=True)
class QAItem:
    question: str
    source: str           # a package name, or a PDF file name from PDFS
    answer: str           # verbatim (up to whitespace) in the source
    page: int | None = None


@dataclass
class ConfigResult:
    name: str
    description: str
    num_chunks: int
    ranks: list[int | None]       # per question: rank of the first relevant hit in the top max(KS)
    recall: dict[int, float] = field(default_factory=dict)
    mrr: float = 0.0


@dataclass
class Speed:
    pdf_source: str               # which PDFs were timed
    pdf_pages: int
    pages_per_s_load_chunk: float | None
    pages_per_s_end_to_end: float | None
    chunks_embedded: int
    chunks_per_s: float
    corpus_index_s: float         # the whole corpus into a library: load, chunk, embed, store
    corpus_chunks: int


@dataclass
class Report:
    date: str
    machine: dict
    quick: bool
    documents: int
    pdf_pages: int
    items: list[QAItem]           # the questions scored, in the order of every ConfigResult.ranks
    dropped: list[dict]
    configs: list[ConfigResult]
    speed: Speed
    failed_files: list[str]


# ---------------------------------------------------------------------------------- questions

def load_qa(path: Path = QA_PATH) -> list[QAItem]:
    items = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                items.append(QAItem(row["question"], row["source"], row["answer"], row.get("page")))
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}, line {number}: not a JSON object with question, source and answer") from None
    return items


def normalise(text: str) -> str:
    return " ".join(text.split())


def page_text(doc: LoadedDocument, page: int) -> str:
    return "\n".join(doc.text[s.start:s.end] for s in doc.sections if s.page == page)


def check_answers(items: Sequence[QAItem], docs: dict[str, LoadedDocument]) -> tuple[list[QAItem], list[dict]]:
    """The items that still apply, and why the others were dropped."""
    kept, dropped = [], []
    for item in items:
        doc = docs.get(item.source)
        if doc is None:
            reason = "source document not available on this machine"
        elif normalise(item.answer) not in normalise(doc.text if item.page is None else page_text(doc, item.page)):
            reason = "answer no longer occurs in the source" + ("" if item.page is None else f" (page {item.page})")
        else:
            kept.append(item)
            continue
        dropped.append({"question": item.question, "source": item.source, "reason": reason})
    return kept, dropped


def is_relevant(item: QAItem, source: str | None, text: str) -> bool:
    return source == item.source and normalise(item.answer) in normalise(text)


def score(name: str, description: str, num_chunks: int, items: Sequence[QAItem],
          results: Sequence[Sequence[tuple[str | None, str]]]) -> ConfigResult:
    """`results[i]` is the best-first (source, text) list retrieved for `items[i]`."""
    ranks = [next((r + 1 for r, (src, text) in enumerate(hits[:max(KS)]) if is_relevant(item, src, text)), None)
             for item, hits in zip(items, results)]
    n = max(len(items), 1)
    return ConfigResult(name, description, num_chunks, ranks,
                        {k: sum(r is not None and r <= k for r in ranks) / n for k in KS},
                        sum(1 / r for r in ranks if r is not None) / n)


# ---------------------------------------------------------------------------------- corpus

def package_description(name: str) -> tuple[str, str] | None:
    """The long description a package ships in its METADATA, and a file suffix for its markup."""
    try:
        meta = importlib.metadata.metadata(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    body = meta.get_payload() or meta.get("Description") or ""
    if not body.strip():
        return None
    kind = (meta.get("Description-Content-Type") or "").lower()
    return body, ".md" if "markdown" in kind else ".rst" if "rst" in kind else ".txt"


def write_corpus(folder: Path, keys: Sequence[str]) -> dict[str, Path]:
    """Copies each available source into `folder`; missing ones are left out."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key in dict.fromkeys(keys):
        if key in PDFS:
            if PDFS[key].is_file():
                paths[key] = Path(shutil.copy(PDFS[key], folder / key))
            continue
        found = package_description(key)
        if found is not None:
            body, suffix = found
            paths[key] = folder / f"{key}{suffix}"
            paths[key].write_text(body, encoding="utf-8")
    return paths


# ---------------------------------------------------------------------------------- baseline

def naive_chunks(text: str, size: int = NAIVE_CHARS) -> list[str]:
    """Fixed windows of `size` characters, no overlap, blind to words, pages and headings."""
    return [text[i:i + size] for i in range(0, len(text), size) if text[i:i + size].strip()]


@dataclass
class NaiveIndex:
    """Dense search the way a first attempt would do it: every chunk vector in one matrix."""
    sources: list[str]
    texts: list[str]
    vectors: np.ndarray

    @classmethod
    def build(cls, docs: dict[str, LoadedDocument], embedder: Embedder) -> NaiveIndex:
        sources, texts = [], []
        for key, doc in docs.items():
            chunks = naive_chunks(doc.text)
            sources += [key] * len(chunks)
            texts += chunks
        return cls(sources, texts, embedder.embed(texts))

    def search(self, query_vector: np.ndarray, k: int) -> list[tuple[str, str]]:
        best = np.argsort(-(self.vectors @ query_vector))[:k]
        return [(self.sources[i], self.texts[i]) for i in best]


# ---------------------------------------------------------------------------------- speed

def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def pdf_speed(pdfs: Sequence[Path], embedder: Embedder, workdir: Path, repeats: int) -> tuple[int, float, float]:
    """Pages, pages/s for load + chunk (median of `repeats`), pages/s end to end into a fresh library."""
    pages = sum(load_document(p).num_pages or 0 for p in pdfs)

    def load_and_chunk() -> None:
        for p in pdfs:
            chunk_document(load_document(p), embedder.count_tokens)

    load_chunk_s = statistics.median(timed(load_and_chunk)[1] for _ in range(repeats))
    with Library(workdir / "pdf-speed", embedder=embedder) as lib:
        _, end_to_end_s = timed(lambda: lib.add(pdfs))
    return pages, pages / load_chunk_s, pages / end_to_end_s


def synthetic_pdfs(folder: Path, docs: dict[str, LoadedDocument], quick: bool) -> list[Path]:
    """Multi-page PDFs made from corpus text, for machines without the real manuals."""
    texts = [doc.text.encode("cp1252", "replace").decode("cp1252") for doc in docs.values()][:1 if quick else 4]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, text in enumerate(texts):  # the fixture draws base-14 Helvetica: cp1252 text only
        pages = [text[j:j + 2500] for j in range(0, len(text), 2500)][:5 if quick else 30]
        out.append(folder / f"synthetic-{i}.pdf")
        make_pdf(out[-1], pages)
    return out


def machine() -> dict:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cpus": usable, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": "cpu", "python": platform.python_version()}


# ---------------------------------------------------------------------------------- the run

LIBRARY_MODES = (
    ("dense", "ours, dense", "token-aware chunks, MiniLM cosine"),
    ("keyword", "ours, keyword", "token-aware chunks, BM25 only"),
    ("hybrid", "hybrid (default)", f"token-aware chunks, dense + BM25, reciprocal-rank fusion (k={RRF_K})"),
)


def evaluate_library(lib: Library, items: Sequence[QAItem], key_of: dict[Path, str]) -> list[ConfigResult]:
    num_chunks = sum(d.num_chunks for d in lib.documents())
    return [score(name, description, num_chunks, items,
                  [[(key_of.get(h.source.resolve()), h.text) for h in lib.search(i.question, max(KS), mode=mode)]
                   for i in items])
            for mode, name, description in LIBRARY_MODES]


def evaluate_naive(docs: dict[str, LoadedDocument], items: Sequence[QAItem], embedder: Embedder) -> ConfigResult:
    naive = NaiveIndex.build(docs, embedder)
    queries = embedder.embed([i.question for i in items])
    return score("naive", f"fixed {NAIVE_CHARS}-char chunks, no overlap, dense", len(naive.texts), items,
                 [naive.search(q, max(KS)) for q in queries])


def measure_speed(docs: dict[str, LoadedDocument], embedder: Embedder, work: Path, quick: bool,
                  corpus_chunks: int, corpus_index_s: float) -> Speed:
    pdfs = [p for key, p in PDFS.items() if p.is_file() and (key == QUICK_PDF or not quick)]
    pdf_source = ", ".join(p.name for p in pdfs) + " (real PDFs)"
    if not pdfs:
        pdfs = synthetic_pdfs(work / "synthetic", docs, quick)
        pdf_source = f"{len(pdfs)} PDFs made from corpus text (no real PDFs here)" if pdfs else "none"
    pages, load_chunk, end_to_end = pdf_speed(pdfs, embedder, work, 1 if quick else 3) if pdfs else (0, None, None)
    sample = [c.text for d in docs.values() for c in chunk_document(d, embedder.count_tokens)]
    sample = sample[:QUICK_EMBED_SAMPLE if quick else EMBED_SAMPLE]
    _, embed_s = timed(lambda: embedder.embed(sample))
    return Speed(pdf_source, pages, load_chunk, end_to_end, len(sample), len(sample) / embed_s,
                 corpus_index_s, corpus_chunks)


def run(quick: bool = False, qa_path: Path = QA_PATH, embedder: Embedder | None = None,
        log: Callable[[str], None] = print) -> Report:
    items = load_qa(qa_path)
    if quick:
        items = [i for i in items if i.source in QUICK_SOURCES]
    with tempfile.TemporaryDirectory(prefix="folio-eval-") as tmp:
        work = Path(tmp)
        distractors = QUICK_DISTRACTORS if quick else DISTRACTORS
        paths = write_corpus(work / "corpus", [i.source for i in items] + list(distractors))
        log(f"corpus: {len(paths)} documents")
        docs = {key: load_document(path) for key, path in paths.items()}
        items, dropped = check_answers(items, docs)

        embedder = embedder or Embedder(device="cpu", batch_size=64)
        embedder.embed(["warm up"])  # loading the model is not part of any timing
        log("indexing the corpus into a library...")
        with Library(work / "library", embedder=embedder) as lib:
            added, index_s = timed(lambda: lib.add(list(paths.values())))
            key_of = {path.resolve(): key for key, path in paths.items()}
            indexed = {key_of[r.path.resolve()] for r in added.added}
            dropped += [{"question": i.question, "source": i.source, "reason": "source failed to index"}
                        for i in items if i.source not in indexed]
            items = [i for i in items if i.source in indexed]
            docs = {k: d for k, d in docs.items() if k in indexed}
            log("searching...")
            configs = evaluate_library(lib, items, key_of)
            corpus_chunks = configs[0].num_chunks
        log("embedding the naive baseline...")
        configs.insert(0, evaluate_naive(docs, items, embedder))
        log("timing ingestion...")
        speed = measure_speed(docs, embedder, work, quick, corpus_chunks, index_s)

    failed = [f"{r.path.name}: {r.status} ({r.error})" for r in added.results if r.status != "added"]
    pdf_pages = sum(d.num_pages or 0 for k, d in docs.items() if k in PDFS)
    return Report(datetime.date.today().isoformat(), machine(), quick, len(paths), pdf_pages, items, dropped,
                  configs, speed, failed)


# ---------------------------------------------------------------------------------- output

def format_report(report: Report) -> str:
    m, s = report.machine, report.speed
    lines = [
        f"Folio retrieval eval{' (quick)' if report.quick else ''}, {report.date}",
        (f"Machine: {m['cpu']}, {m['cpus']} CPUs usable, torch {m['torch']} on {m['device']} "
         f"({m['torch_threads']} threads), Python {m['python']}"),
        (f"Corpus: {report.documents} documents ({report.pdf_pages} PDF pages); {len(report.items)} questions "
         f"over {len({i.source for i in report.items})} documents; {len(report.dropped)} dropped"),
        "",
        "| configuration | chunks | " + " | ".join(f"recall@{k}" for k in KS) + " | MRR@5 |",
        "|---|---:|" + "---:|" * len(KS) + "---:|",
    ]
    for c in report.configs:
        lines.append(f"| {c.name}: {c.description} | {c.num_chunks} | "
                     + " | ".join(f"{c.recall[k]:.3f}" for k in KS) + f" | {c.mrr:.3f} |")

    def rate(x: float | None, unit: str) -> str:
        return "n/a" if x is None else f"{x:.1f} {unit}"

    lines += [
        "",
        "| ingestion | speed |",
        "|---|---:|",
        f"| PDF, load + chunk ({s.pdf_pages} pages: {s.pdf_source}) | {rate(s.pages_per_s_load_chunk, 'pages/s')} |",
        f"| PDF, end to end into a library (load, chunk, embed, store) | {rate(s.pages_per_s_end_to_end, 'pages/s')} |",
        f"| embedding, {s.chunks_embedded} token-aware chunks (CPU, batch 64) | {rate(s.chunks_per_s, 'chunks/s')} |",
        (f"| whole corpus into a library ({s.corpus_chunks} chunks in {s.corpus_index_s:.1f} s) "
         f"| {rate(s.corpus_chunks / s.corpus_index_s if s.corpus_index_s else None, 'chunks/s')} |"),
    ]
    for f in report.failed_files:
        lines.append(f"failed to index: {f}")
    for d in report.dropped:
        lines.append(f"dropped: [{d['source']}] {d['question']} ({d['reason']})")
    return "\n".join(lines)


def format_misses(report: Report) -> str:
    lines = []
    for c in report.configs:
        missed = [i for i, r in zip(report.items, c.ranks) if r is None]
        lines.append(f"\n{c.name}: {len(missed)} questions without a relevant chunk in the top {max(KS)}")
        lines += [f"  [{i.source}] {i.question}  (answer: {i.answer!r})" for i in missed]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rag.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few documents and questions (for the tests)")
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write every number to this JSON file")
    parser.add_argument("--misses", action="store_true", help="list the questions each configuration missed")
    parser.add_argument("--qa", type=Path, default=QA_PATH, help="the question file (JSON lines)")
    args = parser.parse_args(argv)
    if not args.qa.is_file():
        print(f"error: no question file at {args.qa}", file=sys.stderr)
        return 2
    try:
        load_qa(args.qa)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def progress(message: str) -> None:  # on stderr: stdout carries only the report
        print(message, file=sys.stderr, flush=True)

    report = run(quick=args.quick, qa_path=args.qa, log=progress)
    print(format_report(report))
    if args.misses:
        print(format_misses(report))
    if args.json:
        try:
            args.json.write_text(json.dumps(dataclasses.asdict(report), indent=2), encoding="utf-8")
        except OSError as e:
            print(f"error: cannot write {args.json}: {e.strerror or e}", file=sys.stderr)
            return 1
    return 0

