"""Plain-text tables for status output."""
from __future__ import annotations


def table(headers: list[str], rows: list[tuple]) -> str:
    """Left-aligned columns separated by two spaces, like kubectl's output."""
    cells = [[str(h) for h in headers]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells)
