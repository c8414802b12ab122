"""Server-side apply (twotier.kube.apply): order, idempotence, dry run, NodePort conflicts, error translation."""
import copy

import pytest
from kubefake import LABEL, FakeCluster, seed_full_objects, service

from twotier.errors import UserError
from twotier.kube.apply import (
    apply_objects,
    comparable,
    diff_paths,
    nodeport_conflicts,
    ref,
)
from twotier.kube.client import ApiError


def kinds(objs):
    return [o["kind"] for o in objs]


# --- order -----------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["hello", "storage", "full"])
def test_deploy_applies_exactly_the_rendered_order(stage):
    """What `invoke render` prints is what deploy applies, in that order (a real kustomize render):
    volumes and claims before the Deployments that mount them."""
    from twotier.ops import render as manifests
    from twotier.settings import Settings

    objs = manifests.render_stage(Settings(), stage, images={})
    cluster = FakeCluster()
    apply_objects(cluster, objs, out=lambda s: None)
    assert [c[1:3] for c in cluster.calls if c[0] == "apply"] == [(o["kind"], o["metadata"]["name"]) for o in objs]
    k = kinds(objs)
    if "PersistentVolumeClaim" in k:
        assert k.index("PersistentVolume") < k.index("PersistentVolumeClaim") < k.index("Deployment")


def test_ref_like_kubectl():
    objs = {o["metadata"]["name"]: o for o in seed_full_objects()}
    assert ref(objs["sto-dep"]) == "deployment.apps/sto-dep"
    assert ref(objs["in-svc"]) == "service/in-svc"
    assert ref(objs["local-pv"]) == "persistentvolume/local-pv"
    assert ref(objs["sto-pdb"]) == "poddisruptionbudget.policy/sto-pdb"


# --- diffs -----------------------------------------------------------------------------------
def test_diff_paths_named_lists_and_scalars():
    old = {"spec": {"replicas": 2, "template": {"spec": {"containers": [
        {"name": "a", "image": "x:1", "env": [{"name": "E", "value": "1"}]}]}}}}
    new = copy.deepcopy(old)
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "x:2"
    new["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "F", "value": "2"})
    assert diff_paths(old, new) == ["spec.template.spec.containers[a].env[F]",
                                    "spec.template.spec.containers[a].image"]
    assert diff_paths(old, old) == []


def test_diff_paths_ignores_empty_vs_missing():
    assert diff_paths({"a": {}, "b": 1}, {"b": 1}) == []
    assert diff_paths({"ports": [1, 2]}, {"ports": [1]}) == ["ports"]


def test_comparable_drops_status_and_bookkeeping():
    obj = {"kind": "X", "metadata": {"name": "n", "resourceVersion": "5", "managedFields": [1],
                                     "generation": 3, "labels": {"a": "b"}}, "status": {"x": 1}}
    assert comparable(obj) == {"kind": "X", "metadata": {"name": "n", "labels": {"a": "b"}}}


# --- apply against the fake cluster -----------------------------------------------------------
def test_first_deploy_creates_second_changes_nothing():
    cluster, lines = FakeCluster(), []
    first = apply_objects(cluster, seed_full_objects(), out=lines.append)
    assert {c.action for c in first} == {"created"}
    assert lines[0] == "persistentvolume/local-pv created"
    versions = {k: o["metadata"]["resourceVersion"] for k, o in cluster.objects.items()}
    lines.clear()
    second = apply_objects(cluster, seed_full_objects(), out=lines.append)
    assert {c.action for c in second} == {"unchanged"}
    assert all(ln.endswith(" unchanged") for ln in lines)
    assert versions == {k: o["metadata"]["resourceVersion"] for k, o in cluster.objects.items()}


def test_apply_uses_server_side_apply_for_every_object_in_order():
    cluster = FakeCluster()
    apply_objects(cluster, seed_full_objects(), out=lambda s: None)
    applied = [c[1] for c in cluster.calls if c[0] == "apply"]
    assert applied == kinds(seed_full_objects())


def test_changed_image_reports_configured_with_the_field():
    cluster = FakeCluster()
    apply_objects(cluster, seed_full_objects(), out=lambda s: None)
    objs = seed_full_objects()
    objs[2]["spec"]["template"]["spec"]["containers"][0]["image"] = "localhost:5000/sto-img:new"
    lines = []
    changes = {c.ref: c for c in apply_objects(cluster, objs, out=lines.append)}
    dep = changes["deployment.apps/sto-dep"]
    assert dep.action == "configured"
    assert dep.fields == ["spec.template.spec.containers[sto-app].image"]
    assert "deployment.apps/sto-dep configured (spec.template.spec.containers[sto-app].image)" in lines
    assert changes["deployment.apps/api-dep"].action == "unchanged"


def test_dry_run_changes_nothing_and_says_what_would():
    cluster, lines = FakeCluster(), []
    changes = apply_objects(cluster, seed_full_objects(), dry_run=True, out=lines.append)
    assert cluster.objects == {}
    assert {c.action for c in changes} == {"would create"}
    assert all(ln.endswith("(server dry run)") for ln in lines)
    assert all(c[3] is True for c in cluster.calls if c[0] == "apply")

    apply_objects(cluster, seed_full_objects(), out=lambda s: None)
    before = copy.deepcopy(cluster.objects)
    objs = seed_full_objects()
    objs[4]["spec"]["replicas"] = 3
    changes = {c.ref: c for c in apply_objects(cluster, objs, dry_run=True, out=lambda s: None)}
    assert changes["deployment.apps/api-dep"].action == "would change"
    assert changes["deployment.apps/api-dep"].fields == ["spec.replicas"]
    assert changes["service/in-svc"].action == "unchanged"
    assert cluster.objects == before


def test_nothing_to_apply_is_an_error():
    with pytest.raises(UserError, match="nothing to apply"):
        apply_objects(FakeCluster(), [], out=lambda s: None)


# --- NodePort 31000: s-f-webapp (hello) vs in-svc (storage) -------------------------------------
def test_nodeport_conflict_between_stages_names_both_and_clean():
    cluster = FakeCluster()
    cluster.put(service("s-f-webapp", 5000, 31000, run="f-webapp"))
    with pytest.raises(UserError) as info:
        apply_objects(cluster, seed_full_objects(), out=lambda s: None)
    err = info.value
    assert "NodePort 31000" in err.message
    assert "in-svc" in err.message and "default/s-f-webapp" in err.message
    assert "invoke clean" in err.hint
    assert cluster.count("apply") == 0  # refused before changing anything


def test_nodeport_conflict_with_a_foreign_service_says_it_is_not_ours():
    cluster = FakeCluster()
    foreign = service("someone-else", 80, 31001)
    foreign["metadata"]["labels"] = {}
    foreign["metadata"]["namespace"] = "other"
    cluster.objects[("Service", "other", "someone-else")] = foreign
    with pytest.raises(UserError) as info:
        apply_objects(cluster, seed_full_objects(), out=lambda s: None)
    assert "other/someone-else" in info.value.message
    assert "not this project's" in info.value.hint


def test_same_service_keeping_its_nodeport_is_no_conflict():
    live = [dict(service("in-svc", 5000, 31000), metadata={"name": "in-svc", "namespace": "default"})]
    assert nodeport_conflicts(seed_full_objects(), live, "default") == []
    live[0]["metadata"]["namespace"] = "elsewhere"
    assert [c.port for c in nodeport_conflicts(seed_full_objects(), live, "default")] == [31000]


def test_api_port_allocated_error_becomes_clear_message():
    cluster = FakeCluster()
    cluster.reject[("Service", "default", "in-svc")] = ApiError(
        'apply Service in-svc: Service "in-svc" is invalid: spec.ports[0].nodePort: Invalid value: '
        "31000: provided port is already allocated (HTTP 422)", status=422)
    with pytest.raises(UserError) as info:
        apply_objects(cluster, seed_full_objects(), out=lambda s: None)
    assert "already allocated" in info.value.message
    assert "invoke clean" in info.value.hint


def test_immutable_field_error_points_at_clean():
    cluster = FakeCluster()
    cluster.reject[("PersistentVolume", None, "local-pv")] = ApiError(
        "PersistentVolume local-pv is invalid: spec.persistentvolumesource: Forbidden: "
        "spec.persistentvolumesource is immutable after creation", status=422)
    with pytest.raises(UserError, match="cannot be changed in place") as info:
        apply_objects(cluster, seed_full_objects(), out=lambda s: None)
    assert "invoke clean" in info.value.hint


def test_other_api_errors_pass_through_as_user_errors():
    cluster = FakeCluster()
    cluster.reject[("ConfigMap", "default", "cm")] = ApiError("apply ConfigMap cm: forbidden (HTTP 403)",
                                                             status=403)
    objs = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "labels": LABEL}}]
    with pytest.raises(UserError, match="forbidden"):
        apply_objects(cluster, objs, out=lambda s: None)
