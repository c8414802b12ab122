"""Pod Security "restricted", judged by the API server's own PodSecurity admission: the pods of
every stage are admitted into a namespace that enforces it; the volume-owner component's root
init container is refused there (it says so in its file). Server-side dry runs: nothing runs."""
from __future__ import annotations

import json
import os

import kubernetes
import pytest

from twotier import lint
from twotier.ops.render import render_stage
from twotier.settings import Settings

NAMESPACE = f"twotier-pss-{os.getpid()}"


@pytest.fixture(scope="module")
def restricted_namespace(cluster):
    kubernetes.config.load_kube_config(str(cluster.kubeconfig_path()))
    core = kubernetes.client.CoreV1Api()
    core.create_namespace({"metadata": {"name": NAMESPACE, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"}}})
    try:
        yield core
    finally:
        core.delete_namespace(NAMESPACE)


def _pods(stage: str, overlay: str = "") -> list[dict]:
    """Each Deployment's pod template as a Pod (what the ReplicaSet would create)."""
    pods = []
    for obj in render_stage(Settings(), stage, images=lint.REFS, overlay=overlay):
        if obj["kind"] == "Deployment":
            template = obj["spec"]["template"]
            pods.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": obj["metadata"]["name"], "labels": template["metadata"]["labels"]},
                         "spec": template["spec"]})
    return pods


@pytest.mark.parametrize("stage", ["hello", "storage", "full"])
def test_every_stage_is_admitted_where_restricted_is_enforced(restricted_namespace, stage):
    pods = _pods(stage)
    assert pods
    for pod in pods:
        restricted_namespace.create_namespaced_pod(NAMESPACE, pod, dry_run="All")


def test_the_volume_owner_component_is_refused_there(restricted_namespace):
    (pod,) = [p for p in _pods("storage", "volume-owner") if p["metadata"]["name"] == "sto-dep"]
    with pytest.raises(kubernetes.client.ApiException) as refused:
        restricted_namespace.create_namespaced_pod(NAMESPACE, pod, dry_run="All")
    message = json.loads(refused.value.body)["message"]
    assert refused.value.status == 403 and 'violates PodSecurity "restricted' in message, message
    assert "storage-owner" in message
