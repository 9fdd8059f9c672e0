"""HTML pages (and EPUB chapters), read as a stream of tags into paragraphs and sections.

No tree is built: Python's html.parser (the parser BeautifulSoup used here) hands over tags and
text one at a time, and only the open elements are kept, at most `MAX_DEPTH` of them, as browsers
do (past that, an element takes the place of the deepest). So a page of a million nested <div>s
costs its text, not a million objects, and text is counted as it is read. Inline text runs are
joined and their whitespace collapsed; block elements end paragraphs; <pre> keeps its layout;
table cells are joined with " | " and list items get a "- "; each h1-h3 starts a section;
scripts, styles and navigation are dropped.
"""
from __future__ import annotations

import codecs
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from bs4.dammit import EncodingDetector

from rag.loaders.base import (
    MAX_SECTIONS,
    PARAGRAPH_BREAK,
    LoadedDocument,
    Part,
    TextBudget,
    WHITESPACE,
    TextBuilder,
    assemble,
    collapse,
    name_title,
    too_large,
)
from rag.loaders.text import MAX_BYTES_PER_CHAR

MAX_DEPTH = 512  # past this, an element replaces the deepest open one (Chromium stops nesting at 512 too)
_DROP = frozenset({"script", "style", "nav", "noscript", "head", "title", "template"})
_SECTION_HEADINGS = frozenset({"h1", "h2", "h3"})
_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "dialog", "div",
    "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h4", "h5", "h6", "header",
    "hr", "html", "legend", "li", "main", "ol", "p", "section", "summary", "table", "tbody",
    "tfoot", "thead", "tr", "ul",
})
_TIGHT = frozenset({"li", "tr", "dt", "dd"})  # consecutive rows and list items are not spaced apart
_VOID = frozenset({  # elements that never hold content; an end tag for one is ignored
    "area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link", "menuitem", "meta", "param",
    "source", "track", "wbr", "basefont", "bgsound", "command", "frame", "image", "isindex", "nextid", "spacer",
})
_FEED = 1 << 16  # characters handed to the parser at a time (at least)
_COMPACT_AT = 4096  # pieces of text kept apart before they are joined into one
_READ = 1 << 16


@dataclass
class _Capture:
    """The text of one element read whole (a heading, a <pre>, the <title>): its text nodes,
    joined by `separator` as BeautifulSoup's get_text(separator) joined them."""
    kind: str           # "section", "pre", "title", "h1"
    depth: int          # how many elements are open with it, itself included
    separator: str
    pieces: list[str] = field(default_factory=list)

    def add(self, text: str, same_node: bool) -> None:
        if self.pieces and not same_node:
            self.pieces.append(self.separator)
        self.pieces.append(text)
        if len(self.pieces) > _COMPACT_AT:
            self.pieces = ["".join(self.pieces)]

    def text(self) -> str:
        return "".join(self.pieces)


@dataclass
class _Section:
    title: str | None
    text: TextBuilder
    tight: bool = False  # whether its last block was a list item or a table row


class HtmlText(HTMLParser):
    """Feed it decoded text; `finish()` returns the page's parts (one per section) and its
    title (<title>, else the first <h1>)."""

    def __init__(self, budget: TextBudget) -> None:
        super().__init__(convert_charrefs=True)
        self.budget = budget
        self.sections = [_Section(None, TextBuilder(budget))]
        self.line: list[str] = []          # inline text since the last block boundary
        self.line_has_text = False
        self.prefix = ""
        self.open: list[tuple[str, bool]] = []  # open elements: (name, whether it is dropped)
        self.open_names: dict[str, int] = {}    # how many of each name are open
        self.dropped = 0                   # how many open elements are dropped (script, nav, ...)
        self.captures: list[_Capture] = []
        self.opaque = 0                    # open headings and <pre>s: their text goes to their capture
        self.title: str | None = None
        self.first_h1: str | None = None
        self.seen = {"title": False, "h1": False}
        self.in_text_node = False          # the last event was text: the next text continues its node

    # ---------------------------------------------------------------- parser events

    def handle_starttag(self, tag: str, attrs) -> None:
        self.in_text_node = False
        if tag in _VOID:
            self.enter(tag, pushed=False)
            self.leave(tag, dropped=False)
            return
        if len(self.open) >= MAX_DEPTH:  # the deepest element ends and the new one takes its place
            self.leave(*self.pop())
        self.enter(tag, pushed=True)

    def handle_endtag(self, tag: str) -> None:
        self.in_text_node = False
        if tag in _VOID or not self.open_names.get(tag):
            return  # as BeautifulSoup: an end tag with nothing open to end is ignored
        while True:
            name, dropped = self.pop()
            self.leave(name, dropped)
            if name == tag:
                return

    def handle_data(self, data: str) -> None:
        same_node, self.in_text_node = self.in_text_node, True
        if self.cdata_elem is not None:  # the body of a <script> or <style>
            return
        for capture in self.captures:
            capture.add(data, same_node)
            self.budget.spend(len(data) + len(capture.separator))
        if self.dropped or self.opaque:
            return
        piece = WHITESPACE.sub(" ", data)
        if piece == " " and (not self.line or self.line[-1][-1:].isspace()):
            return  # flushing would collapse it away
        self.append(piece)

    def handle_comment(self, data: str) -> None:
        self.in_text_node = False

    def handle_decl(self, decl: str) -> None:
        self.in_text_node = False

    def handle_pi(self, data: str) -> None:
        self.in_text_node = False

    def unknown_decl(self, data: str) -> None:
        self.in_text_node = False

    # ---------------------------------------------------------------- elements

    def enter(self, tag: str, pushed: bool) -> None:
        dropped = tag in _DROP
        if pushed:
            self.open.append((tag, dropped))
            self.open_names[tag] = self.open_names.get(tag, 0) + 1
        depth = len(self.open) if pushed else len(self.open) + 1
        for kind in ("title", "h1"):
            if tag == kind and not self.seen[kind]:
                self.seen[kind] = True
                self.captures.append(_Capture(kind, depth, " "))
        if dropped:
            self.dropped += pushed
            return
        if self.dropped or self.opaque:
            return
        if tag in _SECTION_HEADINGS or tag == "pre":
            self.flush()
            self.captures.append(_Capture("section" if tag != "pre" else "pre", depth, " " if tag != "pre" else ""))
            self.opaque += 1
            return
        if tag == "br":
            if self.line and not self.line[-1].endswith("\n"):  # more line breaks would be dropped as empty lines
                self.append("\n")
            return
        if tag in ("td", "th") and self.line_has_text:
            self.append(" | ")
        if tag in _BLOCKS:
            self.flush()
        if tag == "li":
            self.prefix = "- "

    def pop(self) -> tuple[str, bool]:
        name, dropped = self.open.pop()
        self.open_names[name] -= 1
        return name, dropped

    def leave(self, tag: str, dropped: bool) -> None:
        """`tag` ends (its end tag, an end tag of an element around it, or the end of the page)."""
        depth = len(self.open) + 1
        while self.captures and self.captures[-1].depth >= depth:
            self.end_capture(self.captures.pop())
        if dropped:
            self.dropped -= 1
        elif not (self.dropped or self.opaque) and tag in _BLOCKS:
            self.flush(tight=tag in _TIGHT)

    def end_capture(self, capture: _Capture) -> None:
        text = capture.text()
        if capture.kind == "title":
            self.title = collapse(text)
        elif capture.kind == "h1":
            self.first_h1 = collapse(text)
        elif capture.kind == "pre":
            self.opaque -= 1
            self.add(text.strip("\n").rstrip(), tight=False)
        else:
            self.opaque -= 1
            heading = collapse(text)
            if heading and len(self.sections) < MAX_SECTIONS:
                self.sections.append(_Section(heading, TextBuilder(self.budget)))
            self.add(heading, tight=False)

    # ---------------------------------------------------------------- text

    def append(self, piece: str) -> None:
        self.budget.spend(len(piece))
        self.line.append(piece)
        self.line_has_text = self.line_has_text or not piece.isspace()
        if len(self.line) > _COMPACT_AT:
            self.line = ["".join(self.line)]

    def flush(self, tight: bool = False) -> None:
        lines = (collapse(line) for line in "".join(self.line).split("\n"))
        self.line, self.line_has_text = [], False
        text = "\n".join(line for line in lines if line)
        if text:
            self.add(self.prefix + text, tight)
            self.prefix = ""

    def add(self, text: str, tight: bool) -> None:
        if text:
            section = self.sections[-1]
            section.text.add(text, "\n" if tight and section.tight else PARAGRAPH_BREAK)
            section.tight = tight

    def finish(self) -> tuple[list[Part], str | None]:
        self.close()
        while self.open:
            self.leave(*self.pop())
        self.flush()
        parts = [Part(section.text.text(), title=section.title) for section in self.sections if section.text]
        return parts, self.title or self.first_h1 or None


# ------------------------------------------------------------------------------- decoding

def read_html(open_bytes: Callable[[], Generator[bytes, None, None]],
              budget: TextBudget) -> tuple[list[Part], str | None]:
    """Decodes and parses a page whose bytes `open_bytes()` streams (from the start, each call).
    The encodings tried are BeautifulSoup's, judged from the page's first block: its byte-order
    mark, its declared encoding, a guess, UTF-8, Windows-1252; a strict decode that fails starts
    over with the next. Returns the page's parts and its title."""
    blocks = open_bytes()
    head = next(blocks, b"")
    blocks.close()
    candidates = _encodings(head)
    spent = budget.used
    for i, encoding in enumerate(candidates):
        budget.used = spent  # a failed try's text was never kept
        parser = HtmlText(budget)
        try:
            _feed(parser, open_bytes(), encoding, "replace" if i == len(candidates) - 1 else "strict")
        except UnicodeDecodeError:
            continue
        return parser.finish()
    raise AssertionError("the last encoding decodes with errors='replace' and cannot fail")


def _encodings(head: bytes) -> list[str]:
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if head.startswith(bom):
            return [encoding]  # a decoder that consumes the mark
    names = []
    for name in EncodingDetector(head, is_html=True).encodings:
        try:
            names.append(codecs.lookup(name).name)
        except LookupError:
            pass
    return list(dict.fromkeys(names))


def _feed(parser: HtmlText, blocks: Iterable[bytes], encoding: str, errors: str) -> None:
    """Hands text to the parser in batches at least as long as what it still holds unparsed: a
    tag, comment or script cut by a batch is rescanned from its start at every feed, so batches
    that grow with it keep the work linear in the page's length."""
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    batch: list[str] = []
    size = 0
    for block in blocks:
        batch.append(decoder.decode(block))
        size += len(batch[-1])
        if size >= max(_FEED, len(parser.rawdata)):
            parser.feed("".join(batch))
            batch, size = [], 0
    batch.append(decoder.decode(b"", final=True))
    parser.feed("".join(batch))


def _file_blocks(path: Path) -> Generator[bytes, None, None]:
    with path.open("rb") as f:
        yield from iter(lambda: f.read(_READ), b"")


def load_html(path: Path, max_chars: int) -> LoadedDocument:
    if path.stat().st_size > MAX_BYTES_PER_CHAR * max_chars:  # more bytes than text could fill: refuse unread
        raise too_large(path, max_chars)
    parts, title = read_html(lambda: _file_blocks(path), TextBudget(path, max_chars))
    text, sections = assemble(parts)
    return LoadedDocument(path, "html", title or name_title(path), text, sections)
