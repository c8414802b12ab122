"""cluster.up is idempotent; cluster.down leaves no process, interface, rule, route, mount or cgroup
behind, with one node or several (nodes 2..N have their own namespaces, veths and cgroups)."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

import localcluster
from localcluster import layout as L
from localcluster import netclean, procs
from localcluster import nodes as node_ops
from tests.e2e.conftest import run_invoke

pytestmark = pytest.mark.cluster


def our_processes() -> list[str]:
    def ours(cmd: str) -> bool:
        # kubectl is never started by cluster.up (a kubectl here is someone's `invoke render`)
        started = cmd.startswith(str(L.CACHE / "bin")) and not cmd.split()[0].endswith("/kubectl")
        return started or str(L.RUN) in cmd or "docker-registry serve" in cmd
    return [f"{pid}: {cmd[:120]}" for pid, cmd in procs.find(ours)]


def leftovers() -> dict[str, list]:
    rules = []
    for table in ("nat", "filter", "mangle"):
        out = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        rules += [r for r in out.splitlines() if "KUBE-" in r or "CNI-" in r or "TWOTIER-" in r]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {
        "processes": our_processes(),
        "iptables": rules,
        "bridge": [b for b in (L.BRIDGE, L.NODES_BRIDGE) if f" {b}:" in links],
        "veths": [ln for ln in links.splitlines() if f"master {L.BRIDGE}" in ln or f"master {L.NODES_BRIDGE}" in ln],
        "netns": [p.name for p in Path("/var/run/netns").glob("cni-*")] if Path("/var/run/netns").exists() else [],
        "mounts": netclean.mounts_under(L.STATE, L.RUN),
        "routes": netclean.cluster_routes() + node_ops.host_routes(),
        "cgroups": [str(d) for d in Path("/sys/fs/cgroup").glob(f"*/{L.NODE_NAME}*")],
    }


def test_up_is_idempotent_when_up(cluster):
    """A second cluster.up finds every component running and restarts none (its time is in
    docs/benchmarks.md, `invoke bench --only cluster`)."""
    before = localcluster.status_rows()
    res = run_invoke("cluster.up")
    assert res.returncode == 0, res.stderr
    assert "already up" in res.stdout
    assert localcluster.status_rows() == before   # the same processes (PIDs), all running


@pytest.mark.parametrize("nodes", [1, 3])
def test_down_leaves_nothing_then_up_again(cluster, nodes):
    res = run_invoke("cluster.up", "--nodes", str(nodes))
    assert res.returncode == 0, res.stdout + res.stderr
    assert localcluster.node_count() == nodes
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
    assert localcluster.node_ready() and localcluster.node_count() == 1
    print(f"warm cluster.up after down: {time.monotonic() - t0:.1f}s")
