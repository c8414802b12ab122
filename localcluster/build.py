"""Build the cluster's binaries once (build-binaries.sh), readable on a cold start.

A cold build is tens of minutes of `go: downloading` and compiler output. A person needs to know
what is happening and roughly for how long, so each component gets a line when it starts (with
the duration measured on the reference machine), the script's few phase lines, and a line with
the time it took. Everything the build prints goes to one log file per component, and a failure
names that file and shows its last lines.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from localcluster import layout as L
from localcluster import lock
from localcluster.errors import ClusterError

# Script argument and versions.env key of each component name.
SCRIPT_NAME = {"cri-tools": "critools"}
KNOWN = ("etcd", "containerd", "cri-tools", "coredns", "kubernetes", "tilt")

# Cold build times of v1.37.2's set measured on the reference machine (2 cores shared with other
# work, empty binary cache): docs/local-cluster.md, "Cold build times". Only a rough guide for the
# person waiting.
COLD_SECONDS = {"kubernetes": 475, "containerd": 122, "etcd": 33, "coredns": 213, "cri-tools": 63,
                "tilt": 534}

GO_FALLBACK = Path("/usr/local/go/bin")  # where go.dev's tarball installs it; often not on PATH


def rough(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"


def version(comp: str) -> str:
    return L.versions()[SCRIPT_NAME.get(comp, comp).upper() + "_VERSION"]


def log_path(comp: str) -> Path:
    return L.CACHE / "logs" / f"build-{comp}-{version(comp)}.log"


def missing(components) -> list[str]:
    return [c for c in components if not (L.bin_dir(c) / ".complete").exists()]


def go_env(environ=None, fallback: Path = GO_FALLBACK) -> dict:
    """The build's environment with Go reachable: PATH as is if `go` is on it, else with
    /usr/local/go/bin appended (as ./bootstrap.sh does). Raises when there is no Go at all."""
    env = dict(os.environ if environ is None else environ)
    path = env.get("PATH", "")
    if shutil.which("go", path=path):
        return env
    if (fallback / "go").is_file() and os.access(fallback / "go", os.X_OK):
        env["PATH"] = f"{path}{os.pathsep}{fallback}" if path else str(fallback)
        return env
    raise ClusterError("the Go toolchain was found neither on PATH nor in /usr/local/go/bin",
                       hint="install Go 1.24+ from https://go.dev/dl/ (Debian 12's golang-go is too old), "
                            "then run the command again")


def ensure(components, progress=print, script: Path | None = None, environ=None) -> None:
    """Build what is not cached yet, one build at a time per cache directory."""
    unknown = [c for c in components if c not in KNOWN]
    if unknown:
        raise ClusterError(f"unknown component(s): {', '.join(unknown)}",
                           hint="choose from: " + ", ".join(KNOWN))
    if not missing(components):
        return
    env = go_env(environ)
    with lock.hold(lock.build_lock_path(), "build", progress=progress) as fd:
        todo = missing(components)  # another build may have finished them while we waited
        for i, comp in enumerate(todo, 1):
            _build_one(comp, f"[{i}/{len(todo)}]", fd, env, progress, script or L.BUILD_SCRIPT)


def _build_one(comp: str, step: str, lock_fd: int, env: dict, progress, script: Path) -> None:
    log = log_path(comp)
    log.parent.mkdir(parents=True, exist_ok=True)
    progress(f"{step} building {comp} {version(comp)} from source, once (cold: about "
             f"{rough(COLD_SECONDS.get(comp, 60))} on 2 cores; full log: {log})")
    start = time.monotonic()
    child_env = {**env, "TWOTIER_BUILD_LOCK_FD": str(lock_fd),  # the script must not lock again
                 **L.versions()}  # the chosen release's versions (versions.py), over versions.env's
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", str(script), SCRIPT_NAME.get(comp, comp)], stdout=out,
                                stderr=subprocess.PIPE, text=True, env=child_env, pass_fds=(lock_fd,))
        for line in proc.stderr:
            out.write(line)
            out.flush()
            if line.startswith("[build ") and not line.rstrip().endswith(": done"):  # its phase lines; the rest is Go's noise
                progress(f"      {line.rstrip()}")
        code = proc.wait()
    took = time.monotonic() - start
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-12:]
        raise ClusterError(
            f"building {comp} {version(comp)} failed (exit {code}) after {rough(took)}; "
            f"the full log is {log}; its last lines:\n    " + "\n    ".join(tail),
            hint=f"read {log}; the Go module proxy (and for tilt the npm registry) must be reachable; "
                 "run the command again to retry")
    progress(f"{step} built {comp} {version(comp)} in {rough(took)}")


def main(argv: list[str]) -> int:
    """Build COMPONENT... with progress on stderr (localcluster/bin/tilt, on first use)."""
    import sys

    try:
        ensure(argv, progress=lambda m: print(m, file=sys.stderr, flush=True))
    except ClusterError as err:
        print(f"error: {err.message}" + (f"\nhint: {err.hint}" if err.hint else ""), file=sys.stderr)
        return 1
    return 0
