"""What the bench programs share for printing: target marks and plain-text tables."""
from __future__ import annotations


def mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns right-aligned to their widest cell, the first left-aligned."""
    cells = [header] + rows
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
