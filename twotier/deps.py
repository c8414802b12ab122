"""The project's Python pins: each requirements*.in names what a tier or the host tooling needs,
pip-compile (pip-tools) resolves it with every transitive dependency into the requirements*.txt
next to it. The images and ./bootstrap.sh install only the compiled files.

Compiled without hashes, on purpose: Tilt's live update appends a plain `name==version` line to a
tier's requirements.txt and pip-installs it in the running container (tests/e2e/test_tilt_up.py),
which pip's hash-checking mode would refuse; every package is still pinned to one exact version.

Order matters: the tiers' runtime files first, then their dev extras (constrained by the runtime
pins, -c requirements.txt), then the host's requirements-dev.txt (constrained by all of them, so the
venv the tests run in has exactly the images' versions of Flask, granian, requests...).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twotier.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
TIERS = ("storage", "app", "hello")


def in_files(root: Path = ROOT) -> list[Path]:
    """Every .in file, in the order they must be compiled."""
    files = [root / "services" / t / "requirements.in" for t in TIERS]
    files += [root / "services" / t / "requirements-dev.in" for t in TIERS]
    files.append(root / "requirements-dev.in")
    return [f for f in files if f.exists()]


def compile_command(src: Path, upgrade: bool, packages: tuple[str, ...] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "piptools", "compile", "--quiet", "--strip-extras", "--allow-unsafe",
           "--no-emit-index-url", "--no-emit-find-links", "--newline=lf", "--output-file", src.with_suffix(".txt").name, src.name]
    if upgrade:
        cmd.append("--upgrade")
    for p in packages:
        cmd += ["--upgrade-package", p]
    return cmd


def compile_all(upgrade: bool, packages: tuple[str, ...] = (), root: Path = ROOT, progress=print) -> None:
    env = {**os.environ, "CUSTOM_COMPILE_COMMAND": "invoke deps.upgrade"}
    for src in in_files(root):
        rel = src.relative_to(root)
        progress(f"deps: {rel} -> {rel.with_suffix('.txt')}")
        res = subprocess.run(compile_command(src, upgrade, packages), cwd=src.parent, env=env,
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise UserError(f"pip-compile {rel} failed:\n{(res.stderr or res.stdout).strip()}",
                            "is pip-tools installed (./bootstrap.sh) and PyPI reachable?")
