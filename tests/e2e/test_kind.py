"""`invoke cluster.up --provider kind` (issue 19, docs/kind.md): a kind cluster whose node image is
built here, then `invoke up` on it prints the 17 PASS lines, and `cluster.down --provider kind`
leaves no node or registry container and no `kind` network behind.

Self-contained (no fixture of conftest.py is used), so it can run alone, without touching the local
cluster: `pytest --noconftest tests/e2e/test_kind.py`. Under the whole e2e run the session fixtures
(the local cluster up, `invoke clean` on it) apply as for every module; this module only touches
the kind cluster, through its own kubeconfig.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localcluster import layout as L
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


def kubectl_json(*args: str):
    out = subprocess.run([str(L.kubectl_path()), "--kubeconfig", str(kind.KUBECONFIG), *args, "-o", "json"],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def docker_lines(*args: str) -> list[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.split()


@pytest.fixture(scope="module")
def kind_cluster():
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("dockerd is not running: `invoke cluster.up` starts it", pytrace=False)
    invoke("cluster.up", "--provider", "kind", "--nodes", "2")
    yield kind
    invoke("cluster.down", "--provider", "kind")


def test_nodes_ready_with_own_pod_subnets(kind_cluster):
    nodes = kubectl_json("get", "nodes")["items"]
    assert len(nodes) == 2
    for n in nodes:
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]), n["metadata"]["name"]
    assert len({n["spec"]["podCIDR"] for n in nodes}) == 2


def test_registry_advertised_and_no_default_storageclass(kind_cluster):
    cm = kubectl_json("-n", "kube-public", "get", "configmap", "local-registry-hosting")
    assert f'host: "{kind.REGISTRY}"' in cm["data"]["localRegistryHosting.v1"]
    classes = kubectl_json("get", "storageclass")["items"]
    assert not [c for c in classes if c["metadata"].get("annotations", {}).get(
        "storageclass.kubernetes.io/is-default-class") == "true"], "a default StorageClass would take sto-pvc"


def test_invoke_up_passes_on_kind(kind_cluster):
    # what `invoke cluster.env --provider kind` exports: the kind cluster's kubeconfig and registry; the
    # volume-owner overlay, since local-pv is a hostPath inside a node container, which `invoke up`'s
    # host-side preparation of the directory cannot reach; local-pv on the worker, since kind taints
    # its control-plane node when there are workers
    env = kind.settings_env()
    assert env["INVOKE_TWOTIER_STORAGE_NODE"] == f"{kind.CLUSTER}-worker"
    res = invoke("up", env=env)
    passes = [line for line in res.stdout.splitlines() if line.startswith("PASS")]
    assert len(passes) == 17, res.stdout[-3000:]


def test_down_leaves_nothing(kind_cluster):
    invoke("cluster.down", "--provider", "kind")
    assert not docker_lines("ps", "-aq", "--filter", f"label=io.x-k8s.kind.cluster={kind.CLUSTER}")
    assert not docker_lines("ps", "-aq", "--filter", f"label=io.x-k8s.kind.registry={kind.CLUSTER}")
    assert "kind" not in docker_lines("network", "ls", "--format", "{{.Name}}")
    invoke("cluster.up", "--provider", "kind", "--nodes", "2")  # the fixture's teardown removes it again
