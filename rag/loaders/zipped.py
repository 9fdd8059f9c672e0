"""Zip members (DOCX and EPUB are zip files) read without trusting what the zip says about them.

A zip bomb is a small file whose members unpack to gigabytes. Every member is checked before it
is opened against the size the zip directory declares for it, and again while it is streamed
against the bytes it really yields (zipfile also stops a member at its declared size, and a
member that holds more fails its CRC check and is refused as damaged): both must stay within one
budget of unpacked bytes for the whole document, and a member that unpacks to more than
`MAX_RATIO` times its packed size is refused once it passes `RATIO_GRACE`. Members are streamed
in blocks, never read whole, so the loader reading them also stops the moment its text budget
runs out.
"""
from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

from rag.loaders.base import CorruptDocument, DocumentError, DocumentTooLarge, error
from rag.loaders.xmlsafe import EndHandler, StartHandler, TextHandler, UnsafeXml, parse, parse_tree
from rag.paths import display_name

# Deflate packs text and markup 3 to 15 times; a member packed a hundred times over is repetition
# made to blow up (Apache POI refuses the same ratio in its ZipSecureFile).
MAX_RATIO = 100
RATIO_GRACE = 8 << 20        # any member may unpack to this much, however well it packs
MIN_UNPACKED = 64 << 20      # the least a document may unpack to in all...
UNPACKED_PER_CHAR = 8        # ...or this many bytes of markup per character of allowed text
_BLOCK = 1 << 16
# what reading a damaged zip member can raise: bad CRC, bad deflate data, cut short, odd compression
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError)


class Archive:
    """One open DOCX or EPUB: members are found by name and streamed through the budget."""

    def __init__(self, path: Path, max_chars: int, kind: str) -> None:
        self.path = path
        self.kind = kind  # "EPUB", "Word document": how messages name the file
        self.budget = max(MIN_UNPACKED, UNPACKED_PER_CHAR * max_chars)
        self.unpacked = 0
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, EOFError, ValueError):  # ValueError: a directory that lies about itself
            raise self.damaged("not a zip archive") from None
        self._by_lower_name = {info.filename.lower(): info for info in self._zip.infolist()}

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()

    def damaged(self, problem: str) -> DocumentError:
        return error(CorruptDocument, self.path, f"the {self.kind} is damaged: {problem}")

    def find(self, name: str) -> zipfile.ZipInfo | None:
        """The member called `name`; as in OPC and EPUB, names match whatever their case."""
        try:
            return self._zip.getinfo(name)
        except KeyError:
            return self._by_lower_name.get(name.lower())

    def tree(self, name: str) -> ElementTree.Element:
        """A small XML member (a manifest, relationships) as an element tree."""
        try:
            return parse_tree(self.stream(name))
        except UnsafeXml as e:
            raise self.damaged(f"{display_name(name)} {e}") from None

    def parse(self, name: str, start: StartHandler, end: EndHandler, data: TextHandler) -> None:
        """An XML member streamed through the handlers (see `xmlsafe.parse`)."""
        try:
            parse(self.stream(name), start, end, data)
        except UnsafeXml as e:
            raise self.damaged(f"{display_name(name)} {e}") from None

    def stream(self, name: str) -> Iterator[bytes]:
        """The member's bytes in blocks of at most `_BLOCK`, each counted before it is handed out."""
        info = self.find(name)
        if info is None:
            raise self.damaged(f"{display_name(name)} is missing")
        self._check(info, self.unpacked + info.file_size, info.file_size)  # what it declares
        yielded = 0
        try:
            with self._zip.open(info) as member:
                while block := member.read(_BLOCK):
                    yielded += len(block)
                    self._check(info, self.unpacked + len(block), yielded)  # what it really yields
                    self.unpacked += len(block)
                    yield block
        except _READ_ERRORS:
            raise self.damaged(f"{display_name(info.filename)} cannot be read") from None

    def _check(self, info: zipfile.ZipInfo, total: int, size: int) -> None:
        """`total` bytes unpacked from the whole document and `size` from this member are allowed."""
        name = display_name(info.filename)
        if total > self.budget:
            raise error(DocumentTooLarge, self.path, f"too large: {name} would unpack past the "
                                                     f"{self.budget >> 20:,} MiB Folio reads from one document")
        if size > RATIO_GRACE and size > MAX_RATIO * max(info.compress_size, 1):
            raise error(DocumentTooLarge, self.path, f"too large: {name} unpacks to {size:,} bytes from "
                                                     f"{info.compress_size:,}, over {MAX_RATIO} times its packed "
                                                     "size (a zip bomb?)")
