"""A process tree's memory as its container would be charged, for tests and benchmarks."""
from __future__ import annotations

from contextlib import contextmanager

import psutil

from tests.support.background import repeating


def tree_pss(pid: int) -> int:
    """Bytes of a process and its children, shared pages counted once (proportional set size):
    close to what the container's cgroup is charged for them."""
    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return total


@contextmanager
def peak_pss(pid: int, every: float = 0.01):
    """Sample ``tree_pss(pid)`` while the block runs; yields a list whose one value is the peak."""
    peak = [tree_pss(pid)]

    def sample():
        peak[0] = max(peak[0], tree_pss(pid))

    with repeating(sample, every):
        yield peak


def junk_batch(size: int) -> bytes:
    """A batch body of SIZE bytes that costs the most once parsed: a long list of short strings."""
    return (b'{"create": [' + b'"ab",' * (size // 5))[:size - 6] + b'"ab"]}'
