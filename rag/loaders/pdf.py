"""PDF through PDFium (pypdfium2): one section per page, text counted page by page."""
from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

from rag.loaders.base import (
    PARAGRAPH_BREAK,
    CorruptDocument,
    DocumentError,
    EmptyDocument,
    LoadedDocument,
    MissingDocument,
    Part,
    TextBudget,
    assemble,
    error,
    name_title,
)

# PDFium may not be called from two threads at once, even for different documents.
_PDFIUM_LOCK = threading.Lock()
# PDFium marks a word hyphenated across a line break with U+FFFE (older builds: U+0002) and
# joins the line; dropping the mark gives back the whole word.
_PDF_HYPHEN_MARKS = dict.fromkeys(map(ord, "\ufffe\x02"))
_PDF_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def load_pdf(path: Path, max_chars: int, progress: Callable[[int, int], None] | None = None) -> LoadedDocument:
    """`progress(pages_read, num_pages)` after each page: a long PDF takes seconds to read."""
    import pypdfium2 as pdfium

    budget = TextBudget(path, max_chars)
    with _PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(path)
        except pdfium.PdfiumError as e:
            raise _open_error(path, e.err_code) from None
        try:
            title = (pdf.get_metadata_value("Title") or "").strip()
            num_pages = len(pdf)
            parts = []
            for index in range(num_pages):
                text = _page_text(pdf, index, path)
                if text:
                    budget.spend(len(text) + len(PARAGRAPH_BREAK))
                parts.append(Part(text, page=index + 1))
                if progress is not None:
                    progress(index + 1, num_pages)
        finally:
            pdf.close()
    if num_pages == 0:
        raise error(EmptyDocument, path, "the PDF has no pages")
    if not any(part.text for part in parts):
        raise error(EmptyDocument, path, "no text layer; scanned PDFs need OCR, which Folio does not do")
    text, sections = assemble(parts)
    return LoadedDocument(path, "pdf", title or name_title(path), text, sections, num_pages)


def _page_text(pdf, index: int, path: Path) -> str:
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
        raise error(CorruptDocument, path, f"page {index + 1} is damaged and cannot be read") from None
    text = _PDF_CONTROL.sub(" ", raw.translate(_PDF_HYPHEN_MARKS).replace("\r\n", "\n"))
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def _open_error(path: Path, err_code: int | None) -> DocumentError:
    import pypdfium2.raw as pdfium_c

    if err_code == pdfium_c.FPDF_ERR_PASSWORD:
        return error(CorruptDocument, path, "the PDF is password-protected; save an unprotected copy to add it")
    if err_code == pdfium_c.FPDF_ERR_SECURITY:
        return error(CorruptDocument, path, "the PDF is password-protected with an encryption Folio cannot open")
    if err_code == pdfium_c.FPDF_ERR_FILE:
        return error(MissingDocument, path, "the file could not be opened (moved, deleted, or no permission?)")
    return error(CorruptDocument, path, "the file is damaged or not a PDF")
