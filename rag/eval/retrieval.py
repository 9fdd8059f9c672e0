"""Retrieval quality and ingestion speed on documentation nobody here wrote: `python -m rag.eval`.

Every document set of `rag.eval.corpora` (package READMEs with real PDF manuals, man pages, GNU
info manuals) is taken from this machine at run time and indexed into its own library. The
questions in data/<set>.jsonl were written by reading those documents, phrased as a user asks
rather than in the document's words; each names its source and a short verbatim answer, and a
retrieved chunk is relevant when it comes from that source and contains the answer (whitespace
normalised). A question whose answer no longer occurs in its source (another package version,
another Debian release) is reported and dropped, not counted as a miss.

Each question is in the `tune` split or the `held` split. Ranking is tuned by looking at the
tune split only; the held split is reported beside it to show whether a change generalises.

Compared per set, on one embedder: a naive baseline (fixed 1000-character windows with 200 of
overlap, dense search by brute-force cosine), the library's chunks searched dense only, keyword
only, with reciprocal-rank fusion (the default until issue 14), and hybrid score fusion (the
default). Ingestion speed: PDF pages per second (load + chunk, and end to end into a library)
and chunks embedded per second; `--speed` compares embedding paths (see rag/eval/speed.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
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
from rag.eval.corpora import PDFS, SETS, EvalSet, write_corpus
from rag.eval.pdf_maker import make_pdf
from rag.library import Library
from rag.loaders import LoadedDocument, load_document

DATA = Path(__file__).with_name("data")
SPLITS = ("tune", "held")
QUICK_PDF = "shared-mime-info-spec.pdf"
NAIVE_CHARS = 1000
NAIVE_OVERLAP = 200
KS = (1, 5)
EMBED_SAMPLE = 512   # chunks timed for the embedding speed
QUICK_EMBED_SAMPLE = 64
T = TypeVar("T")


@dataclass(frozen=True)
class QAItem:
    question: str
    source: str           # a document key of its set: a package name, a PDF file name, `tar.1`, `sed`
    answer: str           # verbatim (up to whitespace) in the source
    split: str = "tune"   # "tune" or "held"
    page: int | None = None


@dataclass
class ConfigResult:
    name: str
    description: str
    num_chunks: int
    ranks: list[int | None]       # per question: rank of the first relevant hit in the top max(KS)
    recall: dict[str, dict[int, float]] = field(default_factory=dict)   # split (or "all") -> k -> recall
    mrr: float = 0.0


@dataclass
class SetReport:
    name: str
    kind: str
    documents: int
    pdf_pages: int
    items: list[QAItem]           # the questions scored, in the order of every ConfigResult.ranks
    dropped: list[dict]
    configs: list[ConfigResult]
    failed_files: list[str]
    index_s: float                # the whole set into a library: load, chunk, embed, store


@dataclass
class Speed:
    pdf_source: str               # which PDFs were timed
    pdf_pages: int
    pages_per_s_load_chunk: float | None
    pages_per_s_end_to_end: float | None
    chunks_embedded: int
    chunks_per_s: float
    corpus_index_s: float         # every set into its library: load, chunk, embed, store
    corpus_chunks: int


@dataclass
class Report:
    date: str
    machine: dict
    quick: bool
    sets: list[SetReport]
    speed: Speed


# ---------------------------------------------------------------------------------- questions

def load_qa(path: Path) -> list[QAItem]:
    items = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                split = row.get("split", "tune")
                if split not in SPLITS:
                    raise ValueError
                items.append(QAItem(row["question"], row["source"], row["answer"], split, row.get("page")))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ValueError(f"{path}, line {number}: not a JSON object with question, source, answer "
                                 f"and a split of {' or '.join(SPLITS)}") from None
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
    recall = {}
    for split in (*SPLITS, "all"):
        chosen = [r for r, item in zip(ranks, items) if split in ("all", item.split)]
        n = max(len(chosen), 1)
        recall[split] = {k: sum(r is not None and r <= k for r in chosen) / n for k in KS}
    return ConfigResult(name, description, num_chunks, ranks, recall,
                        sum(1 / r for r in ranks if r is not None) / max(len(items), 1))


# ---------------------------------------------------------------------------------- baseline

def naive_chunks(text: str, size: int = NAIVE_CHARS, overlap: int = NAIVE_OVERLAP) -> list[str]:
    """Windows of `size` characters every `size - overlap`, blind to words, pages and headings."""
    step = size - overlap
    return [text[i:i + size] for i in range(0, max(len(text) - overlap, 1), step) if text[i:i + size].strip()]


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


def machine(embedder: Embedder | None = None) -> dict:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cpus": usable, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": embedder.device if embedder else "cpu", "backend": embedder.backend if embedder else "torch",
            "precision": embedder.precision if embedder else "fp32", "python": platform.python_version()}


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


# ---------------------------------------------------------------------------------- the run

LIBRARY_MODES = (
    ("dense", "ours, dense", "token-aware chunks, MiniLM cosine"),
    ("keyword", "ours, keyword", "token-aware chunks, BM25 on the question's content words"),
    ("rrf", "ours, rank fusion", "dense + BM25, reciprocal-rank fusion (the default before issue 14)"),
    ("hybrid", "hybrid (default)", "dense + BM25, score fusion over both rankers' candidates"),
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
    return score("naive", f"{NAIVE_CHARS}-char windows, {NAIVE_OVERLAP} overlap, dense", len(naive.texts), items,
                 [naive.search(q, max(KS)) for q in queries])


def run_set(eval_set: EvalSet, work: Path, embedder: Embedder, quick: bool,
            log: Callable[[str], None]) -> tuple[SetReport, dict[str, LoadedDocument]]:
    items = load_qa(DATA / eval_set.questions)
    if quick:
        items = [i for i in items if i.source in eval_set.quick_sources]
    distractors = eval_set.quick_distractors if quick else eval_set.distractors
    paths = write_corpus(eval_set, work / "corpus", [i.source for i in items] + list(distractors))
    log(f"{eval_set.name}: {len(paths)} documents, indexing...")
    docs = {key: load_document(path) for key, path in paths.items()}
    items, dropped = check_answers(items, docs)
    with Library(work / "library", embedder=embedder) as lib:
        added, index_s = timed(lambda: lib.add(list(paths.values())))
        key_of = {path.resolve(): key for key, path in paths.items()}
        indexed = {key_of[r.path.resolve()] for r in added.added}
        dropped += [{"question": i.question, "source": i.source, "reason": "source failed to index"}
                    for i in items if i.source not in indexed]
        items = [i for i in items if i.source in indexed]
        docs = {k: d for k, d in docs.items() if k in indexed}
        log(f"{eval_set.name}: searching...")
        configs = evaluate_library(lib, items, key_of)
    log(f"{eval_set.name}: embedding the naive baseline...")
    configs.insert(0, evaluate_naive(docs, items, embedder))
    failed = [f"{r.path.name}: {r.status} ({r.error})" for r in added.results if r.status != "added"]
    pdf_pages = sum(d.num_pages or 0 for k, d in docs.items() if k in PDFS)
    return SetReport(eval_set.name, eval_set.kind, len(paths), pdf_pages, items, dropped, configs, failed,
                     index_s), docs


def run(quick: bool = False, sets: Sequence[str] = tuple(SETS), embedder: Embedder | None = None,
        log: Callable[[str], None] = print) -> Report:
    embedder = embedder or Embedder()
    embedder.embed(["warm up"])  # loading the model is not part of any timing
    reports, all_docs = [], {}
    with tempfile.TemporaryDirectory(prefix="folio-eval-") as tmp:
        for name in sets:
            report, docs = run_set(SETS[name], Path(tmp) / name, embedder, quick, log)
            reports.append(report)
            all_docs.update({f"{name}/{k}": d for k, d in docs.items()})
        log("timing ingestion...")
        chunks = sum(r.configs[1].num_chunks for r in reports if r.configs)
        speed = measure_speed(all_docs, embedder, Path(tmp), quick, chunks, sum(r.index_s for r in reports))
    return Report(datetime.date.today().isoformat(), machine(embedder), quick, reports, speed)


# ---------------------------------------------------------------------------------- output

def format_set(s: SetReport) -> list[str]:
    counts = {split: sum(i.split == split for i in s.items) for split in SPLITS}
    lines = [
        f"### {s.name}: {s.kind}",
        (f"{s.documents} documents ({s.pdf_pages} PDF pages); {len(s.items)} questions over "
         f"{len({i.source for i in s.items})} documents ({counts['tune']} tune, {counts['held']} held back); "
         f"{len(s.dropped)} dropped; indexed in {s.index_s:.1f} s"),
        "",
        "| configuration | chunks | tune r@1 | tune r@5 | held r@1 | held r@5 | all MRR@5 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in s.configs:
        cells = [f"{c.recall[split][k]:.3f}" for split in SPLITS for k in KS]
        lines.append(f"| {c.name}: {c.description} | {c.num_chunks} | " + " | ".join(cells) + f" | {c.mrr:.3f} |")
    lines += [f"failed to index: {f}" for f in s.failed_files]
    lines += [f"dropped: [{d['source']}] {d['question']} ({d['reason']})" for d in s.dropped]
    return lines


def format_report(report: Report) -> str:
    m, s = report.machine, report.speed
    lines = [
        f"Folio retrieval eval{' (quick)' if report.quick else ''}, {report.date}",
        (f"Machine: {m['cpu']}, {m['cpus']} CPUs usable, torch {m['torch']}; embedder on {m['device']}, "
         f"{m['backend']} ({m['precision']}, {m['torch_threads']} torch threads), Python {m['python']}"),
    ]
    for set_report in report.sets:
        lines += ["", *format_set(set_report)]

    def rate(x: float | None, unit: str) -> str:
        return "n/a" if x is None else f"{x:.1f} {unit}"

    lines += [
        "",
        "| ingestion | speed |",
        "|---|---:|",
        f"| PDF, load + chunk ({s.pdf_pages} pages: {s.pdf_source}) | {rate(s.pages_per_s_load_chunk, 'pages/s')} |",
        f"| PDF, end to end into a library (load, chunk, embed, store) | {rate(s.pages_per_s_end_to_end, 'pages/s')} |",
        f"| embedding, {s.chunks_embedded} token-aware chunks ({m['device']}, {m['backend']}, {m['precision']}) "
        f"| {rate(s.chunks_per_s, 'chunks/s')} |",
        (f"| every set into its library ({s.corpus_chunks} chunks in {s.corpus_index_s:.1f} s) "
         f"| {rate(s.corpus_chunks / s.corpus_index_s if s.corpus_index_s else None, 'chunks/s')} |"),
    ]
    return "\n".join(lines)


def format_misses(report: Report, split: str = "tune") -> str:
    """The `split` questions each configuration missed (tune by default: the held split is not for
    reading while tuning)."""
    lines = []
    for s in report.sets:
        for c in s.configs:
            missed = [i for i, r in zip(s.items, c.ranks) if r is None and i.split == split]
            lines.append(f"\n{s.name}, {c.name}: {len(missed)} {split} questions without a relevant chunk "
                         f"in the top {max(KS)}")
            lines += [f"  [{i.source}] {i.question}  (answer: {i.answer!r})" for i in missed]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rag.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few documents and questions per set (for the tests)")
    parser.add_argument("--set", dest="sets", action="append", choices=list(SETS),
                        help="run only this set (repeatable; default: every set)")
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write every number to this JSON file")
    parser.add_argument("--misses", action="store_true", help="list the tune questions each configuration missed")
    parser.add_argument("--speed", action="store_true",
                        help="compare embedding paths on the same chunks instead (see rag/eval/speed.py)")
    parser.add_argument("--device", default=None, help="with --speed: also time this device, e.g. cuda")
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="with --speed: a sentence-transformers folder instead of the bundled MiniLM package")
    args = parser.parse_args(argv)
    if args.speed:
        from rag.eval.speed import main as speed_main
        return speed_main(quick=args.quick, device=args.device, json_out=args.json, model_path=args.model)
    if args.model is not None:
        parser.error("--model goes with --speed (the eval always uses the bundled model)")
    for name in args.sets or SETS:
        try:
            load_qa(DATA / SETS[name].questions)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    def progress(message: str) -> None:  # on stderr: stdout carries only the report
        print(message, file=sys.stderr, flush=True)

    report = run(quick=args.quick, sets=args.sets or tuple(SETS), log=progress)
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
