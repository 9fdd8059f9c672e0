"""Ranking chunks for a query: dense (MiniLM cosine), keyword (SQLite FTS5 BM25), or both fused.

Fusion is reciprocal-rank fusion: each list contributes 1 / (RRF_K + rank) per chunk. It needs no
score calibration between cosine and BM25, which live on unrelated scales. `python -m rag.eval`
compares the modes; hybrid is the default because it won there (see BENCHMARKS.md).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from rag.store import Store

Mode = Literal["hybrid", "dense", "keyword"]
MODES: tuple[str, ...] = ("hybrid", "dense", "keyword")
RRF_K = 60
CANDIDATES = 4  # each ranker proposes k * CANDIDATES chunks before fusion


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


def fuse(rankings: list[list[int]]) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion of best-first id lists, best first. A tie (one chunk first in one
    list, another first in the other) goes to the better single rank, then to the earlier list,
    not to whichever chunk happened to be stored first."""
    scores: dict[int, float] = {}
    best: dict[int, tuple[int, int]] = {}
    for which, ranking in enumerate(rankings):
        for rank, chunk_id in enumerate(ranking):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            best[chunk_id] = min(best.get(chunk_id, (rank, which)), (rank, which))
    return sorted(scores.items(), key=lambda kv: (-kv[1], best[kv[0]], kv[0]))


def search(store: Store, embed: Callable[[list[str]], np.ndarray], query: str, k: int,
           mode: Mode = "hybrid", doc_ids: list[str] | None = None) -> list[Hit]:
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; expected one of {', '.join(MODES)}")
    if k <= 0 or not query.strip():
        return []
    n = k * CANDIDATES
    dense = store.nearest(embed([query])[0], n, doc_ids) if mode != "keyword" else []
    keyword = store.keyword(query, n, doc_ids) if mode != "dense" else []
    if mode == "hybrid":
        ranked = fuse([[i for i, _ in keyword], [i for i, _ in dense]])  # keyword is the stronger alone
    else:
        ranked = dense or keyword
    chunks = store.chunks([i for i, _ in ranked])
    similarity = dict(dense)
    hits = []
    for chunk_id, score in ranked:
        c = chunks.get(chunk_id)
        if c is None:  # a document still being indexed, or being removed
            continue
        hits.append(Hit(c.source, c.page, c.text, score, c.doc_id, c.chunk_index, c.section, c.start, c.end,
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
