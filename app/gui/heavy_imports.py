"""The first import of chromadb, torch, transformers and sentence-transformers happens in one
thread at a time.

These libraries share dependencies (pydantic, tokenizers, torch) and some build their modules
lazily, which is not safe from two threads at once: when the engine loader, the library worker
and the indexing worker start together, Python's import-deadlock avoidance hands one of them a
half-initialised module ("cannot import name 'AutoTokenizer' from 'transformers'", or the same
from `pydantic._internal`). Every background thread about to use them calls `ensure()` first;
the first one imports them all, the others wait, later calls return at once.
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
        import chromadb  # noqa: F401  (imports pydantic)
        import sentence_transformers  # noqa: F401  (imports torch and transformers)
        from transformers import AutoConfig, AutoTokenizer  # noqa: F401  (resolves the lazy attributes)
        _imported = True
