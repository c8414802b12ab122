"""Port-forward access on a kind cluster (`invoke cluster.up --provider kind`, docs/kind.md): `invoke
up` with access port-forward passes, and both tiers roll under steady load through the project's
forwards (twotier.kube.portforward) with 0 failed requests; the forwards answer once the old pods
are gone. kind's API server, kubelet and containerd carry the streams here, not the local cluster's.

Self-contained (no fixture of conftest.py is used), like tests/e2e/test_kind.py, so it can run
alone without touching the local cluster: `pytest --noconftest tests/e2e/test_kind_portforward.py`.
It makes a one-node kind cluster and removes it at the end.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.portforward import full_tiers, roll_under_load, tier_pods
from localcluster.kind import provider as kind

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]


def invoke(*args: str, env: dict | None = None, timeout: float = 1200) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "INVOKE_TWOTIER_BASE_IMAGE": "local", **(env or {})}
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=full_env, capture_output=True,
                         text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    print(f"$ invoke {' '.join(args)}  ({time.monotonic() - start:.1f}s, rc={res.returncode})")
    print(res.stdout[-4000:], res.stderr[-4000:])
    assert res.returncode == 0, f"invoke {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def kind_env():
    """A one-node kind cluster; the settings that point the tasks at it, with access port-forward."""
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("dockerd is not running: `invoke cluster.up` starts it", pytrace=False)
    invoke("cluster.up", "--provider", "kind", "--nodes", "1")
    try:
        yield {**kind.settings_env(1), "INVOKE_TWOTIER_ACCESS": "port-forward"}
    finally:
        invoke("cluster.down", "--provider", "kind")


def test_both_tiers_roll_under_load_through_the_forwards_on_kind(kind_env, monkeypatch):
    from twotier import settings as settingsmod
    from twotier.kube.portforward import forwards
    from twotier.ops.cluster import connect

    up = invoke("up", env=kind_env)
    assert "host -> port-forward 127.0.0.1:" in up.stdout and "host -> node" not in up.stdout
    assert " 0 failed" in up.stdout
    for key, value in kind_env.items():
        monkeypatch.setenv(key, value)
    cluster = connect(settingsmod.load())
    assert cluster.kubeconfig == str(kind.KUBECONFIG)
    before = tier_pods(cluster)
    with forwards(cluster, {t.service: t.port for t in full_tiers()}) as fwd:
        run = roll_under_load(cluster, {t.name: fwd[t.service].local_port for t in full_tiers()})
        used = {t.name: set(fwd[t.service].pods_used) for t in full_tiers()}
    print(f"kind: {run.requests} requests through the forwards during the rollout of both tiers and until the "
          f"old pods were gone, {run.failed} failed ({run.seconds:.0f} s); pods that took connections: {used}")
    assert run.requests > 20 * len(used)
    assert run.failures == []
    assert all(run.answering_after.values()), run.answering_after
    for tier, pods in used.items():
        assert pods - before, f"no pod started by the rollout took a connection to the {tier} tier: {pods}"
