"""Text PDFs written from scratch (PDF 1.4, base-14 Helvetica, a correct xref), for the eval's
synthetic manuals on machines without real ones, and for the tests' PDF fixtures.

`make_pdf` returns each page's text as PDFium extracts it, so a caller can compare extracted text
with what was written without guessing at layout.
"""
from __future__ import annotations

import textwrap
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
