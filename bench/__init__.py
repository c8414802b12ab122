"""The benchmarks behind `invoke bench`: measurements of the product, kept apart from it (twotier/).

`report` runs every section into one report under build/ and regenerates the benchmark tables of
docs/benchmarks.md from it; `api`, `tilt`, `reload` and `cluster` hold the sections' own code.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from twotier.errors import UserError
from twotier.shape import ROOT


def invoke_task(*args: str, env: dict | None = None) -> float:
    """Run an invoke task as a user would; return its wall time in seconds."""
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    took = time.monotonic() - start
    if res.returncode != 0:
        raise UserError(f"`invoke {' '.join(args)}` failed during the benchmark:\n{(res.stdout + res.stderr)[-1500:]}")
    return took
