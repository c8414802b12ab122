"""Fixtures for tests against the real local cluster (started by .ci/run or `invoke cluster.up`)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from twotier import localcluster


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
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"the local cluster's API server does not answer ({err}): run `invoke cluster.up`", pytrace=False)
    assert ready, "the local cluster's node is not Ready"
    os.environ["KUBECONFIG"] = str(localcluster.kubeconfig_path())
    return localcluster
