"""Fixtures for tests against the real local cluster (started by .ci/run or `invoke cluster.up`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import localcluster

REPO = Path(__file__).resolve().parents[2]


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
    res = subprocess.run([str(localcluster.kubectl_path()), "--kubeconfig", str(localcluster.kubeconfig_path()),
                          "--context", localcluster.L.CONTEXT, *args],
                         input=input, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {res.stderr}")
    return res.stdout


def kubectl_json(*args: str):
    return json.loads(kubectl(*args, "-o", "json"))


@pytest.fixture(scope="session")
def cluster():
    """The local cluster must be up: a missing cluster is a failure, never a skip."""
    if not localcluster.kubeconfig_path().exists():
        pytest.fail("the local cluster is not up: run `invoke cluster.up` (CI's .ci/run starts it)", pytrace=False)
    try:
        ready = localcluster.node_ready()
    except Exception as err:
        pytest.fail(f"the local cluster's API server does not answer ({err}): run `invoke cluster.up`", pytrace=False)
    assert ready, "the local cluster's node is not Ready"
    os.environ["KUBECONFIG"] = str(localcluster.kubeconfig_path())
    return localcluster


def run_invoke(*args, env=None, stdin=subprocess.DEVNULL, timeout=900) -> subprocess.CompletedProcess:
    """Run a project task as a user would (`invoke ARGS` in the repository); prints its output."""
    full_env = dict(os.environ)
    # No container registry is reachable here (nor in CI): images build on the local Debian base.
    full_env.setdefault("INVOKE_TWOTIER_BASE_IMAGE", "local")
    full_env.update(env or {})
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=full_env,
                         stdin=stdin, capture_output=True, text=True, timeout=timeout)
    res.seconds = time.monotonic() - start
    print(f"$ invoke {' '.join(args)}  ({res.seconds:.1f}s, rc={res.returncode})")
    print(res.stdout[-4000:], res.stderr[-4000:])
    return res


def must(*args, **kwargs) -> subprocess.CompletedProcess:
    res = run_invoke(*args, **kwargs)
    assert res.returncode == 0, f"invoke {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def node_ip(cluster):
    node = kubectl_json("get", "nodes")["items"][0]
    return next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")


@pytest.fixture(scope="module")
def clean_slate(cluster):
    """The module starts and ends with none of the project's objects in the cluster."""
    must("clean")
    yield
    run_invoke("clean")
