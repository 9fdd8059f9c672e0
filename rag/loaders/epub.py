"""EPUB books: the (X)HTML pages of the spine, in reading order, one section per chapter.

Every member is read through `zipped.Archive` (sizes checked, one unpacked-bytes budget for the
book) and every page streamed through the HTML reader with one text budget for the book, so a
small book that unpacks to gigabytes is refused after reading about as much as the budget allows.
"""
from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import unquote
from xml.etree import ElementTree

from rag.loaders.base import PARAGRAPH_BREAK, LoadedDocument, Part, TextBudget, assemble, collapse, name_title
from rag.loaders.html import read_html
from rag.loaders.zipped import Archive

_CONTAINER = "META-INF/container.xml"
_HTML_TYPES = frozenset({"application/xhtml+xml", "text/html"})


def load_epub(path: Path, max_chars: int) -> LoadedDocument:
    budget = TextBudget(path, max_chars)
    with Archive(path, max_chars, "EPUB") as book:
        container = book.tree(_CONTAINER)
        rootfile = container.find(".//{*}rootfile")
        opf_name = rootfile.get("full-path") if rootfile is not None else None
        if not opf_name:
            raise book.damaged(f"{_CONTAINER} names no package file")
        package = book.tree(opf_name)
        chapters = []
        for name in _spine(package, posixpath.dirname(opf_name)):
            if book.find(name) is None:
                continue  # a missing chapter should not cost the user the rest of the book
            parts, page_title = read_html(lambda name=name: book.stream(name), budget)
            text, _ = assemble(parts)
            if text:
                budget.spend(len(PARAGRAPH_BREAK))
                chapter_title = next((part.title for part in parts if part.title), None) or page_title
                chapters.append(Part(text, title=chapter_title))
    text, sections = assemble(chapters)
    title_tag = package.find(".//{*}metadata/{*}title")
    title = collapse(title_tag.text or "") if title_tag is not None else ""
    return LoadedDocument(path, "epub", title or name_title(path), text, sections)


def _spine(package: ElementTree.Element, base: str) -> list[str]:
    """Zip member names of the book's (X)HTML pages, in reading order, each once."""
    manifest = {item.get("id"): item for item in package.iterfind(".//{*}manifest/{*}item")}
    names = []
    for ref in package.iterfind(".//{*}spine/{*}itemref"):
        item = manifest.get(ref.get("idref"))
        if item is None or item.get("media-type") not in _HTML_TYPES or not item.get("href"):
            continue
        href = unquote(item.get("href").split("#", 1)[0])
        names.append(posixpath.normpath(posixpath.join(base, href)))
    return list(dict.fromkeys(names))
