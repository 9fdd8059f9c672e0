"""Token-aware splitting of a loaded document into overlapping chunks that keep their positions.

The text is cut at the most natural boundary available (paragraph, line, sentence, word) into
pieces, and pieces are packed greedily into chunks of at most `max_tokens` (counted with the
embedder's tokenizer, whose window is what a chunk must fit). A chunk always starts fresh at a new
page, so a citation's page is right, and at a new section once it holds `min_tokens`; otherwise
neighbouring chunks share `overlap_tokens` of trailing sentences, so an answer that straddles a cut
is still found whole in one of them. Every chunk is an exact slice `text[start:end]` of the document.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from rag.loaders import LoadedDocument, Section

# Coarse to fine. The sentence rule cuts after . ! ? ; : followed by whitespace.
_BOUNDARIES = (re.compile(r"\n[ \t]*\n\s*"), re.compile(r"\n\s*"), re.compile(r"(?<=[.!?;:])\s+"))
_WORDS = re.compile(r"\s+")


@dataclass(frozen=True)
class ChunkingConfig:
    max_tokens: int = 240       # MiniLM reads 256 word pieces; 240 beat 200 and 128 on `python -m rag.eval`
    overlap_tokens: int = 32
    min_tokens: int = 64        # below this a chunk runs on across a section boundary
    max_chars: int = 2000       # a word longer than 100 chars is one [UNK] piece to MiniLM, not to a chat model

    def __post_init__(self) -> None:
        if not 0 <= self.overlap_tokens < self.max_tokens or not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"inconsistent chunking sizes: {self}")


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start: int            # char offsets into the document text
    end: int
    page: int | None      # where the chunk starts
    section: str | None
    num_tokens: int


@dataclass(frozen=True)
class _Piece:
    start: int
    end: int
    tokens: int
    section: int


def chunk_document(doc: LoadedDocument, count_tokens: Callable[[str], int],
                   config: ChunkingConfig = ChunkingConfig()) -> list[Chunk]:
    pieces: list[_Piece] = []
    for number, section in enumerate(doc.sections):
        pieces += _split(doc.text, section.start, section.end, 0, number, count_tokens, config)
    return _pack(doc, pieces, config)


def _split(text: str, start: int, end: int, level: int, section: int,
           count: Callable[[str], int], config: ChunkingConfig) -> list[_Piece]:
    """Pieces covering text[start:end], cut at every boundary of `level` and finer ones down to
    sentences, then at words (and finally characters) only where a piece is still too long."""
    if not text[start:end].strip():
        return []
    if level < len(_BOUNDARIES):
        parts = _cut(_BOUNDARIES[level], text, start, end)
        return [p for s, e in parts for p in _split(text, s, e, level + 1, section, count, config)]
    tokens = count(text[start:end])
    if (tokens <= config.max_tokens and end - start <= config.max_chars) or end - start < 2:
        return [_Piece(start, end, tokens, section)]
    if level == len(_BOUNDARIES):
        parts = _cut(_WORDS, text, start, end)
        if len(parts) > 1:  # pack words back into pieces that fit, rather than one piece per word
            return _regroup([p for s, e in parts for p in _split(text, s, e, level + 1, section, count, config)],
                            config)
    mid = start + (end - start) // 2  # one enormous "word" (a hash, base64): halve it
    return (_split(text, start, mid, level + 1, section, count, config)
            + _split(text, mid, end, level + 1, section, count, config))


def _cut(pattern: re.Pattern, text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Spans between matches; each keeps the separator that follows it."""
    spans, last = [], start
    for m in pattern.finditer(text, start, end):
        if m.end() > last and m.start() > last:
            spans.append((last, m.end()))
            last = m.end()
    if last < end:
        spans.append((last, end))
    return spans


def _fits(first: _Piece, last: _Piece, tokens: int, config: ChunkingConfig) -> bool:
    return tokens <= config.max_tokens and last.end - first.start <= config.max_chars


def _regroup(pieces: list[_Piece], config: ChunkingConfig) -> list[_Piece]:
    out: list[_Piece] = []
    for p in pieces:
        if out and _fits(out[-1], p, out[-1].tokens + p.tokens, config):
            last = out[-1]
            out[-1] = _Piece(last.start, p.end, last.tokens + p.tokens, last.section)
        else:
            out.append(p)
    return out


def _pack(doc: LoadedDocument, pieces: list[_Piece], config: ChunkingConfig) -> list[Chunk]:
    chunks: list[Chunk] = []
    current: list[_Piece] = []

    def emit() -> None:
        start, end = current[0].start, current[-1].end
        raw = doc.text[start:end]
        start += len(raw) - len(raw.lstrip())
        end -= len(raw) - len(raw.rstrip())
        section: Section = doc.sections[current[0].section]
        chunks.append(Chunk(len(chunks), doc.text[start:end], start, end, section.page, section.title,
                            sum(p.tokens for p in current)))

    for piece in pieces:
        if current:
            size = sum(p.tokens for p in current)
            new_section = piece.section != current[-1].section
            new_page = doc.sections[piece.section].page != doc.sections[current[-1].section].page
            if (not _fits(current[0], piece, size + piece.tokens, config) or new_page
                    or (new_section and size >= config.min_tokens)):
                emit()
                current = [] if new_section else _tail(current, piece, config)
        current.append(piece)
    if current:
        emit()
    return chunks


def _tail(pieces: list[_Piece], following: _Piece, config: ChunkingConfig) -> list[_Piece]:
    """The last pieces of a chunk, up to `overlap_tokens`, to repeat at the start of the next."""
    tail: list[_Piece] = []
    size = 0
    for p in reversed(pieces[1:]):  # never the whole previous chunk
        if size + p.tokens > min(config.overlap_tokens, config.max_tokens - following.tokens) \
                or not _fits(p, following, size + p.tokens + following.tokens, config):
            break
        tail.insert(0, p)
        size += p.tokens
    return tail
