"""The chat prompt for a question over documents: [system][pinned documents][retrieved chunks]
[history][question].

Stable text goes first and volatile text last, and the stable part carries no ids, dates or
paths that differ between chats: two chats pinning the same documents send byte-identical
prefixes, so the engine serves the second one's document from the first one's KV blocks.
Every source is numbered; the model is asked to cite [n], and `cited_sources` maps the markers
in an answer back to document and page.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rag.library import Library
from rag.paths import display_name
from rag.retrieve import Hit, above_floor, canonical_order

DEFAULT_SYSTEM_PROMPT = "You are Folio, a helpful assistant that runs entirely on this computer."
SOURCES_INSTRUCTION = ("Answer using the numbered sources below when they are relevant, and cite them "
                       "by number in square brackets, like [1].")
PINNED_SHARE = 0.75   # of the context budget, at most, for whole pinned documents
# MiniLM cosines for searched passages. A question is about the documents when its best passage
# reaches MIN_SIMILARITY: on the eval's quick corpus every question's best relevant chunk scored
# 0.35 or more (median 0.64), while questions about nothing in it (arithmetic, greetings, poems,
# capitals) reached at most 0.17. Its other passages need PASSAGE_FLOOR: the half of a two-part
# question ("How do I prime the pump, and who rowed across the bay?") scores lower, near 0.2.
MIN_SIMILARITY = 0.25
PASSAGE_FLOOR = 0.15
SNIPPET_CHARS = 240
_CITATION = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")


@dataclass(frozen=True)
class Source:
    number: int
    doc_id: str
    source: Path
    page: int | None
    snippet: str
    pinned: bool
    text: str = ""        # the full passage the model saw, for "open the passage"
    start: int = 0        # its char offsets in the document
    end: int = 0

    @property
    def label(self) -> str:
        name = display_name(self.source.name)  # a file name may hold any bytes: the prompt gets printable text
        return f"{name}, page {self.page}" if self.page else name


@dataclass(frozen=True)
class PinnedSearched:
    """A pinned document too long to read whole: searched for the question instead."""

    doc_id: str
    source: Path
    num_tokens: int       # its length, in the counter's tokens
    room_tokens: int      # what the prompt had for pinned documents


@dataclass(frozen=True)
class Prompt:
    messages: list[dict]
    sources: list[Source]
    searched_pins: tuple[PinnedSearched, ...] = ()


def build_prompt(question: str, history: Sequence[dict] = (), *, library: Library | None = None,
                 pinned_doc_ids: Sequence[str] = (), search: bool = True, k: int = 5,
                 system: str = DEFAULT_SYSTEM_PROMPT, count_tokens: Callable[[str], int] | None = None,
                 max_context_tokens: int = 6000, min_similarity: float = MIN_SIMILARITY) -> Prompt:
    """Pinned documents go in whole while they fit in PINNED_SHARE of the budget; the rest of a
    pinned set is searched instead (and named in `searched_pins`). With `search`, the whole
    library is searched too, and its passages count only when they are about the question
    (`min_similarity`). History keeps its most recent messages that still fit."""
    count = count_tokens or (library.embedder.count_tokens if library else (lambda s: len(s) // 4))
    stable_budget = max_context_tokens - count(system) - count(SOURCES_INSTRUCTION)
    budget = stable_budget - count(question)
    sources: list[Source] = []
    whole: list[str] = []
    too_big: list[str] = []
    searched_pins: list[PinnedSearched] = []
    if library is not None:
        pinned = [d for d in map(library.document, dict.fromkeys(pinned_doc_ids)) if d is not None]
        # what is pinned whole must not depend on the question, or the shared prefix would too
        pinned_room = room = int(stable_budget * PINNED_SHARE)
        for doc in sorted(pinned, key=lambda d: (str(d.source), d.doc_id)):
            if doc.num_tokens > 2 * pinned_room:  # far too big: not worth reading and counting its text
                too_big.append(doc.doc_id)
                searched_pins.append(PinnedSearched(doc.doc_id, doc.source, doc.num_tokens, room))
                continue
            passages = _passages(doc.doc_id, doc.source, *library.document_text(doc.doc_id), start=len(sources) + 1)
            cost = sum(count(_render(s)) for s in passages)
            if cost <= pinned_room:
                sources += passages
                whole.append(doc.doc_id)
                pinned_room -= cost
                budget -= cost
            else:
                too_big.append(doc.doc_id)
                searched_pins.append(PinnedSearched(doc.doc_id, doc.source, cost, room))
        hits: list[Hit] = []
        if search:
            found = above_floor(library.search(question, k + len(whole) * k), min_similarity, PASSAGE_FLOOR)
            hits = [h for h in found if h.doc_id not in whole][:k]  # a whole pin counts toward the gate
        elif too_big:
            hits = library.search(question, k, doc_ids=too_big)
        for hit in canonical_order(hits):
            source = _from_hit(hit, len(sources) + 1)
            cost = count(_render(source))
            if cost > budget:
                break
            sources.append(source)
            budget -= cost
    kept = _recent(history, budget, count)
    content = system
    if sources:
        content += "\n\n" + SOURCES_INSTRUCTION + "\n\n" + "\n\n".join(map(_render, sources))
    return Prompt([{"role": "system", "content": content}, *kept, {"role": "user", "content": question}], sources,
                  tuple(searched_pins))


def cited_sources(answer: str, sources: Sequence[Source]) -> list[Source]:
    """The sources an answer cites, in the order it first cites them; unknown numbers are ignored."""
    by_number = {s.number: s for s in sources}
    cited: dict[int, Source] = {}
    for group in _CITATION.findall(answer):
        for n in map(int, re.split(r"\s*[,;]\s*", group)):
            if n in by_number:
                cited.setdefault(n, by_number[n])
    return list(cited.values())


def _passages(doc_id: str, source: Path, text: str, sections: list[dict], start: int) -> list[Source]:
    """A pinned document as one source per page (paged documents) or one source in all."""
    pages: dict[int, list[dict]] = {}
    for s in sections:
        if s["page"] is not None:
            pages.setdefault(s["page"], []).append(s)
    spans = ([(p, ss[0]["start"], ss[-1]["end"]) for p, ss in sorted(pages.items())] if pages
             else [(None, 0, len(text))])
    out = []
    for page, a, b in spans:
        body = text[a:b].strip()
        if body:
            out.append(Source(start + len(out), doc_id, source, page, _snippet(body), True, body, a, b))
    return out


def _from_hit(hit: Hit, number: int) -> Source:
    return Source(number, hit.doc_id, hit.source, hit.page, _snippet(hit.text), False, hit.text, hit.start, hit.end)


def _render(s: Source) -> str:
    return f"[{s.number}] {s.label}{'' if s.pinned else ' (excerpt)'}:\n{s.text}"


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[:SNIPPET_CHARS - 1].rstrip() + "…"


def _recent(history: Sequence[dict], budget: int, count: Callable[[str], int]) -> list[dict]:
    kept: list[dict] = []
    for message in reversed(history):
        cost = count(message["content"]) + 4  # role markers
        if cost > budget:
            break
        kept.insert(0, message)
        budget -= cost
    while kept and kept[0]["role"] == "assistant":  # never open with a reply to a dropped question
        kept.pop(0)
    return kept
