"""Text from outside (file names, document text, model output) made safe to print or show.

A Linux file name may hold any byte but "/" and NUL: a newline or carriage return that breaks
the line it is printed on, an escape sequence the terminal obeys, a right-to-left override that
shows "gpj.exe" as "exe.jpg", or bytes that are not UTF-8 at all (Python hands those over as
lone surrogates, which a strict UTF-8 stream refuses to print). `printable` spells each of these
out as an escape ("\\n", "\\x1b", "\\u202e", "\\xff" for a raw byte) and leaves every other
character, accents and scripts included, as it is. The terminal and the window share it.
"""
from __future__ import annotations

import unicodedata

# Characters that reorder the text around them (Unicode's explicit bidirectional formatting).
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
ESCAPED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})  # controls, surrogates, line/paragraph separators
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str, keep: str = "") -> str:
    """`text` with every control, bidirectional override and undecodable byte escaped, except
    the characters in `keep` (e.g. "\\n\\t" for an answer of several lines)."""
    if text.isprintable():  # the common case: nothing to escape (all of the above are unprintable)
        return text
    return "".join(ch if ch in keep else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape): show the byte
        return f"\\x{code - 0xDC00:02x}"
    if ch in NAMED:
        return NAMED[ch]
    if ch in BIDI_CONTROLS or unicodedata.category(ch) in ESCAPED_CATEGORIES:
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch
