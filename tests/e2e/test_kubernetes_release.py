"""The release the local cluster runs is the one chosen (versions.env's default, or
`invoke cluster.up --kubernetes v1.35.4`), the project works on it, and that is recorded for the
README's "Last validated on" line (localcluster/validated.py; .ci/run writes the line).

CI runs this file on both releases of the matrix: with the whole suite on the default, and on the
oldest supported minor with the seed walkthrough, the rolling update under load and `tilt ci`."""
from __future__ import annotations

import json

import pytest

from localcluster import layout as L
from localcluster import validated, versions
from tests.e2e.conftest import kubectl, kubectl_json, must


@pytest.fixture(scope="module")
def release(cluster):
    v = L.versions()
    assert versions.running().get("KUBERNETES_VERSION") == v["KUBERNETES_VERSION"], \
        "the cluster's state was made with another release than the one chosen: run `invoke cluster.up`"
    return v


def test_invoke_up_prints_17_pass_lines(release, nothing_deployed):
    out = must("up").stdout
    # smoke adds one line when it finds items stored before it (it puts them back at the end)
    passes = [ln for ln in out.splitlines() if ln.startswith("PASS") and "stored before smoke" not in ln]
    assert "FAIL" not in out and len(passes) == 17, out


def test_the_cluster_runs_the_chosen_release_and_it_is_recorded(release, tmp_path):
    """Last in this file: the record is written only when the release also ran `invoke up`."""
    version = json.loads(kubectl("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"] == release["KUBERNETES_VERSION"]
    assert version["clientVersion"]["gitVersion"] == release["KUBERNETES_VERSION"]  # the kubectl on PATH
    nodes = kubectl_json("get", "nodes")["items"]
    info = nodes[0]["status"]["nodeInfo"]
    assert {n["status"]["nodeInfo"]["kubeletVersion"] for n in nodes} == {release["KUBERNETES_VERSION"]}
    assert info["containerRuntimeVersion"] == f"containerd://{release['CONTAINERD_VERSION'].lstrip('v')}"
    path = validated.record(version["serverVersion"]["gitVersion"], info)
    rec = json.loads(path.read_text())
    assert rec["kubernetes"] == release["KUBERNETES_VERSION"] and rec["etcd"] == release["ETCD_VERSION"]
    print(f"validated: {validated.line([rec])} -> {path}")
