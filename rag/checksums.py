"""A file's SHA-256, read in 1 MiB pieces so a large file is never held whole: a document's
identity in the library, and the check on a converted embedder in its cache."""
from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
