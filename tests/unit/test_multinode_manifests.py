"""Manifests that stay correct on any number of nodes: local-pv pinned to the node with the data,
the app tier spread over nodes (component spread-app), and the shared-storage component for
clusters with a ReadWriteMany StorageClass (rendered and schema-validated; no RWX provisioner runs
on this machine)."""
from __future__ import annotations

import kubernetes_validate
import pytest

from twotier.errors import UserError
from twotier.ops import render as manifests
from twotier.ops import storagenode
from twotier.settings import Settings

SETTINGS = Settings()
REFS = {name: f"localhost:5000/{name}:0123456789ab" for name in ("first-app", "sto-img", "api-img", "loader")}


def render(stage, overlay=""):
    return manifests.render_stage(SETTINGS, stage, images=REFS, overlay=overlay)


def by_kind(objs, kind, name):
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


@pytest.mark.parametrize("overlay", ["spread-app", "shared-storage", "spread-app,shared-storage,internal-storage"])
@pytest.mark.parametrize("stage", ["storage", "full"])
def test_components_validate_strictly_against_kubernetes_1_34(stage, overlay):
    for obj in render(stage, overlay):
        kubernetes_validate.validate(obj, "1.34", strict=True)


@pytest.mark.parametrize("stage", ["storage", "full"])
def test_local_pv_is_pinned_to_one_node_by_hostname(stage):
    pv = by_kind(render(stage), "PersistentVolume", "local-pv")
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In",
                                            "values": ["twotier-node"]}]}]
    assert pv["spec"]["hostPath"] == {"path": "/var/lib/twotier/kubetestpv", "type": "DirectoryOrCreate"}


def test_pin_rewrites_only_local_pv():
    objs = storagenode.pin(render("full"), "worker-7")
    assert storagenode.pinned_node(by_kind(objs, "PersistentVolume", "local-pv")) == "worker-7"
    assert storagenode.pin(render("hello"), "worker-7") == render("hello")


class FakeCluster:
    def __init__(self, nodes, pv_node=None):
        self.nodes = nodes
        self.pv = None if pv_node is None else by_kind(storagenode.pin(render("storage"), pv_node),
                                                       "PersistentVolume", "local-pv")

    def get(self, api_version, kind, name, namespace=None):
        assert (api_version, kind, name) == ("v1", "PersistentVolume", "local-pv")
        return self.pv

    def list(self, api_version, kind, **_):
        assert (api_version, kind) == ("v1", "Node")
        return [{"metadata": {"name": n}, "spec": {"unschedulable": not sched},
                 "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
                for n, ready, sched in self.nodes]


def test_an_existing_volume_keeps_its_node():
    cluster = FakeCluster([("a", True, True), ("b", True, True)], pv_node="b")
    assert storagenode.choose(cluster, render("full")) == "b"


def test_a_setting_that_contradicts_the_existing_volume_is_refused():
    cluster = FakeCluster([("a", True, True), ("b", True, True)], pv_node="b")
    with pytest.raises(UserError, match="pinned to node b"):
        storagenode.choose(cluster, render("full"), setting="a")


def test_the_setting_chooses_at_first_deploy_and_must_name_a_node():
    cluster = FakeCluster([("twotier-node", True, True), ("twotier-node2", True, True)])
    assert storagenode.choose(cluster, render("full"), setting="twotier-node2") == "twotier-node2"
    with pytest.raises(UserError, match="not a node"):
        storagenode.choose(cluster, render("full"), setting="nope")


def test_default_is_the_manifest_node_if_present_else_first_ready_schedulable():
    local = FakeCluster([("twotier-node2", True, True), ("twotier-node", True, True)])
    assert storagenode.choose(local, render("full")) == "twotier-node"
    kind = FakeCluster([("kind-control-plane", True, False), ("kind-worker", False, True), ("kind-worker2", True, True)])
    assert storagenode.choose(kind, render("full")) == "kind-worker2"
    with pytest.raises(UserError, match="no Ready"):
        storagenode.choose(FakeCluster([("x", False, True)]), render("full"))


def test_stages_without_local_pv_need_no_node():
    assert storagenode.choose(FakeCluster([]), render("hello")) is None
    assert storagenode.choose(FakeCluster([]), render("full", "shared-storage")) is None


def test_spread_app_runs_two_app_replicas_on_different_nodes():
    objs = render("full", "spread-app")
    api = by_kind(objs, "Deployment", "api-dep")
    assert api["spec"]["replicas"] == 2
    assert api["spec"]["template"]["spec"]["topologySpreadConstraints"] == [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
        "nodeTaintsPolicy": "Honor", "labelSelector": {"matchLabels": {"run": "api-app"}}}]
    assert by_kind(objs, "Deployment", "sto-dep") == by_kind(render("full"), "Deployment", "sto-dep")


def test_shared_storage_claims_rwx_from_the_configured_class_instead_of_local_pv():
    objs = render("full", "shared-storage")
    assert not [o for o in objs if o["kind"] == "PersistentVolume"]
    assert not [o for o in objs if o["kind"] == "ConfigMap"]     # the class setting is local-config
    pvc = by_kind(objs, "PersistentVolumeClaim", "sto-pvc")
    assert pvc["spec"]["storageClassName"] == "nfs-csi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    dep = by_kind(objs, "Deployment", "sto-dep")
    assert dep["spec"]["template"]["spec"]["volumes"][0] == {"name": "sto-app-pv",
                                                             "persistentVolumeClaim": {"claimName": "sto-pvc"}}
    kinds = [o["kind"] for o in objs]
    assert kinds.index("PersistentVolumeClaim") < kinds.index("Deployment")  # still claim before workloads
