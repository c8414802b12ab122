"""The seed's walkthrough (first-steps.md, Steps 2-3 and Cleanup), run for real on the local cluster
with the project's own tasks, as a user would: invoke up / deploy --stage / smoke / clean.

The tutorial's steps run in file order and build on each other (stage hello, storage, full,
cleanup), exactly like the tutorial: one scenario. The fault tests after them ask for the full stage
from a fixture, so they also pass alone.
"""
from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest

from tests.e2e.conftest import curl_in_pod, http, kubectl, kubectl_json, must
from twotier.poll import poll

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("clean_slate")]




def from_loader(url: str, method: str = "GET") -> object:
    """curl from the throw-away loader pod, as in the seed (`kubectl exec loader -- curl ...`)."""
    out = kubectl("exec", "loader", "--", "curl", "-sS", "--fail-with-body", "-m", "10", "-X", method, url)
    return json.loads(out)


def pods(selector: str) -> list[dict]:
    items = kubectl_json("get", "pods", "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp") and p["status"].get("podIP")]


def only_kubernetes_service_left() -> list[str]:
    out = kubectl("get", "pv,pvc,deploy,svc,pods", "-o", "name")
    return sorted(out.split())


# ----------------------------------------------------------------------------------- Step 2: hello

def test_hello_stage_answers_through_its_node_port(node_ip):
    must("up", "--stage", "hello")
    assert http(f"http://{node_ip}:31000/") == (200, {"a": 1})
    assert http(f"http://{node_ip}:31000/info") == (200, {"info": True})
    assert kubectl_json("get", "service", "s-f-webapp")["spec"]["ports"][0]["nodePort"] == 31000
    must("clean")


# ----------------------------------------------------------------------------------- Step 3: storage

def test_storage_stage_deploys_with_seed_names(node_ip):
    out = must("up", "--stage", "storage").stdout
    assert "FAIL" not in out
    names = set(kubectl("get", "deploy,svc,pv,pvc", "-o", "name").split())
    assert {"deployment.apps/sto-dep", "service/in-svc", "persistentvolume/local-pv",
            "persistentvolumeclaim/sto-pvc"} <= names
    assert kubectl_json("get", "pvc", "sto-pvc")["spec"]["volumeName"] == "local-pv"
    assert len(pods("run=sto-app")) == 2


def test_storage_four_access_paths(node_ip):
    svc_ip = kubectl_json("get", "svc", "in-svc")["spec"]["clusterIP"]
    pod_ip = pods("run=sto-app")[0]["status"]["podIP"]
    assert http(f"http://{node_ip}:31000/items") == (200, {"items": []})          # 1. node's NodePort
    assert from_loader(f"http://{svc_ip}:5000/items") == {"items": []}            # 2. Service IP
    assert from_loader(f"http://{pod_ip}:5000/items") == {"items": []}            # 3. a pod directly
    assert from_loader("http://in-svc:5000/items") == {"items": []}               # 4. DNS, short
    assert from_loader("http://in-svc.default.svc.cluster.local:5000/items") == {"items": []}  # and FQDN


def test_two_replicas_share_the_volume():
    first, second = [p["status"]["podIP"] for p in pods("run=sto-app")]
    assert first != second
    assert from_loader(f"http://{first}:5000/items/FromFirst", "PUT") == {"created": {"FromFirst": True}}
    assert from_loader(f"http://{second}:5000/items") == {"items": ["FromFirst"]}
    assert from_loader(f"http://{second}:5000/items/FromFirst", "DELETE") == {"deleted": {"FromFirst": True}}


# ----------------------------------------------------------------------------------- Step 3: full

def test_full_stage_seed_final_checks(node_ip):
    out = must("up", "--stage", "full").stdout
    assert "FAIL" not in out
    svc_ip = kubectl_json("get", "svc", "out-svc")["spec"]["clusterIP"]
    api_pod_ip = pods("run=api-app")[0]["status"]["podIP"]
    seed = lambda created: {"createds": created, "deleteds": [], "faileds": []}
    assert http(f"http://{node_ip}:31001/createlist/3") == (200, seed(["0", "1", "2"]))
    assert from_loader(f"http://{svc_ip}:5001/createlist/4") == seed(["3"])
    assert from_loader(f"http://{api_pod_ip}:5001/createlist/5") == seed(["4"])
    assert from_loader("http://out-svc:5001/createlist/7") == seed(["5", "6"])
    assert from_loader("http://in-svc.default.svc.cluster.local:5000/items") == {
        "items": ["0", "1", "2", "3", "4", "5", "6"]}


def test_items_survive_deleting_every_storage_pod():
    kubectl("delete", "pod", "-l", "run=sto-app", "--wait=true")
    kubectl("rollout", "status", "deployment/sto-dep", "--timeout=120s")
    # Ready pods are not yet routed: kube-proxy rewrites in-svc's rules a moment later, and a
    # connection made before that goes to a deleted pod's address and hangs (conntrack keeps it
    # there), so each try is a new short connection until the Service answers.
    poll(lambda: curl_in_pod("default", "loader", "http://in-svc:5000/items", max_time=2) == (0, "200"),
         timeout=60, interval=0.5, what="in-svc to route to the new storage pods")
    assert from_loader("http://in-svc:5000/items") == {"items": ["0", "1", "2", "3", "4", "5", "6"]}
    assert from_loader("http://out-svc.default.svc.cluster.local:5001/clear") == {
        "createds": [], "deleteds": ["0", "1", "2", "3", "4", "5", "6"], "faileds": []}


# ----------------------------------------------------------------------------------- faults

def test_zero_failed_requests_while_pods_die_and_tiers_roll(full_stage):
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def load():
        i = 0
        while not done.is_set() and count[0] < 20000:
            url = "http://127.0.0.1:31001/" + ("createlist/20" if i % 2 == 0 else "clear")
            try:
                status, body = http(url, timeout=15)
                if status != 200 or body.get("faileds"):
                    failures.append(f"{url}: {status} {body}")
            except Exception as err:
                failures.append(f"{url}: {err!r}")
            count[0] += 1
            i += 1

    def answered_more(than: int, more: int = 20):
        poll(lambda: count[0] >= than + more, timeout=120, interval=0.1,
             what=f"{more} more requests from the load (sent so far: {count[0]})")

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        answered_more(0)  # the load runs before anything dies
        victim = pods("run=sto-app")[0]["metadata"]["name"]
        kubectl("delete", "pod", victim, "--wait=true")
        kubectl("rollout", "status", "deployment/sto-dep", "--timeout=180s")
        kubectl("rollout", "restart", "deployment/sto-dep", "deployment/api-dep")
        kubectl("rollout", "status", "deployment/sto-dep", "--timeout=180s")
        kubectl("rollout", "status", "deployment/api-dep", "--timeout=180s")
        answered_more(count[0])  # and goes on after the rollouts: old pods gone, new ones serving
    finally:
        done.set()
        worker.join(timeout=30)
    print(f"{count[0]} requests during pod deletion and two rollouts, {len(failures)} failed")
    assert count[0] > 20
    assert failures == []


def readiness_probes_since(since: str) -> list[str]:
    """The app's access-log lines of the kubelet's readiness probes since SINCE (RFC 3339)."""
    out = kubectl("logs", "deployment/api-dep", f"--since-time={since}")
    return [line for line in out.splitlines() if '"GET /readyz ' in line]


def test_storage_scaled_to_zero_app_stays_ready_and_answers_503(full_stage):
    kubectl("scale", "deployment/sto-dep", "--replicas=0")
    poll(lambda: not kubectl_json("get", "pods", "-l", "run=sto-app")["items"], timeout=180, interval=1,
         what="the storage pods gone")
    try:
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status, body = http("http://127.0.0.1:31001/createlist/3")
        assert status == 503
        assert "error" in body
        # The app must stay Ready without storage: not for a fixed time, but through more probes
        # than its readiness failureThreshold (2), each answered 200, as its access log shows.
        probes = poll(lambda: lines if len(lines := readiness_probes_since(since)) >= 3 else None,
                      timeout=120, interval=1, what="three readiness probes of the app without storage")
        assert all('" 200 ' in line for line in probes), probes
        api = kubectl_json("get", "deployment", "api-dep")
        assert api["status"].get("readyReplicas") == api["spec"]["replicas"]
    finally:
        kubectl("scale", "deployment/sto-dep", "--replicas=2")
        kubectl("rollout", "status", "deployment/sto-dep", "--timeout=180s")
    # Once storage is back, the app recovers by itself (Service endpoints and kube-proxy rules
    # follow the new pods' readiness); the deadline only bounds a hang.
    poll(lambda: http("http://127.0.0.1:31001/createlist/1")[0] == 200, timeout=120, interval=0.5,
         what="the app answering 200 after storage came back")
    status, body = http("http://127.0.0.1:31001/clear")
    assert status == 200 and "0" in body["deleteds"] and body["faileds"] == []


# ----------------------------------------------------------------------------------- Cleanup

def test_clean_leaves_only_the_kubernetes_service_and_is_idempotent():
    must("clean")
    assert only_kubernetes_service_left() == ["service/kubernetes"]
    again = must("clean")
    assert "nothing to clean" in again.stdout
    assert only_kubernetes_service_left() == ["service/kubernetes"]
