"""File names as people see them: one printable line, whatever bytes the name holds.

A file name may hold any byte but "/" and NUL. Python hands undecodable bytes over as lone
surrogates (PEP 383), which cannot be printed, written to SQLite or tokenized; a newline or an
escape sequence in a name breaks a terminal line or injects terminal commands; a bidi override
(U+202E) makes "gpj.exe" read as "exe.jpg". `display_name` escapes all of those, and leaves
every other character, accented and non-Latin ones included, as it is.
"""
from __future__ import annotations

import os
import re

# C0 and C1 controls (with DEL), Arabic letter mark, LRM/RLM, line and paragraph separators, bidi
# embeddings, overrides and isolates, and lone surrogates
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SURROGATE_ESCAPES = range(0xDC80, 0xDD00)  # os.fsdecode's stand-ins for the bytes 0x80-0xFF


def display_name(path: str | bytes | os.PathLike) -> str:
    """`path` (a whole path, a bare name, or a message that quotes one) as one line that is safe
    to print anywhere: undecodable bytes become \\xNN, control characters \\n, \\r, \\t or
    \\xNN, and bidi and other invisible layout controls \\uNNNN."""
    text = os.fsdecode(path)
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def _escape(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if code in _SURROGATE_ESCAPES:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
