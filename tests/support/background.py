"""One way for a test or a benchmark to do something over and over while its block runs."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager


@contextmanager
def repeating(action, every: float, limit: float = 600.0, first_now: bool = True):
    """Call ACTION every EVERY seconds in a thread until the block ends (at most LIMIT seconds:
    a loop left behind by a failing test stops by itself); the first call at once, or after
    EVERY seconds when FIRST_NOW is off."""
    stop = threading.Event()

    def loop():
        deadline = time.monotonic() + limit
        if not first_now and stop.wait(every):
            return
        while time.monotonic() < deadline:
            action()
            if stop.wait(every):
                return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
