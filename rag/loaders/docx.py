"""Word (.docx) documents, read straight from their XML.

word/document.xml is streamed through expat (see `xmlsafe`) from a size-checked zip stream
(see `zipped`): no tree is built, so a document costs its text and not a Python object per
element, and text is counted as it is read. Styles are read once per document, into a dict.

What is read is what python-docx's `Document.iter_inner_content()` gave: paragraphs and tables
of the body in order; a paragraph is the text of its runs (also inside hyperlinks), with tabs,
line breaks and no-break hyphens; a paragraph styled "Heading ..." or "Title" starts a section;
a table is one line per row, cells joined by " | ", a cell merged across columns or rows once.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from rag.loaders.base import (
    MAX_SECTIONS,
    LoadedDocument,
    Part,
    TextBudget,
    TextBuilder,
    assemble,
    collapse,
    name_title,
)
from rag.loaders.xmlsafe import expat_name
from rag.loaders.zipped import Archive

_NAMESPACES = ("http://schemas.openxmlformats.org/wordprocessingml/2006/main",  # transitional
               "http://purl.oclc.org/ooxml/wordprocessingml/main")              # strict
_LOCAL_NAMES = ("body", "p", "r", "t", "hyperlink", "pPr", "pStyle", "tbl", "tr", "trPr", "gridBefore", "tc",
                "tcPr", "gridSpan", "vMerge", "tab", "ptab", "br", "cr", "noBreakHyphen", "style", "name")
# expat's name -> local name, for the elements that matter, in either namespace
_WORD = {expat_name(ns, local): local for ns in _NAMESPACES for local in _LOCAL_NAMES}
_VAL = tuple(expat_name(ns, "val") for ns in _NAMESPACES)
_TYPE = tuple(expat_name(ns, "type") for ns in _NAMESPACES)
_STYLE_ID = tuple(expat_name(ns, "styleId") for ns in _NAMESPACES)
_DEFAULT = tuple(expat_name(ns, "default") for ns in _NAMESPACES)
_RUN_TEXT = {"tab": "\t", "ptab": "\t", "cr": "\n", "noBreakHyphen": "-"}
_DC_TITLE = "{http://purl.org/dc/elements/1.1/}title"
_ON = ("1", "true", "on")


def load_docx(path: Path, max_chars: int) -> LoadedDocument:
    budget = TextBudget(path, max_chars)
    with Archive(path, max_chars, "Word document") as archive:
        main = _related(archive, "", "officeDocument")
        if main is None:
            raise archive.damaged("it names no main document part, so it is not a Word (.docx) document")
        styles_part = _related(archive, main, "styles")
        styles = _read_styles(archive, styles_part) if styles_part else _Styles(None)
        body = _Body(budget, styles)
        archive.parse(main, body.start, body.end, body.data)
        core = _related(archive, "", "core-properties")
        core_title = archive.tree(core).findtext(f".//{_DC_TITLE}") if core else None
    parts = [Part(text.text(), title=title) for title, text in body.parts if text]
    text, sections = assemble(parts)
    title = (core_title or "").strip() or body.first_heading or name_title(path)
    return LoadedDocument(path, "docx", title, text, sections)


# ------------------------------------------------------------------------------------ the body

class _Body:
    """The handlers that read word/document.xml. Depths are those of the open elements (the
    root is 1; 0 means "none open"), which is all it takes to know a body paragraph from one
    nested in a text box, or a run that counts from one that does not."""

    def __init__(self, budget: TextBudget, styles: _Styles) -> None:
        self.budget = budget
        self.styles = styles
        self.parts: list[tuple[str | None, TextBuilder]] = [(None, TextBuilder(budget))]
        self.first_heading: str | None = None
        self.depth = 0
        self.body = 0                      # depth of <w:body>
        # the paragraph being read, in the body or in a table cell
        self.p = self.link = self.run = self.t = self.ppr = 0
        self.pieces: list[str] = []
        self.style_id: str | None = None
        # the body-level table being read
        self.tbl = self.tr = self.trpr = self.tc = self.tcpr = 0
        self.rows = TextBuilder(budget)
        self.row = TextBuilder(budget)
        self.row_has_text = False
        self.grid = 0                      # grid column of the cell being read
        self.cell = _Cell()
        self.above: dict[int, tuple[int, str]] = {}  # vertically merged cells of the row above
        self.merged: dict[int, tuple[int, str]] = {}  # ... and of this row
        self.last_cell_id = 0
        self.cell_ids = 0

    def start(self, name: str, attributes: dict[str, str]) -> None:
        d = self.depth = self.depth + 1
        kind = _WORD.get(name)
        if kind is None:
            return
        if self.p:
            if self.run and d == self.run + 1:
                if kind == "t":
                    self.t = d
                elif kind == "br":
                    self.piece("\n" if _get(attributes, _TYPE) in (None, "textWrapping") else "")
                elif kind in _RUN_TEXT:
                    self.piece(_RUN_TEXT[kind])
            elif kind == "r" and (d == self.p + 1 or (self.link and d == self.link + 1)):
                self.run = d
            elif d == self.p + 1 and kind in ("hyperlink", "pPr"):
                if kind == "hyperlink":
                    self.link = d
                else:
                    self.ppr = d
            elif kind == "pStyle" and self.ppr and d == self.ppr + 1:
                self.style_id = _get(attributes, _VAL)
        elif kind == "p" and ((self.body and d == self.body + 1) or (self.tc and d == self.tc + 1)):
            self.p, self.pieces, self.style_id = d, [], None
        elif self.tbl:
            self.start_in_table(kind, d, attributes)
        elif kind == "tbl" and self.body and d == self.body + 1:
            self.tbl, self.rows, self.above = d, TextBuilder(self.budget), {}
        elif kind == "body" and d == 2:
            self.body = d

    def start_in_table(self, kind: str, d: int, attributes: dict[str, str]) -> None:
        if kind == "tr" and d == self.tbl + 1:
            self.tr, self.grid, self.row, self.row_has_text, self.merged = d, 0, TextBuilder(self.budget), False, {}
            self.last_cell_id = 0
        elif kind == "trPr" and self.tr and d == self.tr + 1:
            self.trpr = d
        elif kind == "gridBefore" and self.trpr and d == self.trpr + 1:
            self.grid = _count(_get(attributes, _VAL), 0)
        elif kind == "tc" and self.tr and d == self.tr + 1:
            self.tc, self.cell = d, _Cell(TextBuilder(self.budget))
        elif kind == "tcPr" and self.tc and d == self.tc + 1:
            self.tcpr = d
        elif self.tcpr and d == self.tcpr + 1:
            if kind == "gridSpan":
                self.cell.span = _count(_get(attributes, _VAL), 1)
            elif kind == "vMerge":
                self.cell.vmerge = _get(attributes, _VAL) or "continue"

    def end(self, _name: str) -> None:
        d, self.depth = self.depth, self.depth - 1
        if self.p:
            if d == self.t:
                self.t = 0
            elif d == self.run:
                self.run = 0
            elif d == self.link:
                self.link = 0
            elif d == self.ppr:
                self.ppr = 0
            elif d == self.p:
                self.p = 0
                self.end_paragraph()
        elif not self.tbl:
            if d == self.body:
                self.body = 0
        elif d == self.tcpr:
            self.tcpr = 0
        elif d == self.tc:
            self.tc = 0
            self.end_cell()
        elif d == self.trpr:
            self.trpr = 0
        elif d == self.tr:
            self.tr = 0
            self.end_row()
        elif d == self.tbl:
            self.tbl = 0
            if self.rows:
                self.parts[-1][1].add(self.rows.text())

    def data(self, text: str) -> None:
        if self.t:
            self.piece(text)

    def piece(self, text: str) -> None:
        self.budget.spend(len(text))
        self.pieces.append(text)

    def end_paragraph(self) -> None:
        text = "".join(self.pieces)
        self.pieces = []
        if self.tc:
            self.cell.paragraphs.add(text, "\n")
            return
        block = text.strip()
        if not block:
            return
        if self.styles.is_heading(self.style_id) and len(self.parts) < MAX_SECTIONS:
            title = collapse(block)
            self.parts.append((title, TextBuilder(self.budget)))
            self.first_heading = self.first_heading or title
        self.parts[-1][1].add(block)

    def end_cell(self) -> None:
        """A cell continuing a vertical merge shows the text of the cell it continues; a cell
        that spans grid columns, or repeats the one before it, appears once in its row."""
        cell = self.cell
        if cell.vmerge == "continue" and self.grid in self.above:
            cell_id, text = self.above[self.grid]
        else:
            self.cell_ids += 1
            cell_id, text = self.cell_ids, collapse(cell.paragraphs.text())
        if cell.vmerge is not None:
            self.merged[self.grid] = (cell_id, text)
        self.grid += cell.span
        if cell_id != self.last_cell_id:
            self.row.add(text, " | ")
            self.row_has_text = self.row_has_text or bool(text)
            self.last_cell_id = cell_id

    def end_row(self) -> None:
        if self.row_has_text:
            self.rows.add(self.row.text(), "\n")
        self.above = self.merged


@dataclass
class _Cell:
    paragraphs: TextBuilder | None = None
    span: int = 1
    vmerge: str | None = None  # "restart" or "continue" inside a vertical merge


def _is_heading(style_name: str) -> bool:
    name = style_name.lower()
    return name.startswith("heading") or name == "title"


def _get(attributes: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in attributes:
            return attributes[name]
    return None


def _count(value: str | None, default: int) -> int:
    try:
        return max(int(value), 0) if value is not None else default
    except ValueError:
        return default


# ------------------------------------------------------------------------------------ styles

@dataclass
class _Styles:
    """Which paragraph styles are headings, read once per document: a style named "Heading ..."
    or "Title". A paragraph without a style, or naming one that is missing or not a paragraph
    style, has the default paragraph style, as in Word. Without a styles part the id is all
    there is, and "Heading1" still reads as a heading."""
    names: dict[str, tuple[str, str | None]] | None  # id -> (type, name), the first style of each id
    default: str | None = None  # the name of the last default paragraph style, as Word takes it

    def __post_init__(self) -> None:
        paragraph_styles = {i: name for i, (kind, name) in (self.names or {}).items() if kind == "paragraph"}
        self._paragraph_ids = frozenset(paragraph_styles)
        self._headings = frozenset(i for i, name in paragraph_styles.items() if name and _is_heading(name))
        self._default_is_heading = bool(self.default and _is_heading(self.default))

    def is_heading(self, style_id: str | None) -> bool:
        if self.names is None:
            return style_id is not None and _is_heading(style_id)
        if style_id in self._paragraph_ids:
            return style_id in self._headings
        return self._default_is_heading


@dataclass
class _StyleReader:
    names: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    default: str | None = None
    depth: int = 0
    current: list | None = None  # [type, id, default, name] of the <w:style> being read

    def start(self, name: str, attributes: dict[str, str]) -> None:
        self.depth += 1
        kind = _WORD.get(name)
        if kind == "style" and self.depth == 2:
            self.current = [_get(attributes, _TYPE) or "paragraph", _get(attributes, _STYLE_ID),
                            _get(attributes, _DEFAULT) in _ON, None]
        elif kind == "name" and self.current is not None and self.depth == 3:
            self.current[3] = _get(attributes, _VAL)

    def end(self, _name: str) -> None:
        self.depth -= 1
        if self.depth == 1 and self.current is not None:
            kind, style_id, default, name = self.current
            if style_id is not None:
                self.names.setdefault(style_id, (kind, name))
            if default and kind == "paragraph":
                self.default = name
            self.current = None


def _read_styles(archive: Archive, part: str) -> _Styles:
    if archive.find(part) is None:
        return _Styles(None)
    reader = _StyleReader()
    archive.parse(part, reader.start, reader.end, lambda _text: None)
    return _Styles(reader.names, reader.default)


# ------------------------------------------------------------------------------------ package

def _related(archive: Archive, source: str, kind: str) -> str | None:
    """The part that `source` (the package itself when "") names in its relationships with a
    type ending in /`kind`, as a zip member name; None if there is none."""
    directory, name = posixpath.split(source)
    rels = posixpath.join(directory, "_rels", f"{name}.rels")
    if archive.find(rels) is None:
        return None
    for relation in archive.tree(rels).iter():
        if (relation.tag.endswith("}Relationship") and relation.get("Type", "").endswith(f"/{kind}")
                and relation.get("TargetMode") != "External" and relation.get("Target")):
            target = unquote(relation.get("Target"))
            if target.startswith("/"):  # from the package root
                return target.lstrip("/")
            return posixpath.normpath(posixpath.join(directory, target))
    return None
