"""Small glue between Invoke tasks and the machinery modules."""
from __future__ import annotations

import functools
import sys

from invoke.exceptions import Exit

from twotier.errors import UserError


def friendly(func):
    """Turn a UserError (or Ctrl-C) raised by a task into a clear message and exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as err:
            msg = f"error: {err.message}"
            if err.hint:
                msg += f"\nhint: {err.hint}"
            raise Exit(msg, code=err.code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise Exit(code=130) from None

    return wrapper
