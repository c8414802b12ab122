"""`invoke status`: the table's rows, ages, readiness and NodePort URLs."""
from datetime import UTC, datetime

import pytest
from kubefake import FakeCluster, deployment, pod, seed_full_objects, service

from twotier.kube.cleanup import targets_from
from twotier.ops.render import loader_pod
from twotier.ops.status import format_table, human_age, row_for, status_report
from twotier.settings import Settings

NOW = datetime(2026, 11, 25, 12, 10, 0, tzinfo=UTC)  # objects are created at 12:00:00


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (59, "59s"), (60, "1m0s"), (192, "3m12s"), (600, "10m"), (3600, "1h"),
    (7500, "2h5m"), (86400, "1d"), (86400 * 3 + 3600 * 4, "3d4h"), (-5, "0s"),
])
def test_human_age_like_kubectl(seconds, text):
    assert human_age(seconds) == text


def test_format_table_pads_columns():
    out = format_table([("Deployment", "sto-dep", "2/2", "5m", ""), ("Pod", "x", "1/1", "1s", "Running")])
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "READY", "AGE", "DETAILS"]
    assert lines[1].index("sto-dep") == lines[2].index("x") == lines[0].index("NAME")
    assert not any(ln.endswith(" ") for ln in lines)


def test_service_row_has_nodeport_url_on_node_ip():
    svc = service("out-svc", 5001, 31001)
    svc["spec"]["clusterIP"] = "10.96.0.11"
    svc["metadata"]["creationTimestamp"] = "2026-11-25T12:00:00Z"
    kind, name, ready, age, details = row_for(svc, NOW, "192.0.2.2")
    assert (kind, name, age) == ("Service", "out-svc", "10m")
    assert "NodePort 10.96.0.11 5001:31001/TCP" in details
    assert details.endswith("http://192.0.2.2:31001")


def test_deployment_row_shows_ready_and_rollout_state():
    d = deployment("sto-dep", 2)
    d["metadata"]["generation"] = 1
    d["status"] = {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1,
                   "availableReplicas": 1}
    row = row_for(d, NOW, None)
    assert row[2] == "1/2"
    assert row[4] == "Waiting for rollout to finish: 1 of 2 updated replicas are available..."
    d["status"]["availableReplicas"] = d["status"]["readyReplicas"] = 2
    assert row_for(d, NOW, None)[2:3] == ("2/2",)
    assert row_for(d, NOW, None)[4] == "successfully rolled out"


def test_pod_row_shows_waiting_reason_restarts_ip():
    p = pod("sto-dep-a", "sto-app", ready=False, restarts=2, waiting={"reason": "CrashLoopBackOff"})
    row = row_for(p, NOW, None)
    assert row[2] == "0/1"
    assert row[4] == "CrashLoopBackOff, restarts 2, IP 10.244.0.5"


def test_pv_and_pvc_rows():
    pv, pvc = seed_full_objects()[:2]
    pv["status"] = {"phase": "Bound"}
    pv["spec"]["claimRef"] = {"namespace": "default", "name": "sto-pvc"}
    pvc["status"] = {"phase": "Pending"}
    assert row_for(pv, NOW, None)[2:] == ("yes", "-", "Bound 12Mi ReadWriteMany claim default/sto-pvc")
    assert row_for(pvc, NOW, None)[2] == "no"


def test_report_lists_project_objects_and_their_pods_only():
    cluster = FakeCluster()
    for obj in seed_full_objects():
        cluster.put(obj)
    cluster.put(pod("sto-dep-a", "sto-app"))
    cluster.put(pod("api-dep-a", "api-app", ip="10.244.0.9"))
    stranger = service("not-ours", 80)
    stranger["metadata"]["labels"] = {}
    cluster.put(stranger)
    targets = targets_from(seed_full_objects() + [loader_pod(Settings(namespace="default"), "i"), stranger], "default")
    report = status_report(cluster, targets, now=NOW)
    first = report.splitlines()[0]
    assert first == ("context twotier-local, namespace default, API https://127.0.0.1:6443, "
                     "node 192.0.2.2")
    body = report.splitlines()[1:]
    kinds = [ln.split()[0] for ln in body[1:]]
    assert kinds == ["PersistentVolume", "PersistentVolumeClaim", "Service", "Service",
                     "PodDisruptionBudget", "Deployment", "Deployment", "Pod", "Pod"]
    assert "not-ours" not in report
    assert "http://192.0.2.2:31000" in report and "http://192.0.2.2:31001" in report


def test_report_when_nothing_is_deployed():
    report = status_report(FakeCluster(), targets_from(seed_full_objects(), "default"), now=NOW)
    assert "nothing of the project is deployed here" in report
    assert "invoke deploy" in report
