"""Plain-text and Markdown tables: the one formatter for status, benchmarks and cluster output."""
from __future__ import annotations


def table(headers, rows, *, right: bool = False, gap: int = 2) -> str:
    """Columns padded to their widest cell, like kubectl's output (``right``: numbers aligned)."""
    cells = [[str(h) for h in headers]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    pad = str.rjust if right else str.ljust
    return "\n".join((" " * gap).join(pad(v, w) for v, w in zip(r, widths)).rstrip() for r in cells)


def markdown(headers, rows) -> str:
    """A GitHub-flavoured Markdown table (for the README and build/*.md reports)."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
