"""cluster.up is idempotent; cluster.down leaves no process, interface, rule or mount behind."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

import localcluster
from localcluster import layout as L
from localcluster import netclean, procs
from tests.e2e.conftest import run_invoke

pytestmark = pytest.mark.cluster


def our_processes() -> list[str]:
    def ours(cmd: str) -> bool:
        return cmd.startswith(str(L.CACHE / "bin")) or str(L.RUN) in cmd or "docker-registry serve" in cmd
    return [f"{pid}: {cmd[:120]}" for pid, cmd in procs.find(ours)]


def leftovers() -> dict[str, list]:
    rules = []
    for table in ("nat", "filter", "mangle"):
        out = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        rules += [r for r in out.splitlines() if "KUBE-" in r or "CNI-" in r]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {
        "processes": our_processes(),
        "iptables": rules,
        "bridge": [L.BRIDGE] if f" {L.BRIDGE}:" in links else [],
        "veths": [ln for ln in links.splitlines() if f"master {L.BRIDGE}" in ln],
        "netns": [p.name for p in Path("/var/run/netns").glob("cni-*")] if Path("/var/run/netns").exists() else [],
        "mounts": netclean.mounts_under(L.STATE, L.RUN),
        "routes": netclean.cluster_routes(),
    }


def test_up_is_idempotent_and_fast_when_up(cluster):
    t0 = time.monotonic()
    res = run_invoke("cluster.up")
    assert res.returncode == 0, res.stderr
    assert "already up" in res.stdout
    assert time.monotonic() - t0 < 10


def test_down_leaves_nothing_then_up_again(cluster):
    res = run_invoke("cluster.down")
    assert res.returncode == 0, res.stdout + res.stderr
    left = leftovers()
    assert left == {k: [] for k in left}, left
    assert not L.STATE.exists()
    res = run_invoke("cluster.down")          # a second down is a no-op, not an error
    assert res.returncode == 0, res.stderr
    t0 = time.monotonic()
    res = run_invoke("cluster.up")
    assert res.returncode == 0, res.stdout + res.stderr
    assert localcluster.node_ready()
    print(f"warm cluster.up after down: {time.monotonic() - t0:.1f}s")
