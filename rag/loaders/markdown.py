"""Markdown: plain text whose #, ## and ### headings (outside code fences) start sections."""
from __future__ import annotations

import re
from pathlib import Path

from rag.loaders.base import LoadedDocument, Section, name_title
from rag.loaders.text import read_text

_ATX_HEADING = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_SECTION_LEVELS = 3  # headings #, ## and ### start sections (as h1-h3 do in HTML)


def load_markdown(path: Path, max_chars: int) -> LoadedDocument:
    text = read_text(path, max_chars)
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
    return LoadedDocument(path, "markdown", title or name_title(path), text, sections)
