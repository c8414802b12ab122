"""`invoke clean`: order the finalizers allow, only the project's objects, waits, idempotent."""
import pytest
from kubefake import LABEL, Clock, FakeCluster, deployment, pod, seed_full_objects, service

from twotier.errors import UserError
from twotier.kube.cleanup import Target, clean, plan, targets_from
from twotier.ops.render import loader_pod
from twotier.settings import Settings


def hello_objects():
    return [deployment("f-webapp"), service("s-f-webapp", 5000, 31000, run="f-webapp")]


def all_targets(namespace="default"):
    objs = hello_objects() + seed_full_objects() + [loader_pod(Settings(namespace=namespace), "img")]
    return targets_from(objs, namespace)


def deployed(cluster):
    for obj in seed_full_objects() + [loader_pod(Settings(namespace="default"), "img")]:
        cluster.put(obj)
    cluster.put(pod("sto-dep-1", "sto-app"))
    cluster.put(pod("sto-dep-2", "sto-app"))
    cluster.put(pod("api-dep-1", "api-app"))


def test_targets_are_deduplicated_and_scoped():
    targets = targets_from(seed_full_objects() + seed_full_objects(), "ns1")
    assert len(targets) == len(seed_full_objects())
    pv = next(t for t in targets if t.kind == "PersistentVolume")
    assert pv.namespace is None
    dep = next(t for t in targets if t.name == "sto-dep")
    assert (dep.namespace, dep.selector) == ("ns1", "run=sto-app")


def test_plan_orders_phases_like_the_finalizers_need():
    phases = plan(all_targets())
    titles = [p[0] for p in phases]
    assert titles == ["workloads", "services", "policies and config", "volume claims", "volumes"]
    kinds = {p[0]: sorted({t.kind for t in p[1]}) for p in phases}
    assert kinds["workloads"] == ["Deployment", "Pod"]
    assert kinds["volume claims"] == ["PersistentVolumeClaim"]
    assert kinds["volumes"] == ["PersistentVolume"]
    waits = {p[0]: p[2] for p in phases}
    assert waits["workloads"] and waits["volume claims"] and waits["volumes"]


def test_clean_deletes_in_order_and_reports():
    cluster, clock, lines = FakeCluster(), Clock(), []
    deployed(cluster)
    summary = clean(cluster, all_targets(), timeout=60, out=lines.append, clock=clock, sleep=clock.sleep)
    deletes = [(c[1], c[2]) for c in cluster.calls if c[0] == "delete"]
    order = [k for k, _ in deletes]
    assert order.index("Deployment") < order.index("Service") < order.index("PersistentVolumeClaim") \
        < order.index("PersistentVolume")
    assert order.index("Pod") < order.index("Service")  # the loader goes with the workloads
    assert ("Service", "s-f-webapp") not in deletes  # hello isn't deployed: nothing to delete
    assert set(summary["absent"]) == {"deployment/f-webapp", "service/s-f-webapp"}
    assert len(summary["deleted"]) == len(seed_full_objects()) + 1
    assert lines[-1].startswith("clean: 8 objects removed")
    # nothing of the project left
    assert [k for k in cluster.objects if k[0] != "ReplicaSet"] == []


def test_workloads_deleted_in_foreground_and_never_stripped():
    cluster, clock = FakeCluster(), Clock()
    deployed(cluster)
    clean(cluster, all_targets(), timeout=60, out=lambda s: None, clock=clock, sleep=clock.sleep)
    props = {c[2]: c[3] for c in cluster.calls if c[0] == "delete"}
    assert props["sto-dep"] == "Foreground" and props["api-dep"] == "Foreground"
    assert props["sto-pvc"] == "Background"
    assert cluster.count("apply") == 0  # no patches: finalizers are never removed by us


def test_second_clean_is_a_no_op():
    cluster, clock = FakeCluster(), Clock()
    deployed(cluster)
    clean(cluster, all_targets(), timeout=60, out=lambda s: None, clock=clock, sleep=clock.sleep)
    cluster.calls.clear()
    lines = []
    summary = clean(cluster, all_targets(), timeout=60, out=lines.append, clock=clock, sleep=clock.sleep)
    assert summary["deleted"] == []
    assert cluster.count("delete") == 0
    assert lines == ["nothing to clean: none of the project's objects exist"]


def test_foreign_objects_with_our_names_are_left_alone():
    cluster, clock, lines = FakeCluster(), Clock(), []
    foreign = service("in-svc", 5000, 31000)
    foreign["metadata"]["labels"] = {"team": "other"}
    cluster.put(foreign)
    pv = seed_full_objects()[0]
    pv["metadata"]["labels"] = {}
    cluster.put(pv)
    summary = clean(cluster, all_targets(), timeout=60, out=lines.append, clock=clock, sleep=clock.sleep)
    assert cluster.count("delete") == 0
    assert set(summary["foreign"]) == {"service/in-svc", "persistentvolume/local-pv"}
    assert any("skip service/in-svc" in ln and "not the project's" in ln for ln in lines)
    assert cluster.exists("Service", "in-svc") and cluster.exists("PersistentVolume", "local-pv")


def test_waits_for_pods_and_claims_with_progress():
    cluster, clock, lines = FakeCluster(), Clock(), []
    deployed(cluster)
    # pods and the claim linger (terminating, held by finalizers) for a while
    for name in ("sto-dep-1", "sto-dep-2"):
        cluster.linger[("Pod", "default", name)] = 12
    cluster.linger[("PersistentVolumeClaim", "default", "sto-pvc")] = 4
    clean(cluster, all_targets(), timeout=60, out=lines.append, clock=clock, sleep=clock.sleep,
          progress_every=5)
    text = "\n".join(lines)
    assert "waiting for workloads to go: pod/sto-dep-1, pod/sto-dep-2" in text
    assert "workloads: gone" in text and "volume claims: gone" in text and "volumes: gone" in text
    # the PV is deleted only once the claim is gone
    delete_pv = next(i for i, c in enumerate(cluster.calls) if c[:3] == ("delete", "PersistentVolume", "local-pv"))
    last_pvc_read = max(i for i, c in enumerate(cluster.calls) if c[:3] == ("get", "PersistentVolumeClaim", "sto-pvc"))
    assert last_pvc_read < delete_pv


def test_timeout_names_what_is_stuck_and_its_finalizers():
    cluster, clock = FakeCluster(), Clock()
    deployed(cluster)
    cluster.objects[("PersistentVolumeClaim", "default", "sto-pvc")]["metadata"]["finalizers"] = [
        "kubernetes.io/pvc-protection"]
    cluster.linger[("PersistentVolumeClaim", "default", "sto-pvc")] = 10**6
    with pytest.raises(UserError) as info:
        clean(cluster, all_targets(), timeout=10, out=lambda s: None, clock=clock, sleep=clock.sleep)
    assert "volume claims" in info.value.message
    assert "persistentvolumeclaim/sto-pvc (finalizers: kubernetes.io/pvc-protection)" in info.value.message
    assert "not stripped" in info.value.hint
    assert not any(c[:3] == ("delete", "PersistentVolume", "local-pv") for c in cluster.calls)


def test_already_terminating_objects_are_waited_for_not_deleted_again():
    cluster, clock, lines = FakeCluster(), Clock(), []
    p = loader_pod(Settings(namespace="default"), "img")
    p["metadata"]["deletionTimestamp"] = "2026-11-25T12:00:00Z"
    cluster.put(p)
    cluster.linger[("Pod", "default", "loader")] = 2
    clean(cluster, [Target("v1", "Pod", "loader", "default")], timeout=10, out=lines.append,
          clock=clock, sleep=clock.sleep)
    assert cluster.count("delete") == 0
    assert "pod/loader already terminating" in lines


def test_loader_pod_carries_the_label_clean_looks_for():
    assert LABEL.items() <= loader_pod(Settings(namespace="default"), "img")["metadata"]["labels"].items()
