"""One way to wait for something: ``poll(check, timeout=..., what=...)``.

``check()`` returns a truthy value when done (``poll`` returns it) or a falsy one to go on; it may
raise to stop at once (a pod that crash-loops, a process that exited). ``on_wait(elapsed)`` is
called between tries (progress lines). The clock and sleep are parameters so waits are tested
without waiting.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from twotier.errors import UserError


class Timeout(UserError):
    """The wait ran out; the message says what was awaited and for how long."""


def poll(check: Callable, *, timeout: float, what: str, hint: str = "", interval: float = 1.0,
         on_wait: Callable[[float], None] | None = None, clock=time.monotonic, sleep=time.sleep):
    start = clock()
    while True:
        result = check()
        if result:
            return result
        elapsed = clock() - start
        if elapsed >= timeout:
            raise Timeout(f"{what}: not done after {timeout:.0f}s", hint)
        if on_wait is not None:
            on_wait(elapsed)
        sleep(interval)
