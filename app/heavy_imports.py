"""The first import of torch, transformers and sentence-transformers happens in one thread at a time.

transformers' lazily built top-level module is not safe to import from two threads at once: when
the engine loader and the indexing worker start together (a file opened with Folio at launch),
Python's import-deadlock avoidance hands one of them a half-initialised `transformers`, and the
engine fails with "cannot import name 'AutoTokenizer'". Every background thread about to load a
model calls `ensure()` first; the first one imports, the others wait, later calls return at once.
"""
from __future__ import annotations

import threading

_lock = threading.Lock()
_imported = False


def ensure() -> None:
    """Import the heavy libraries if no thread has yet. An import error propagates to the caller
    (which reports it) and the next caller tries again."""
    global _imported
    with _lock:
        if _imported:
            return
        import sentence_transformers  # noqa: F401  (imports torch and transformers)
        from transformers import AutoConfig, AutoTokenizer  # noqa: F401  (resolves the lazy attributes)
        _imported = True
