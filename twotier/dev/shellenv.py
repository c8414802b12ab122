"""`eval "$(invoke cluster.env)"`: one line sets up a shell, like `minikube docker-env`.

It prints `export` lines: KUBECONFIG for the local cluster, and PATH with the project's .venv/bin
(invoke), the pinned kubectl and, once built, the pinned tilt in front. The values are printed in
full, computed from the caller's PATH with those directories moved to the front, so running it
twice gives the same PATH, and nothing depends on the cache's versioned directory names.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def venv_bin() -> Path | None:
    """The bin/ of the virtualenv running us (sys.prefix differs from the base one there)."""
    if sys.prefix == getattr(sys, "base_prefix", sys.prefix):
        return None
    return Path(sys.prefix) / "bin"


def env_lines(environ=None) -> list[str]:
    from localcluster import layout as L

    environ = os.environ if environ is None else environ
    front: list[str] = []
    notes: list[str] = []
    venv = venv_bin()
    if venv is not None:
        front.append(str(venv))
    kubectl = L.kubectl_path()
    if kubectl.exists():
        front.append(str(kubectl.parent))
    else:
        notes.append("# kubectl is not built yet: `invoke cluster.up` builds it")
    tilt = L.binary("tilt")
    if (tilt.parent / ".complete").exists():
        front.append(str(tilt.parent))
    else:  # localcluster/bin/tilt builds the pinned Tilt on first use, then runs it
        front.append(str(L.HERE / "bin"))
        notes.append("# tilt builds from source on its first use (once, about 6 min on 2 cores)")
    rest = [p for p in environ.get("PATH", "").split(os.pathsep) if p and p not in front]
    return [f"export KUBECONFIG={shlex.quote(str(L.KUBECONFIG))}",
            f"export PATH={shlex.quote(os.pathsep.join(front + rest))}", *notes]
