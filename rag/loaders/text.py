"""Plain text and source code: the encoding guessed, the text read block by block."""
from __future__ import annotations

import codecs
from pathlib import Path
from typing import BinaryIO

from rag.loaders.base import (
    CorruptDocument,
    EmptyDocument,
    LoadedDocument,
    Section,
    TextBudget,
    error,
    name_title,
    too_large,
)

MAX_BYTES_PER_CHAR = 4  # UTF-8 and UTF-16 never spend more than 4 bytes on a character
_SNIFF_BYTES = 8192
_READ_BLOCK = 1 << 20
_TEXT_CONTROL_BYTES = frozenset(b"\t\n\v\f\r\x1b")
_MAX_CONTROL_RATIO = 0.1


def read_text(path: Path, max_chars: int) -> str:
    """Decodes UTF-8 (BOM or not), UTF-16 with a BOM, else cp1252, else latin-1 (which cannot fail).

    The file's size alone refuses what must be too long; anything else is decoded block by block
    and given up as soon as it passes `max_chars`, so a huge file is never read whole.
    """
    size = path.stat().st_size
    if size > MAX_BYTES_PER_CHAR * max_chars:
        raise too_large(path, max_chars)
    if size == 0:
        raise error(EmptyDocument, path, "the file is empty")
    with path.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
        utf16 = head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        if _looks_binary(head.decode("utf-16", "replace") if utf16 else head):
            raise error(CorruptDocument, path, "looks like binary data, not text")
        *strict, last = ["utf-16"] if utf16 else ["utf-8-sig", "cp1252", "latin-1"]
        for encoding in strict:
            f.seek(0)
            try:
                return _unix_newlines(_decode_limited(f, encoding, "strict", TextBudget(path, max_chars)))
            except UnicodeDecodeError:
                pass
        f.seek(0)
        return _unix_newlines(_decode_limited(f, last, "replace", TextBudget(path, max_chars)))


def _unix_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _looks_binary(head: bytes | str) -> bool:
    codes = head if isinstance(head, bytes) else [ord(c) for c in head]
    if not codes:
        return False
    controls = sum(1 for c in codes if (c < 32 and c not in _TEXT_CONTROL_BYTES))
    return 0 in codes or controls / len(codes) > _MAX_CONTROL_RATIO


def _decode_limited(f: BinaryIO, encoding: str, errors: str, budget: TextBudget) -> str:
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    pieces = []
    while block := f.read(_READ_BLOCK):
        pieces.append(decoder.decode(block))
        budget.spend(len(pieces[-1]))
    pieces.append(decoder.decode(b"", final=True))
    return "".join(pieces)


def plain_loader(kind: str):
    """The loader of one plain kind ("text" or "code"): the whole file is one section."""
    def load(path: Path, max_chars: int) -> LoadedDocument:
        text = read_text(path, max_chars)
        return LoadedDocument(path, kind, name_title(path), text, [Section(0, len(text))])
    return load
