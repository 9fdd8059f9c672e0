"""What every loader shares: the result types, the errors, the running text budget and assembly."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rag.paths import display_name

MAX_TEXT_CHARS = 20_000_000  # about 10,000 book pages; more is almost surely not a document
# A heading past this many in one document stays in the text but starts no section: a page of a
# million headings would otherwise cost a million section objects.
MAX_SECTIONS = 10_000
PARAGRAPH_BREAK = "\n\n"


# ------------------------------------------------------------------------------------ results

@dataclass(frozen=True)
class Section:
    """A span [start, end) of `LoadedDocument.text` and where it sits in the original."""
    start: int
    end: int
    page: int | None = None   # 1-based, PDF only
    title: str | None = None  # heading, chapter title


@dataclass
class LoadedDocument:
    path: Path
    kind: str  # "text", "markdown", "code", "pdf", "docx", "html", "epub"
    title: str
    text: str
    sections: list[Section]  # in order, non-overlapping, together covering all of `text`
    num_pages: int | None = None


# ------------------------------------------------------------------------------------- errors

class DocumentError(Exception):
    """A file that cannot be read as a document; str(error) is one line naming the file and why."""

    def __init__(self, message: str, path: Path | None = None):
        super().__init__(message)
        self.path = path


class UnsupportedDocument(DocumentError):
    """A file type Folio does not read."""


class CorruptDocument(DocumentError):
    """A damaged or password-protected file, or binary data posing as text."""


class EmptyDocument(DocumentError):
    """A file with no text to extract (an empty file, a scanned PDF)."""


class DocumentTooLarge(DocumentError):
    """More text than `max_chars`, or a zip member that would unpack past what Folio reads."""


class MissingDocument(DocumentError):
    """A file that is gone or cannot be opened (moved, deleted, no permission)."""


def error(cls: type[DocumentError], path: Path, problem: str) -> DocumentError:
    """The file's name is escaped, so the message stays one printable line whatever the name holds."""
    return cls(f"{display_name(path.name)}: {problem}", path)


def too_large(path: Path, max_chars: int) -> DocumentError:
    return error(DocumentTooLarge, path, f"too large: more than {max_chars:,} characters of text")


def name_title(path: Path) -> str:
    """The title of a document that names none: its file name, made safe to show and to store."""
    return display_name(path.name)


# ------------------------------------------------------------------------- counting and building

@dataclass
class TextBudget:
    """The characters a loader has extracted so far. Loaders charge every piece of text the
    moment they read it, so a document is given up as soon as it passes `max_chars`, before the
    rest of it is read; the exact length is checked once more on the assembled text."""
    path: Path
    max_chars: int
    used: int = 0

    def spend(self, chars: int) -> None:
        self.used += chars
        if self.used > self.max_chars + len(PARAGRAPH_BREAK):  # the last block has no break after it
            raise too_large(self.path, self.max_chars)


class TextBuilder:
    """Blocks joined with their separators, compacted as they come, so that a million tiny
    paragraphs cost their characters rather than a million string objects. Adding a block
    charges its separator to the budget; the block's own text was charged as it was read."""

    _COMPACT_EVERY = 4096

    def __init__(self, budget: TextBudget) -> None:
        self._budget = budget
        self._done: list[str] = []
        self._pending: list[str] = []

    def add(self, block: str, separator: str = PARAGRAPH_BREAK) -> None:
        if self._pending or self._done:
            self._budget.spend(len(separator))
            self._pending.append(separator)
        self._pending.append(block)
        if len(self._pending) >= self._COMPACT_EVERY:
            self._done.append("".join(self._pending))
            self._pending.clear()

    def text(self) -> str:
        return "".join(self._done) + "".join(self._pending)

    def __bool__(self) -> bool:
        return bool(self._done or self._pending)


@dataclass
class Part:
    """A piece of a document before assembly: a page, a chapter, or the text under a heading."""
    text: str
    page: int | None = None
    title: str | None = None


def assemble(parts: list[Part]) -> tuple[str, list[Section]]:
    """Joins parts with blank lines; each part's section owns the break after it, so the sections
    tile the text exactly. An empty part keeps an empty section (a PDF page with no text)."""
    last_filled = max((i for i, part in enumerate(parts) if part.text), default=-1)
    pieces, sections, offset = [], [], 0
    for i, part in enumerate(parts):
        piece = part.text + PARAGRAPH_BREAK if part.text and i < last_filled else part.text
        pieces.append(piece)
        sections.append(Section(offset, offset + len(piece), part.page, part.title))
        offset += len(piece)
    return "".join(pieces), sections


WHITESPACE = re.compile(r"\s+")
_SPACES = re.compile("  +")
_COLLAPSE_SPAN = 1 << 16


def collapse(text: str) -> str:
    """Runs of whitespace as one space, none at the ends, as `" ".join(text.split())` gives, but
    a span at a time: on a long paragraph, splitting (or one re.sub) makes an object of every
    word, some fifty bytes each, at once."""
    if len(text) <= _COLLAPSE_SPAN:
        return WHITESPACE.sub(" ", text).strip()
    spans = (WHITESPACE.sub(" ", text[i:i + _COLLAPSE_SPAN]) for i in range(0, len(text), _COLLAPSE_SPAN))
    return _SPACES.sub(" ", "".join(spans)).strip()  # a run cut between spans left a space in each
