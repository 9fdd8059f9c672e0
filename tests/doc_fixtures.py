"""Builders of small real documents (PDF, DOCX, EPUB, HTML) for tests and benchmarks.

Each builder writes a file that the real parsers read, and returns what a loader should get back,
so a test can compare extracted text with what was written without guessing at layout.
"""
from __future__ import annotations

import io
import zipfile
from html import escape
from pathlib import Path

from rag.eval.pdf_maker import make_pdf, pdf_bytes, pdf_lines  # noqa: F401  (re-exported for the tests)


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
