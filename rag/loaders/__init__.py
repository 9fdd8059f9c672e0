"""Documents on disk -> their text, with page or section positions for citations.

`load_document(path)` reads plain text and source code, Markdown, PDF (pypdfium2), DOCX, HTML
and EPUB, one module each. Whatever a user can get wrong about a file (wrong type, damaged,
password-protected, empty, huge, gone) raises a `DocumentError` subclass whose message is one
line naming the file, fit to show them as is. Hostile files are bounded too: text is counted
while it is extracted, zip members are checked against their declared and real sizes while
they are read (`zipped`), XML may not declare entities (`xmlsafe`), and HTML is streamed, not
built into a tree (`html`).
"""
from __future__ import annotations

import logging
import stat
from collections.abc import Callable
from pathlib import Path

from rag.loaders.base import (
    MAX_TEXT_CHARS,
    CorruptDocument,
    DocumentError,
    DocumentTooLarge,
    EmptyDocument,
    LoadedDocument,
    MissingDocument,
    Section,
    UnsupportedDocument,
    error,
    too_large,
)
from rag.loaders.docx import load_docx
from rag.loaders.epub import load_epub
from rag.loaders.html import load_html
from rag.loaders.markdown import load_markdown
from rag.loaders.pdf import load_pdf
from rag.loaders.text import plain_loader
from rag.paths import display_name

__all__ = ["MAX_TEXT_CHARS", "NOT_A_REGULAR_FILE", "SUPPORTED_SUFFIXES", "CorruptDocument", "DocumentError",
           "DocumentTooLarge", "EmptyDocument", "LoadedDocument", "MissingDocument", "Section", "UnsupportedDocument",
           "is_supported", "load_document"]

log = logging.getLogger(__name__)

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
NOT_A_REGULAR_FILE = "not a regular file (a pipe, socket or device)"

_LOADERS: dict[str, Callable[[Path, int], LoadedDocument]] = {
    "text": plain_loader("text"),
    "code": plain_loader("code"),
    "markdown": load_markdown,
    "pdf": load_pdf,
    "docx": load_docx,
    "html": load_html,
    "epub": load_epub,
}


def is_supported(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


def load_document(path: str | Path, *, max_chars: int = MAX_TEXT_CHARS,
                  progress: Callable[[int, int], None] | None = None) -> LoadedDocument:
    """Read one file; raises a `DocumentError` subclass for anything wrong with the file itself.
    `progress(done, total)` reports pages as they are read, for the formats read page by page
    (PDF); the others are read in one go and report nothing."""
    path = Path(path)
    kind = _KIND_BY_SUFFIX.get(path.suffix.lower())
    if kind is None:
        problem = f"unsupported file type '{path.suffix}'" if path.suffix else "unsupported file type (no extension)"
        raise error(UnsupportedDocument, path, problem)
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise error(MissingDocument, path, "is a folder, not a file")
        if not stat.S_ISREG(mode):  # reading a pipe or /dev/zero would never end
            raise error(UnsupportedDocument, path, NOT_A_REGULAR_FILE)
        document = load_pdf(path, max_chars, progress) if kind == "pdf" else _LOADERS[kind](path, max_chars)
    except FileNotFoundError:
        raise error(MissingDocument, path, "file not found (moved or deleted?)") from None
    except PermissionError:
        raise error(MissingDocument, path, "permission denied") from None
    except OSError as e:
        raise error(MissingDocument, path, f"could not be read ({e.strerror or display_name(str(e))})") from None
    except DocumentError:
        raise
    except Exception as e:  # a parser choking on a damaged file we did not foresee: that file fails, not the batch
        log.warning("loading %s failed", path, exc_info=True)
        raise error(CorruptDocument, path, f"could not be read ({display_name(f'{type(e).__name__}: {e}')})") from e
    if len(document.text) > max_chars:
        raise too_large(path, max_chars)
    if not document.text.strip():
        raise error(EmptyDocument, path, "contains no text")
    return document
