"""Which item names are allowed: an allowlist, so no name can escape or confuse the directory.

A name is 1 to 128 characters from ``A-Z a-z 0-9 . _ -`` and starts with a letter, a digit or
``_``. This rules out ``.``/``..``, hidden files (our temporary files start with a dot, so no
item can ever be, or collide with, a temporary file), path separators, NUL and control
characters, whitespace, non-ASCII look-alikes, names that look like command-line options
(leading ``-``) and names longer than any filesystem allows.
"""
from __future__ import annotations

import re

MAX_NAME_LENGTH = 128
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", re.ASCII)
RULE = ("1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter, a digit or _")


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None
