"""Where the engine caches what it derives from models: GGUF metadata folders, KV blocks on disk.

`FOLIO_CACHE_DIR` overrides the platform's user cache folder. A module of its own, free of torch,
so that `folio cache` can find the folder without loading the engine.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("FOLIO_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs
    return Path(platformdirs.user_cache_dir("folio", appauthor=False))


def kv_cache_root() -> Path:
    """The default `disk_kv_dir`: one folder per model fingerprint inside."""
    return cache_root() / "kv"
