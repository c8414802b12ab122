"""`tilt` on the PATH `eval "$(invoke cluster.env)"` sets up, before the pinned Tilt is built:
localcluster/bin/tilt builds it on first use (the cluster builds' progress lines), then runs it."""
from __future__ import annotations

import subprocess

from localcluster import layout as L

SHIM = L.HERE / "bin" / "tilt"


def fake_tilt(cache, complete=True):
    d = cache / "bin" / f"tilt-{L.versions()['TILT_VERSION']}"
    d.mkdir(parents=True)
    (d / "tilt").write_text('#!/bin/sh\necho "pinned tilt: $*"\n')
    (d / "tilt").chmod(0o755)
    if complete:
        (d / ".complete").touch()
    return d


def test_a_built_tilt_is_run_with_the_arguments(tmp_path):
    fake_tilt(tmp_path)
    res = subprocess.run([str(SHIM), "up", "--", "--x=1"], capture_output=True, text=True, timeout=30,
                         env={"TWOTIER_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and res.stdout == "pinned tilt: up -- --x=1\n", res.stderr
    assert res.stderr == ""

