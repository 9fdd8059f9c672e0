"""Documents on disk -> their text, with page or section positions for citations.

`load_document(path)` reads plain text and source code, Markdown, PDF (pypdfium2), DOCX
(python-docx), HTML (BeautifulSoup) and EPUB (zip + the HTML extraction). Whatever a user can get
wrong about a file (wrong type, damaged, password-protected, empty, huge, gone) raises a
`DocumentError` subclass whose message is one line naming the file, fit to show them as is.
"""
from __future__ import annotations

import codecs
import logging
import posixpath
import re
import threading
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote
from xml.etree import ElementTree

log = logging.getLogger(__name__)
MAX_TEXT_CHARS = 20_000_000  # about 10,000 book pages; more is almost surely not a document

_TEXT_SUFFIXES = frozenset({".txt", ".text", ".rst", ".log", ".csv", ".tsv"})
_MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
_CODE_SUFFIXES = frozenset({
    ".py", ".pyi", ".js", ".mjs", ".jsx", ".ts", ".tsx", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp",
    ".java", ".kt", ".scala", ".cs", ".go", ".rs", ".rb", ".php", ".pl", ".lua", ".swift", ".r",
    ".sh", ".bash", ".zsh", ".ps1", ".toml", ".yaml", ".yml", ".json", ".ini", ".cfg", ".xml",
    ".css", ".scss", ".sql", ".tex",
})
_KIND_BY_SUFFIX = {
    **dict.fromkeys(_TEXT_SUFFIXES, "text"),
    **dict.fromkeys(_MARKDOWN_SUFFIXES, "markdown"),
    **dict.fromkeys(_CODE_SUFFIXES, "code"),
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".epub": "epub",
}
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(_KIND_BY_SUFFIX)

_PARAGRAPH_BREAK = "\n\n"


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
    """More text than `max_chars`."""


class MissingDocument(DocumentError):
    """A file that is gone or cannot be opened (moved, deleted, no permission)."""


def _error(cls: type[DocumentError], path: Path, problem: str) -> DocumentError:
    return cls(f"{path.name}: {problem}", path)


def _too_large(path: Path, max_chars: int) -> DocumentError:
    return _error(DocumentTooLarge, path, f"too large: more than {max_chars:,} characters of text")


# ---------------------------------------------------------------------------------- entry points

def is_supported(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


def load_document(path: str | Path, *, max_chars: int = MAX_TEXT_CHARS) -> LoadedDocument:
    """Read one file; raises a `DocumentError` subclass for anything wrong with the file itself."""
    path = Path(path)
    kind = _KIND_BY_SUFFIX.get(path.suffix.lower())
    if kind is None:
        problem = f"unsupported file type '{path.suffix}'" if path.suffix else "unsupported file type (no extension)"
        raise _error(UnsupportedDocument, path, problem)
    try:
        if path.is_dir():
            raise _error(MissingDocument, path, "is a folder, not a file")
        document = _LOADERS[kind](path, max_chars)
    except FileNotFoundError:
        raise _error(MissingDocument, path, "file not found (moved or deleted?)") from None
    except PermissionError:
        raise _error(MissingDocument, path, "permission denied") from None
    except OSError as e:
        raise _error(MissingDocument, path, f"could not be read ({e.strerror or e})") from None
    except DocumentError:
        raise
    except Exception as e:  # a parser choking on a damaged file we did not foresee: that file fails, not the batch
        log.warning("loading %s failed", path, exc_info=True)
        raise _error(CorruptDocument, path, f"could not be read ({type(e).__name__}: {e})") from e
    if len(document.text) > max_chars:
        raise _too_large(path, max_chars)
    if not document.text.strip():
        raise _error(EmptyDocument, path, "contains no text")
    return document


# ------------------------------------------------------------------------------ shared assembly

@dataclass
class _Part:
    """A piece of a document before assembly: a page, a chapter, or the text under a heading."""
    text: str
    page: int | None = None
    title: str | None = None


def _assemble(parts: list[_Part]) -> tuple[str, list[Section]]:
    """Joins parts with blank lines; each part's section owns the break after it, so the sections
    tile the text exactly. An empty part keeps an empty section (a PDF page with no text)."""
    last_filled = max((i for i, part in enumerate(parts) if part.text), default=-1)
    pieces, sections, offset = [], [], 0
    for i, part in enumerate(parts):
        piece = part.text + _PARAGRAPH_BREAK if part.text and i < last_filled else part.text
        pieces.append(piece)
        sections.append(Section(offset, offset + len(piece), part.page, part.title))
        offset += len(piece)
    return "".join(pieces), sections


def _collapse(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- plain text, code

_SNIFF_BYTES = 8192
_MAX_BYTES_PER_CHAR = 4  # UTF-8 and UTF-16 never spend more than 4 bytes on a character
_READ_BLOCK = 1 << 20
_TEXT_CONTROL_BYTES = frozenset(b"\t\n\v\f\r\x1b")
_MAX_CONTROL_RATIO = 0.1


def _read_text(path: Path, max_chars: int) -> str:
    """Decodes UTF-8 (BOM or not), UTF-16 with a BOM, else cp1252, else latin-1 (which cannot fail).

    The file's size alone refuses what must be too long; anything else is decoded block by block
    and given up as soon as it passes `max_chars`, so a huge file is never read whole.
    """
    size = path.stat().st_size
    if size > _MAX_BYTES_PER_CHAR * max_chars:
        raise _too_large(path, max_chars)
    if size == 0:
        raise _error(EmptyDocument, path, "the file is empty")
    with path.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
        utf16 = head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        if _looks_binary(head.decode("utf-16", "replace") if utf16 else head):
            raise _error(CorruptDocument, path, "looks like binary data, not text")
        *strict, last = ["utf-16"] if utf16 else ["utf-8-sig", "cp1252", "latin-1"]
        for encoding in strict:
            f.seek(0)
            try:
                return _unix_newlines(_decode_limited(f, encoding, "strict", path, max_chars))
            except UnicodeDecodeError:
                pass
        f.seek(0)
        return _unix_newlines(_decode_limited(f, last, "replace", path, max_chars))


def _unix_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _looks_binary(head: bytes | str) -> bool:
    codes = head if isinstance(head, bytes) else [ord(c) for c in head]
    if not codes:
        return False
    controls = sum(1 for c in codes if (c < 32 and c not in _TEXT_CONTROL_BYTES))
    return 0 in codes or controls / len(codes) > _MAX_CONTROL_RATIO


def _decode_limited(f: BinaryIO, encoding: str, errors: str, path: Path, max_chars: int) -> str:
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    pieces, count = [], 0
    while block := f.read(_READ_BLOCK):
        pieces.append(decoder.decode(block))
        count += len(pieces[-1])
        if count > max_chars:
            raise _too_large(path, max_chars)
    pieces.append(decoder.decode(b"", final=True))
    return "".join(pieces)


def _load_plain(kind: str) -> Callable[[Path, int], LoadedDocument]:
    def load(path: Path, max_chars: int) -> LoadedDocument:
        text = _read_text(path, max_chars)
        return LoadedDocument(path, kind, path.name, text, [Section(0, len(text))])
    return load


# ----------------------------------------------------------------------------------- markdown

_ATX_HEADING = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_SECTION_LEVELS = 3  # headings #, ## and ### start sections (as h1-h3 do in HTML)


def _load_markdown(path: Path, max_chars: int) -> LoadedDocument:
    text = _read_text(path, max_chars)
    starts: list[tuple[int, str | None]] = [(0, None)]
    title, fence, offset = None, None, 0
    for line in text.split("\n"):
        opening = _FENCE.match(line)
        if fence is not None:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = None
        elif opening:
            fence = opening.group(1)
        elif (heading := _ATX_HEADING.fullmatch(line)) and heading.group(2):
            level, heading_text = len(heading.group(1)), heading.group(2)
            if level == 1 and title is None:
                title = heading_text
            if level <= _SECTION_LEVELS:
                if offset == starts[-1][0]:
                    starts.pop()  # nothing before this heading: it replaces the empty section
                starts.append((offset, heading_text))
        offset += len(line) + 1
    ends = [start for start, _ in starts[1:]] + [len(text)]
    sections = [Section(start, end, None, heading) for (start, heading), end in zip(starts, ends)]
    return LoadedDocument(path, "markdown", title or path.name, text, sections)


# ---------------------------------------------------------------------------------------- PDF

# PDFium may not be called from two threads at once, even for different documents.
_PDFIUM_LOCK = threading.Lock()
# PDFium marks a word hyphenated across a line break with U+FFFE (older builds: U+0002) and
# joins the line; dropping the mark gives back the whole word.
_PDF_HYPHEN_MARKS = dict.fromkeys(map(ord, "\ufffe\x02"))
_PDF_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _load_pdf(path: Path, max_chars: int) -> LoadedDocument:
    import pypdfium2 as pdfium

    with _PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(path)
        except pdfium.PdfiumError as e:
            raise _pdf_open_error(path, e.err_code) from None
        try:
            title = (pdf.get_metadata_value("Title") or "").strip()
            num_pages = len(pdf)
            parts, total = [], 0
            for index in range(num_pages):
                text = _pdf_page_text(pdf, index, path)
                total += len(text) + len(_PARAGRAPH_BREAK) if text else 0
                if total > max_chars + len(_PARAGRAPH_BREAK):
                    raise _too_large(path, max_chars)
                parts.append(_Part(text, page=index + 1))
        finally:
            pdf.close()
    if num_pages == 0:
        raise _error(EmptyDocument, path, "the PDF has no pages")
    if not any(part.text for part in parts):
        raise _error(EmptyDocument, path, "no text layer; scanned PDFs need OCR, which Folio does not do")
    text, sections = _assemble(parts)
    return LoadedDocument(path, "pdf", title or path.name, text, sections, num_pages)


def _pdf_page_text(pdf, index: int, path: Path) -> str:
    import pypdfium2 as pdfium

    try:
        page = pdf.get_page(index)
        try:
            textpage = page.get_textpage()
            try:
                raw = textpage.get_text_range()
            finally:
                textpage.close()
        finally:
            page.close()
    except pdfium.PdfiumError:
        raise _error(CorruptDocument, path, f"page {index + 1} is damaged and cannot be read") from None
    text = _PDF_CONTROL.sub(" ", raw.translate(_PDF_HYPHEN_MARKS).replace("\r\n", "\n"))
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def _pdf_open_error(path: Path, err_code: int | None) -> DocumentError:
    import pypdfium2.raw as pdfium_c

    if err_code == pdfium_c.FPDF_ERR_PASSWORD:
        return _error(CorruptDocument, path, "the PDF is password-protected; save an unprotected copy to add it")
    if err_code == pdfium_c.FPDF_ERR_SECURITY:
        return _error(CorruptDocument, path, "the PDF is password-protected with an encryption Folio cannot open")
    if err_code == pdfium_c.FPDF_ERR_FILE:
        return _error(MissingDocument, path, "the file could not be opened (moved, deleted, or no permission?)")
    return _error(CorruptDocument, path, "the file is damaged or not a PDF")


# --------------------------------------------------------------------------------------- DOCX

def _load_docx(path: Path, max_chars: int) -> LoadedDocument:
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from lxml.etree import XMLSyntaxError

    with path.open("rb") as f:
        try:
            document = docx.Document(f)
        except (zipfile.BadZipFile, KeyError, ValueError, zlib.error, EOFError, PackageNotFoundError, XMLSyntaxError):
            raise _error(CorruptDocument, path, "the file is damaged or not a Word (.docx) document") from None
    parts, first_heading = [_Part("")], None
    blocks: list[str] = []
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            block = _docx_table_text(item)
        else:
            block = item.text.strip()
            style = item.style.name if item.style is not None else None
            if block and style and (style.startswith("Heading") or style == "Title"):
                parts[-1].text = _PARAGRAPH_BREAK.join(blocks)
                parts.append(_Part("", title=_collapse(block)))
                blocks = []
                first_heading = first_heading or parts[-1].title
        if block:
            blocks.append(block)
    parts[-1].text = _PARAGRAPH_BREAK.join(blocks)
    text, sections = _assemble([part for part in parts if part.text])
    title = (document.core_properties.title or "").strip() or first_heading or path.name
    return LoadedDocument(path, "docx", title, text, sections)


def _docx_table_text(table) -> str:
    """One line per row, cells joined by " | "; a cell merged across columns appears once."""
    lines = []
    for row in table.rows:
        cells = row.cells
        texts = [_collapse(cell.text) for i, cell in enumerate(cells) if i == 0 or cell is not cells[i - 1]]
        if any(texts):
            lines.append(" | ".join(texts))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- HTML

_HTML_DROP = frozenset({"script", "style", "nav", "noscript", "head", "title", "template"})
_HTML_SECTION_HEADINGS = frozenset({"h1", "h2", "h3"})
_HTML_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "dialog", "div",
    "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h4", "h5", "h6", "header",
    "hr", "html", "legend", "li", "main", "ol", "p", "section", "summary", "table", "tbody",
    "tfoot", "thead", "tr", "ul",
})
_HTML_TIGHT = frozenset({"li", "tr", "dt", "dd"})  # consecutive rows and list items are not spaced apart
_WHITESPACE = re.compile(r"\s+")


@dataclass
class _HtmlSection:
    title: str | None
    blocks: list[tuple[str, bool]] = field(default_factory=list)  # (text, tight)

    def text(self) -> str:
        out = []
        for i, (block, tight) in enumerate(self.blocks):
            if i:
                out.append("\n" if tight and self.blocks[i - 1][1] else _PARAGRAPH_BREAK)
            out.append(block)
        return "".join(out)


class _HtmlText:
    """Walks a parsed page into readable paragraphs, starting a new section at each h1-h3.

    Inline text runs are joined and their whitespace collapsed; block elements end paragraphs;
    <pre> keeps its layout; table cells are joined with " | " and list items get a "- ".
    """

    def __init__(self) -> None:
        self.sections = [_HtmlSection(None)]
        self.line: list[str] = []
        self.prefix = ""

    def walk(self, root) -> list[_Part]:
        from bs4 import NavigableString, Tag
        from bs4.element import PreformattedString

        stack = [(root, False)]  # (node, leaving): iterative, so deep pages cannot overflow the stack
        while stack:
            node, leaving = stack.pop()
            if leaving:
                if node.name in _HTML_BLOCKS:
                    self.flush(tight=node.name in _HTML_TIGHT)
            elif isinstance(node, NavigableString):
                if not isinstance(node, PreformattedString):  # comments, doctypes, CDATA
                    self.line.append(_WHITESPACE.sub(" ", node))  # "\n" is kept for <br>
            elif isinstance(node, Tag) and node.name not in _HTML_DROP:
                self.enter(node, stack)
        self.flush()
        return [_Part(section.text(), title=section.title) for section in self.sections]

    def enter(self, tag, stack: list) -> None:
        name = tag.name
        if name in _HTML_SECTION_HEADINGS:
            self.flush()
            heading = _collapse(tag.get_text(" "))
            if heading:
                self.sections.append(_HtmlSection(heading, [(heading, False)]))
            return
        if name == "pre":
            self.flush()
            self.add(tag.get_text().strip("\n").rstrip(), tight=False)
            return
        if name == "br":
            self.line.append("\n")
            return
        if name in ("td", "th") and "".join(self.line).strip():
            self.line.append(" | ")
        if name in _HTML_BLOCKS:
            self.flush()
        if name == "li":
            self.prefix = "- "
        stack.append((tag, True))
        stack.extend((child, False) for child in reversed(tag.contents))

    def flush(self, tight: bool = False) -> None:
        lines = (_collapse(line) for line in "".join(self.line).split("\n"))
        self.line = []
        text = "\n".join(line for line in lines if line)
        if text:
            self.add(self.prefix + text, tight)
            self.prefix = ""

    def add(self, text: str, tight: bool) -> None:
        if text:
            self.sections[-1].blocks.append((text, tight))


def _parse_html(data: bytes):
    from bs4 import BeautifulSoup

    return BeautifulSoup(data, "html.parser")


def _html_title(soup) -> str | None:
    for tag in (soup.title, soup.find("h1")):
        if tag is not None and (text := _collapse(tag.get_text(" "))):
            return text
    return None


def _load_html(path: Path, max_chars: int) -> LoadedDocument:
    if path.stat().st_size > _MAX_BYTES_PER_CHAR * max_chars:  # parsed whole: refuse before reading
        raise _too_large(path, max_chars)
    soup = _parse_html(path.read_bytes())
    parts = [part for part in _HtmlText().walk(soup) if part.text]
    text, sections = _assemble(parts)
    return LoadedDocument(path, "html", _html_title(soup) or path.name, text, sections)


# --------------------------------------------------------------------------------------- EPUB

_EPUB_CONTAINER = "META-INF/container.xml"
_EPUB_HTML_TYPES = frozenset({"application/xhtml+xml", "text/html"})
# what reading a damaged zip member can raise: bad CRC, bad deflate data, cut short, odd compression
_ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


def _load_epub(path: Path, max_chars: int) -> LoadedDocument:
    try:
        book = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise _error(CorruptDocument, path, "the file is damaged or not an EPUB (not a zip archive)") from None
    with book:
        container = _epub_xml(book, _EPUB_CONTAINER, path)
        rootfile = container.find(".//{*}rootfile")
        opf_name = rootfile.get("full-path") if rootfile is not None else None
        if not opf_name:
            raise _error(CorruptDocument, path, f"the EPUB is damaged: {_EPUB_CONTAINER} names no package file")
        package = _epub_xml(book, opf_name, path)
        chapters, total = [], 0
        for name in _epub_spine(package, posixpath.dirname(opf_name)):
            if name not in book.NameToInfo:
                continue  # a missing chapter should not cost the user the rest of the book
            soup = _parse_html(_epub_read(book, name, path))
            sections = _HtmlText().walk(soup)
            text, _ = _assemble([section for section in sections if section.text])
            total += len(text) + len(_PARAGRAPH_BREAK) if text else 0
            if total > max_chars + len(_PARAGRAPH_BREAK):
                raise _too_large(path, max_chars)
            chapter_title = next((s.title for s in sections if s.title), None) or _html_title(soup)
            chapters.append(_Part(text, title=chapter_title))
    text, sections = _assemble([chapter for chapter in chapters if chapter.text])
    title_tag = package.find(".//{*}metadata/{*}title")
    title = _collapse(title_tag.text or "") if title_tag is not None else ""
    return LoadedDocument(path, "epub", title or path.name, text, sections)


def _epub_read(book: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        return book.read(name)
    except KeyError:
        raise _error(CorruptDocument, path, f"the EPUB is damaged: {name} is missing") from None
    except _ZIP_READ_ERRORS:
        raise _error(CorruptDocument, path, f"the EPUB is damaged: {name} cannot be read") from None


def _epub_xml(book: zipfile.ZipFile, name: str, path: Path) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(_epub_read(book, name, path))
    except ElementTree.ParseError:
        raise _error(CorruptDocument, path, f"the EPUB is damaged: {name} is not valid XML") from None


def _epub_spine(package: ElementTree.Element, base: str) -> list[str]:
    """Zip member names of the book's (X)HTML pages, in reading order."""
    manifest = {item.get("id"): item for item in package.iterfind(".//{*}manifest/{*}item")}
    names = []
    for ref in package.iterfind(".//{*}spine/{*}itemref"):
        item = manifest.get(ref.get("idref"))
        if item is None or item.get("media-type") not in _EPUB_HTML_TYPES or not item.get("href"):
            continue
        href = unquote(item.get("href").split("#", 1)[0])
        names.append(posixpath.normpath(posixpath.join(base, href)))
    return names


_LOADERS: dict[str, Callable[[Path, int], LoadedDocument]] = {
    "text": _load_plain("text"),
    "code": _load_plain("code"),
    "markdown": _load_markdown,
    "pdf": _load_pdf,
    "docx": _load_docx,
    "html": _load_html,
    "epub": _load_epub,
}
