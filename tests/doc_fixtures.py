"""Builders of small real documents (PDF, DOCX, EPUB, HTML) for tests and benchmarks.

Each builder writes a file that the real parsers read, and returns what a loader should get back,
so a test can compare extracted text with what was written without guessing at layout.
"""
from __future__ import annotations

import io
import textwrap
import zipfile
from html import escape
from pathlib import Path

PDF_FONT_SIZE = 11
PDF_LEADING = 14          # points between baselines
PDF_MARGIN = 72           # points on every side
PDF_LINE_CHARS = 90       # wrap width; Helvetica 11pt fits about this many average chars in 468pt
PDF_PAGE_SIZE = (612, 792)  # US Letter; a page grows taller when its lines need more room


def pdf_lines(text: str, width: int = PDF_LINE_CHARS) -> list[str]:
    """The lines `make_pdf` draws for one page's text: runs of whitespace become one space, long
    lines wrap at `width` characters, blank lines are dropped (PDF text has no blank lines)."""
    lines = []
    for paragraph in text.split("\n"):
        lines += textwrap.wrap(" ".join(paragraph.split()), width=width)
    return lines


def pdf_bytes(pages: list[str], title: str | None = None) -> bytes:
    """A minimal PDF 1.4 with one page per string, drawn in base-14 Helvetica, with a correct xref.

    Text must be encodable in cp1252 (WinAnsiEncoding). An empty string makes a page with no text.
    """
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, filled in once the page objects are numbered
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Producer (Folio test fixtures)" + (b" /Title " + _pdf_string(title) if title else b"") + b" >>",
    ]
    page_ids = []
    for text in pages:
        lines = pdf_lines(text)
        height = max(PDF_PAGE_SIZE[1], 2 * PDF_MARGIN + PDF_LEADING * len(lines))
        ops = [f"BT /F1 {PDF_FONT_SIZE} Tf {PDF_LEADING} TL {PDF_MARGIN} {height - PDF_MARGIN} Td".encode()]
        ops += [_pdf_string(line) + b" Tj T*" for line in lines]
        content = b"\n".join(ops + [b"ET"]) if lines else b""
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Resources << /Font << /F1 3 0 R >> >>"
                       b" /Contents %d 0 R >>" % (PDF_PAGE_SIZE[0], height, len(objects)))
        page_ids.append(len(objects))
    kids = b" ".join(b"%d 0 R" % i for i in page_ids)
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids))

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 4 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref_at)
    return bytes(out)


def _pdf_string(text: str) -> bytes:
    raw = text.encode("cp1252")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def make_pdf(path: Path, pages: list[str], title: str | None = None) -> list[str]:
    """Write a text PDF; returns each page's text as PDFium extracts it (its lines joined by "\\n")."""
    Path(path).write_bytes(pdf_bytes(pages, title))
    return ["\n".join(pdf_lines(text)) for text in pages]


def make_encrypted_pdf(path: Path, password: str, pages: list[str] = ("Secret text.",)) -> None:
    """A PDF that needs `password` to open (pypdf's standard security handler)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes(list(pages)))))
    writer.encrypt(user_password=password, owner_password=password + "-owner")
    with open(path, "wb") as f:
        writer.write(f)


def make_docx(path: Path, paragraphs: list[str | tuple[str, str]], table_rows: list[list[str]] = (),
              *, table_at: int | None = None, title: str | None = None) -> None:
    """A Word document: `paragraphs` are plain strings or (style name, text) such as ("Heading 1", "Intro");
    the table (if any rows) goes before paragraph number `table_at` (default: after them all)."""
    import docx

    document = docx.Document()
    if title:
        document.core_properties.title = title
    table_at = len(paragraphs) if table_at is None else table_at
    for i, item in enumerate([*paragraphs, None]):
        if i == table_at and table_rows:
            table = document.add_table(rows=len(table_rows), cols=max(len(row) for row in table_rows))
            for cells, row in zip(table.rows, table_rows):
                for cell, text in zip(cells.cells, row):
                    cell.text = text
        if item is None:
            break
        style, text = item if isinstance(item, tuple) else (None, item)
        document.add_paragraph(text, style=style)
    document.save(str(path))


def make_html(path: Path, body: str, title: str | None = None, head: str = "") -> None:
    """An HTML page with `body` as its body markup; `head` is extra markup for <head> (styles, scripts)."""
    title_tag = f"<title>{escape(title)}</title>" if title is not None else ""
    Path(path).write_text(f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">{title_tag}{head}</head>\n'
                          f"<body>\n{body}\n</body>\n</html>\n", encoding="utf-8")


def make_epub(path: Path, chapters: list[tuple[str, str]], title: str = "A Test Book",
              *, with_container: bool = True) -> None:
    """An EPUB 3 whose chapters are (title, body markup); each chapter page opens with <h1>title</h1>.

    Chapters are written to the zip and listed in the manifest in *reverse* order, and only the
    spine gives reading order, so a reader that ignores the spine gets them backwards.
    """
    names = [f"text/chapter{i + 1:02d}.xhtml" for i in range(len(chapters))]
    manifest = "".join(f'<item id="c{i}" href="{names[i]}" media-type="application/xhtml+xml"/>'
                       for i in reversed(range(len(chapters))))
    spine = "".join(f'<itemref idref="c{i}"/>' for i in range(len(chapters)))
    opf = ('<?xml version="1.0" encoding="utf-8"?>\n'
           '<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">'
           '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
           f'<dc:identifier id="id">folio-test</dc:identifier><dc:title>{escape(title)}</dc:title>'
           '<dc:language>en</dc:language></metadata>'
           f"<manifest>{manifest}</manifest><spine>{spine}</spine></package>")
    container = ('<?xml version="1.0"?>\n'
                 '<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
                 '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
                 "</rootfiles></container>")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as book:
        book.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip")  # stored, first, as EPUB wants
        if with_container:
            book.writestr("META-INF/container.xml", container)
        book.writestr("OEBPS/content.opf", opf)
        for i in reversed(range(len(chapters))):
            chapter_title, body = chapters[i]
            book.writestr(f"OEBPS/{names[i]}",
                          '<?xml version="1.0" encoding="utf-8"?>\n'
                          '<html xmlns="http://www.w3.org/1999/xhtml"><head>'
                          f"<title>{escape(chapter_title)}</title></head>"
                          f"<body><h1>{escape(chapter_title)}</h1>{body}</body></html>")
