"""The clusters' own figures: `cluster.up`/`cluster.down` with one and three nodes on the local
cluster and on the kind provider side by side, and the application's behaviour while the storage
tier's node is lost.

Both sections take the shared local cluster down and up (and `nodeloss` deploys the full stage on
three nodes); each ends with the node count it found. The times are the wall times of the tasks
as a user types them. The kind column runs after the local one, on the local cluster's dockerd (the
kind nodes are its containers); its first row rebuilds the node image from the cached binaries.
"""
from __future__ import annotations

import http.client
import json
import subprocess
import time
import urllib.error
import urllib.request

import localcluster
from bench import invoke_task
from localcluster import nodes as node_ops
from localcluster.node import Node
from twotier import tables
from twotier.errors import UserError
from twotier.kube.objects import dig, pod_ready
from twotier.ops.cluster import connect, kubectl
from twotier.poll import poll

#: the cluster.up / cluster.down figures, in the order they are taken (row, task arguments); the
#: kind provider's are the same tasks with --provider kind
LIFECYCLE = (
    (None, ("cluster.down",)),
    ("`cluster.up` from nothing, 1 node", ("cluster.up", "--nodes", "1")),
    ("`cluster.up` when already up", ("cluster.up", "--nodes", "1")),
    ("`cluster.up --nodes 3` on a running 1-node cluster", ("cluster.up", "--nodes", "3")),
    ("`cluster.up --nodes 1` on 3 nodes", ("cluster.up", "--nodes", "1")),
    ("`cluster.down`, 1 node", ("cluster.down",)),
    ("`cluster.up --nodes 3` from nothing", ("cluster.up", "--nodes", "3")),
    ("`cluster.down`, 3 nodes", ("cluster.down",)),
)
NODE_IMAGE_ROW = "node image built from the cached binaries, then `cluster.up`, 1 node"
PER_NODE_ROW = "each node beyond the first (3 nodes from nothing vs 1, halved)"
STORAGE_NODE = Node(2)
LOSS_S = 20.0  # how long the app is probed while the storage node is gone


def _lifecycle(progress, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """{row: seconds} of LIFECYCLE's tasks, each with EXTRA arguments (a provider)."""
    took = {}
    for label, args in LIFECYCLE:
        progress(f"invoke {' '.join(args + extra)} ...")
        seconds = invoke_task(*args, *extra)
        if label:
            took[label] = seconds
            progress(f"  {seconds:.1f} s")
    return took


def _kind_node_image_build(progress) -> float:
    """`cluster.up --provider kind` once the node images are removed: their build plus a 1-node create."""
    tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "twotier-kind/node"],
                          capture_output=True, text=True, check=True).stdout.split()
    if tags:
        subprocess.run(["docker", "rmi", *tags], capture_output=True, check=True)
    progress("invoke cluster.up --provider kind --nodes 1 (node image rebuilt) ...")
    seconds = invoke_task("cluster.up", "--provider", "kind", "--nodes", "1")
    progress(f"  {seconds:.1f} s")
    invoke_task("cluster.down", "--provider", "kind")
    return seconds


def cluster_section(settings, progress) -> str:
    found = localcluster.node_count() if localcluster.is_up() else 1
    try:
        local = _lifecycle(progress)
    finally:
        invoke_task("cluster.up", "--nodes", str(found))
    kind = {NODE_IMAGE_ROW: _kind_node_image_build(progress)}
    try:
        kind.update(_lifecycle(progress, ("--provider", "kind")))
    finally:
        invoke_task("cluster.down", "--provider", "kind")
    for took in (local, kind):
        took[PER_NODE_ROW] = (took["`cluster.up --nodes 3` from nothing"] - took["`cluster.up` from nothing, 1 node"]) / 2
    rows = [(label, f"{local[label]:.1f} s" if label in local else "-", f"{kind[label]:.1f} s" if label in kind else "-")
            for label in [NODE_IMAGE_ROW] + [row for row, _ in LIFECYCLE if row] + [PER_NODE_ROW]]
    return tables.markdown(["binaries cached; kind's nodes are containers of the local cluster's dockerd",
                            "local cluster", "kind provider"], rows)


def _get(url: str, timeout: float = 30) -> tuple[int, dict | None, float]:
    """(status, JSON body or None, seconds) of one GET; status 0 when nothing answered."""
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (OSError, http.client.HTTPException):  # refused, reset, cut short
        return 0, None, time.monotonic() - start
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    return status, body, time.monotonic() - start


def _kubectl(cluster, *args: str) -> None:
    subprocess.run([kubectl(), *cluster.kubectl_args(), *args], check=True, capture_output=True, timeout=180,
                   env={"PATH": "/usr/bin:/bin", **cluster.kubectl_env()})


def _app_ready(cluster) -> tuple[int, int]:
    """(ready app pods, replicas the Deployment wants)."""
    dep = cluster.get("apps/v1", "Deployment", "api-dep") or {}
    pods = cluster.list("v1", "Pod", label_selector="run=api-app")
    return sum(pod_ready(p) for p in pods), dig(dep, "spec.replicas", 1)


def _storage_on_node2(cluster, progress) -> None:
    """The full stage with local-pv on node 2 and the two app replicas on the other nodes."""
    invoke_task("push", "--stage", "full")
    invoke_task("clean")
    progress(f"deploy full, storage on {STORAGE_NODE.name}, the app spread over the other nodes ...")
    invoke_task("deploy", env={"INVOKE_TWOTIER_OVERLAY": "spread-app",
                               "INVOKE_TWOTIER_STORAGE_NODE": STORAGE_NODE.name})
    _kubectl(cluster, "cordon", STORAGE_NODE.name)  # losing node 2 loses storage only
    try:
        for pod in cluster.list("v1", "Pod", label_selector="run=api-app"):
            if dig(pod, "spec.nodeName") == STORAGE_NODE.name:
                _kubectl(cluster, "delete", "pod", pod["metadata"]["name"], "--wait=true")
        _kubectl(cluster, "rollout", "status", "deployment/api-dep", "--timeout=120s")
    finally:
        _kubectl(cluster, "uncordon", STORAGE_NODE.name)


def nodeloss_section(settings, progress) -> str:
    """Kill the storage node's kubelet, kube-proxy, containerd and containers at once (like a node
    whose runtime died), probe the app through out-svc for LOSS_S seconds and watch its readiness,
    then restart the node (like a reboot) and time the app's recovery with every item."""
    found = localcluster.node_count() if localcluster.is_up() else 1
    invoke_task("cluster.up", "--nodes", "3")
    cluster = connect(settings)
    url = f"http://{Node(1).ip}:31001/createlist/5"
    try:
        _storage_on_node2(cluster, progress)
        status, body, _ = _get(url)
        if status != 200 or body.get("faileds"):
            raise UserError(f"createlist/5 before the loss answered {status}: {body}")
        progress(f"killing {STORAGE_NODE.name}'s runtime ...")
        killed = time.monotonic()
        node_ops.kill(STORAGE_NODE)
        answers, readiness = [], []
        while time.monotonic() - killed < LOSS_S:
            status, body, took = _get(url)
            answers.append((time.monotonic() - killed, status, isinstance(body, dict) and bool(body.get("error")), took))
            readiness.append(_app_ready(cluster))
            time.sleep(0.2)
        restarted = time.monotonic()
        node_ops.start(STORAGE_NODE, progress=lambda *_: None)
        poll(lambda: _get(url, timeout=5)[0] == 200, timeout=180, interval=0.5, what="the app answering 200 again")
        recovered = time.monotonic() - restarted
        status, body, _ = _get(url)
        kept = status == 200 and body == {"createds": [], "deleteds": [], "faileds": []}
    finally:
        if not node_ops.components_running(STORAGE_NODE):
            node_ops.start(STORAGE_NODE, progress=lambda *_: None)
        invoke_task("clean")
        invoke_task("cluster.up", "--nodes", str(found))
    json503 = [a for a in answers if a[1] == 503 and a[2]]
    other = [a for a in answers if a[1] not in (200, 503)]
    ready_min = min(r for r, _want in readiness)
    rows = [
        ("first JSON 503 after the kill", f"{json503[0][0]:.2f} s" if json503 else "none"),
        (f"requests in {LOSS_S:.0f} s: JSON 503 / 200 / other", f"{len(json503)} / "
         f"{sum(a[1] == 200 for a in answers)} / {len(other)}"),
        ("slowest answer during the loss", f"{max(a[3] for a in answers):.2f} s"),
        ("app pods Ready during the loss (lowest seen / wanted)", f"{ready_min} / {readiness[0][1]}"),
        ("after the node restarted: the app answers 200 with every item", f"{recovered:.1f} s"
         + ("" if kept else " (items MISSING)")),
    ]
    return tables.markdown([f"storage node {STORAGE_NODE.name} lost (3 nodes, `spread-app`)", ""], rows)
