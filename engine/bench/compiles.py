"""Triton compiles that happen while a benchmark is timed: a step that compiles stalls for
seconds, so a figure taken across one measures the compiler, not the engine. The warm-ups are
meant to leave none; `counting_compiles` says whether they did, and which kernels compiled."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def counting_compiles() -> Iterator[list[str]]:
    """Within the block, the name of each Triton kernel compiled (none where Triton is absent)."""
    try:
        from triton import knobs
    except ImportError:
        yield []
        return
    names: list[str] = []
    before = knobs.runtime.jit_cache_hook

    def hook(*, fn, **_) -> bool:
        names.append(fn.name)
        return False  # compile as usual

    knobs.runtime.jit_cache_hook = hook
    try:
        yield names
    finally:
        knobs.runtime.jit_cache_hook = before
