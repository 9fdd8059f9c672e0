"""Ranking chunks for a query: dense (MiniLM cosine), keyword (SQLite FTS5 BM25), or both fused.

Hybrid fusion combines the two scores, not the two ranks (`fuse_scores`). Every candidate either
ranker proposes gets both of its scores (its cosine from its stored vector, its BM25 from the
index), so a passage one ranker finds by a wide margin keeps that margin: reciprocal-rank fusion
gave a first place in one list 1/61 whatever the gap, and passages ranked mid-way in both lists
beat it (issue 14, "the spare key for the shed"). The keyword query leaves out question words.

A hit is shown as the passage around its chunk (`PASSAGE_CHARS`, within its page), and a chunk
already shown whole inside a better hit's passage is skipped, so five hits are five passages.
`python -m rag.eval` compares every mode on several document sets (see BENCHMARKS.md).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from rag.store import Store

Mode = Literal["hybrid", "dense", "keyword", "rrf"]
MODES: tuple[str, ...] = ("hybrid", "dense", "keyword", "rrf")
RRF_K = 60
CANDIDATES = 50       # each ranker proposes at least this many chunks (or 4 k) before fusion
DENSE_WEIGHT = 0.7    # of the fused score; keyword gets the rest (0.5-0.8 measured, BENCHMARKS.md)
PASSAGE_CHARS = 1000  # a hit is shown as this much text around the chunk that matched, as naive windows are
_WORD = re.compile(r"\w+", re.UNICODE)
# Words that say a question is being asked, not what it is about. Kept out of the keyword query, so
# BM25 does not reward a passage for "how" and "do"; a question made only of them keeps them all.
QUESTION_WORDS = frozenset("""
a an the and or but if then so of to in on at by for from with without into onto over under about as
is are was were be been being am do does did doing done have has had having can could will would shall
should may might must i me my mine we us our you your he him his she her it its they them their this that
these those there here what which who whom whose when where why how whether not no any some all each
just also very too than there's it's i'm don't doesn't can't get got make way want need use using
""".split())


@dataclass(frozen=True)
class Hit:
    source: Path
    page: int | None
    text: str
    score: float
    doc_id: str
    chunk_index: int
    section: str | None = None
    start: int = 0        # char offsets into the document text
    end: int = 0
    similarity: float | None = None  # cosine to the query, when dense search proposed the chunk


def keyword_query(query: str) -> str:
    """The query's content words, for BM25: question and function words dropped."""
    words = _WORD.findall(query)
    content = [w for w in words if w.lower() not in QUESTION_WORDS]
    return " ".join(content or words)


def fuse(rankings: list[list[int]]) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion of best-first id lists, best first (the "rrf" mode, kept to be
    compared with). A tie goes to the better single rank, then to the earlier list."""
    scores: dict[int, float] = {}
    best: dict[int, tuple[int, int]] = {}
    for which, ranking in enumerate(rankings):
        for rank, chunk_id in enumerate(ranking):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            best[chunk_id] = min(best.get(chunk_id, (rank, which)), (rank, which))
    return sorted(scores.items(), key=lambda kv: (-kv[1], best[kv[0]], kv[0]))


def fuse_scores(cosine: dict[int, float], bm25: dict[int, float],
                dense_weight: float = DENSE_WEIGHT) -> list[tuple[int, float]]:
    """Score fusion over the same candidates: `cosine` and `bm25` hold every candidate (BM25 0
    where no query word occurs). Each ranker's scores become standard scores over the candidates,
    so a passage counts by how far it stands out from the rest. BM25 may only promote: below its
    mean it adds nothing, so passages that share few words with a paraphrased question are not
    pushed down. And each ranker's first place gets a bonus of its lead over its second, so a
    decisive match (BM25 23.7 against 10.8) stays ahead of passages that are middling in both.
    Ties go to the better cosine."""
    if not cosine:
        return []
    ids = list(cosine)
    dense = _standard([cosine[i] for i in ids])
    keyword = np.maximum(_standard([bm25.get(i, 0.0) for i in ids]), 0.0)
    fused = dense_weight * dense + (1.0 - dense_weight) * keyword
    for weight, scores in ((dense_weight, dense), (1.0 - dense_weight, keyword)):
        if len(scores) > 1:
            first, second = np.argsort(-scores, kind="stable")[:2]
            fused[first] += weight * (scores[first] - scores[second])
    return sorted(zip(ids, fused.tolist()), key=lambda kv: (-kv[1], -cosine[kv[0]], kv[0]))


def _standard(values: list[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    spread = x.std()
    return (x - x.mean()) / spread if spread > 0 else np.zeros_like(x)


def search(store: Store, embed: Callable[[list[str]], np.ndarray], query: str, k: int,
           mode: Mode = "hybrid", doc_ids: list[str] | None = None) -> list[Hit]:
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; expected one of {', '.join(MODES)}")
    if k <= 0 or not query.strip() or store.is_empty():
        return []
    n = max(CANDIDATES, 4 * k)
    vector = embed([query])[0] if mode != "keyword" else None
    dense = store.nearest(vector, n, doc_ids) if vector is not None else []
    keyword = store.keyword(keyword_query(query), n, doc_ids) if mode != "dense" else []
    similarity = dict(dense)
    if mode == "hybrid":  # every candidate gets both scores
        bm25 = dict(keyword)
        cosine = similarity | store.similarities(vector, [i for i in bm25 if i not in similarity])
        bm25 |= dict(store.keyword(keyword_query(query), len(cosine), doc_ids,
                                   within=[i for i in cosine if i not in bm25]))
        ranked = fuse_scores(cosine, bm25, DENSE_WEIGHT)
        similarity = cosine
    elif mode == "rrf":
        ranked = fuse([[i for i, _ in keyword], [i for i, _ in dense]])
    else:
        ranked = dense or keyword
    chunks = store.chunks([i for i, _ in ranked[:8 * k]])
    hits: list[Hit] = []
    for chunk_id, score in ranked:
        c = chunks.get(chunk_id)
        if c is None:  # a document still being indexed, or being removed
            continue
        if any(h.doc_id == c.doc_id and h.start <= c.start and c.end <= h.end for h in hits):
            continue  # already shown whole in a better hit's passage
        try:
            start, end, text = store.passage(c.doc_id, c.start, c.end, c.page, PASSAGE_CHARS)
        except KeyError:  # removed meanwhile
            continue
        hits.append(Hit(c.source, c.page, text, score, c.doc_id, c.chunk_index, c.section, start, end,
                        similarity.get(chunk_id)))
        if len(hits) == k:
            break
    return hits


def above_floor(hits: list[Hit], gate: float, floor: float) -> list[Hit]:
    """The hits worth showing a model: none when no hit is as close to the query as `gate` (the
    question is not about these documents: "What is 12 times 12?"), else those not known to be
    below `floor` (lower, for the other half of a two-part question). Without dense similarities
    (keyword search alone) there is nothing to judge by."""
    known = [h.similarity for h in hits if h.similarity is not None]
    if not known:
        return hits
    if max(known) < gate:
        return []
    return [h for h in hits if h.similarity is None or h.similarity >= floor]


def canonical_order(hits: list[Hit]) -> list[Hit]:
    """Document, then position: two chats that retrieve the same chunks send the same tokens."""
    unique = {(h.doc_id, h.chunk_index): h for h in hits}
    return sorted(unique.values(), key=lambda h: (str(h.source), h.doc_id, h.chunk_index))
