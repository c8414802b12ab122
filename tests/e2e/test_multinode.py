"""A multi-node local cluster (`invoke cluster.up --nodes N`), and a storage tier that stays correct on it.

The module grows the running local cluster to 3 nodes, runs its checks and shrinks it back to the
single-node default at the end (nodes 2..N are added and removed without touching node 1).
Tests run in file order and build on each other:

1. the cluster: every node Ready with its own IP and pod subnet; pods on every node reach pods,
   Services and cluster DNS on every node; NodePorts answer on every node IP; hostPath is per node;
   NetworkPolicy is enforced across nodes on the pods' own addresses (no masquerade between nodes);
2. the tutorial's flaw: its own Step 3 manifests on two nodes, replicas on different nodes, diverge;
3. the project's manifests: `invoke up` (17 PASS) on 3 nodes, both storage pods on the pinned node,
   two app replicas on different nodes, zero failed requests through a rolling update;
4. the network-policy component with the app replicas on other nodes than the storage node; then
   node loss: the storage node's processes killed (fast JSON 503, recovery with every item), an app
   node killed (requests succeed through the other replica once the endpoints moved). The times are
   printed (`pytest -s`) and reported in the README.
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

import localcluster
from localcluster import layout as L
from localcluster import nodes as node_ops
from localcluster.node import Node
from tests.e2e.conftest import http, kubectl, kubectl_json, must, run_invoke
from tests.support.traffic import failed_answers, load, more_results, python_image, restart_under_load
from tests.support.tutorial import step3_manifests
from twotier.poll import Timeout, poll

pytestmark = pytest.mark.cluster

NODES = 3
PROBE_NODEPORT = 30998
PROBE_PY = """\
import http.server, json, os, socket
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pod": socket.gethostname(), "node": os.environ.get("NODE"),
                           "client": self.client_address[0]}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
"""


def node_ips() -> dict[str, str]:
    return {n["metadata"]["name"]: next(a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP")
            for n in kubectl_json("get", "nodes")["items"]}


def running_pods(selector: str) -> list[dict]:
    items = kubectl_json("get", "pods", "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp") and p["status"].get("podIP")
            and p["status"].get("phase") == "Running"]


def wait_until(check, what: str, timeout: float, interval: float = 0.5):
    """CHECK's first truthy result (an exception counts as not yet); TIMEOUT only bounds a hang."""
    last = [None]

    def attempt():
        try:
            last[0] = check()
        except Exception as err:
            last[0] = err
            return None
        return last[0]

    try:
        return poll(attempt, timeout=timeout, interval=interval, what=what)
    except Timeout:
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last[0]!r})") from None


@pytest.fixture(scope="module")
def multinode(cluster):
    """The local cluster with NODES nodes for this module; back to one node afterwards."""
    res = must("cluster.up", "--nodes", str(NODES))
    print(f"cluster.up --nodes {NODES} on a running single-node cluster: {res.seconds:.1f}s")
    must("clean")
    yield node_ips()
    run_invoke("clean")
    res = must("cluster.up", "--nodes", "1")
    print(f"cluster.up --nodes 1 (removing nodes 2..{NODES}): {res.seconds:.1f}s")
    assert [n["metadata"]["name"] for n in kubectl_json("get", "nodes")["items"]] == [L.NODE_NAME]
    assert node_ops.existing() == []
    assert not Path(f"/sys/class/net/{L.NODES_BRIDGE}").exists()


# ------------------------------------------------------------------------------ 1. the cluster

def test_every_node_is_ready_with_its_own_ip_and_pod_subnet(multinode):
    nodes = kubectl_json("get", "nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == [Node(i).name for i in range(1, NODES + 1)]
    for n in nodes:
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]), n["metadata"]
        assert n["status"]["nodeInfo"]["kubeletVersion"] == L.versions()["KUBERNETES_VERSION"]
    assert len(set(multinode.values())) == NODES
    assert multinode[Node(2).name] == "10.250.0.2"
    status = must("cluster.status").stdout
    for i in range(1, NODES + 1):
        assert re.search(rf"node/{Node(i).name} \S+\s+-\s+Ready", status), status
    for i in range(2, NODES + 1):
        assert re.search(rf"{Node(i).name}/kubelet\s+\d+\s+running", status), status


def test_up_with_the_same_node_count_is_a_fast_no_op(multinode):
    res = must("cluster.up", "--nodes", str(NODES))
    assert "already up" in res.stdout and f"{NODES} nodes" in res.stdout


@pytest.fixture(scope="module")
def probe_image(multinode) -> str:
    """The probe's image (PROBE_PY on the local base image) in the local registry."""
    return python_image("twotier-probe", PROBE_PY)


@pytest.fixture(scope="module")
def probes(probe_image):
    """A DaemonSet of a tiny HTTP server (one pod per node, hostPath /tmp/twotier-mn-probe) and a
    NodePort Service in front of it."""
    ref = probe_image
    manifest = f"""
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: twotier-mn-probe, namespace: default}}
spec:
  selector: {{matchLabels: {{app: twotier-mn-probe}}}}
  template:
    metadata: {{labels: {{app: twotier-mn-probe}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: probe
        image: {ref}
        command: [python3, /probe.py]
        env: [{{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}]
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
        volumeMounts: [{{name: hostdir, mountPath: /hostdir}}]
      volumes: [{{name: hostdir, hostPath: {{path: /tmp/twotier-mn-probe, type: DirectoryOrCreate}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: twotier-mn-probe, namespace: default}}
spec:
  type: NodePort
  selector: {{app: twotier-mn-probe}}
  ports: [{{port: 80, targetPort: 8080, nodePort: {PROBE_NODEPORT}}}]
"""
    kubectl("apply", "-f", "-", input=manifest)
    kubectl("rollout", "status", "daemonset/twotier-mn-probe", "--timeout=180s", timeout=200)
    pods = {p["spec"]["nodeName"]: p for p in running_pods("app=twotier-mn-probe")}
    # the Service routes to a pod only once its EndpointSlice lists it ready, a moment after the pod is
    wait_until(lambda: probe_endpoints() == {p["status"]["podIP"] for p in pods.values()},
               "the probe Service's EndpointSlices to list every node's pod ready", 60)
    yield pods
    kubectl("delete", "--wait=true", "daemonset/twotier-mn-probe", "service/twotier-mn-probe", check=False)
    subprocess.run(["rm", "-rf", "/tmp/twotier-mn-probe"], check=False)   # node 1's (the host's) directory


def probe_endpoints() -> set[str]:
    slices = kubectl_json("get", "endpointslices", "-l", "kubernetes.io/service-name=twotier-mn-probe")["items"]
    return {a for s in slices for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")
            for a in e["addresses"]}


def seen_over_tries(sample, want: set[str], what: str) -> set[str]:
    """Samples until every one of WANT answered (kube-proxy on each node programs a new endpoint a
    moment after the EndpointSlice lists it; 60 s bounds a real gap, which then fails)."""
    seen: set[str] = set()
    try:
        wait_until(lambda: seen.update(sample()) or seen >= want, what, 60)
    except AssertionError:
        pass
    return seen


def _exec(pod: dict, code: str) -> str:
    return kubectl("exec", pod["metadata"]["name"], "--", "python3", "-c", code).strip()


GET = ("import json, sys, urllib.request\n"
       "out = {}\n"
       "for url in sys.argv[1:]:\n"
       "    try: out[url] = json.load(urllib.request.urlopen(url, timeout=5))['node']\n"
       "    except Exception as e: out[url] = repr(e)\n"
       "print(json.dumps(out))\n")


def test_one_probe_per_node_in_that_nodes_pod_subnet(probes):
    assert sorted(probes) == [Node(i).name for i in range(1, NODES + 1)]
    for i in range(1, NODES + 1):
        ip = probes[Node(i).name]["status"]["podIP"]
        assert ip.startswith(Node(i).pod_cidr.rsplit(".", 1)[0] + "."), (Node(i).name, ip)


def test_pods_on_every_node_reach_pods_services_and_dns_on_every_node(probes):
    pod_urls = {f"http://{p['status']['podIP']}:8080/": node for node, p in probes.items()}
    svc = "http://twotier-mn-probe.default.svc.cluster.local/"
    for node, pod in probes.items():
        code = GET.replace("sys.argv[1:]", repr([*pod_urls, svc, "http://twotier-mn-probe/"]))
        got = json.loads(_exec(pod, code))
        assert {u: got[u] for u in pod_urls} == pod_urls, (node, got)     # pod -> pod, across nodes
        assert got[svc] in probes and got["http://twotier-mn-probe/"] in probes, (node, got)  # Service via DNS
        resolved = _exec(pod, "import socket; print(socket.gethostbyname('kubernetes.default.svc.cluster.local'))")
        assert resolved == "10.96.0.1", (node, resolved)


def test_service_traffic_from_one_node_reaches_pods_on_all_nodes(probes):
    pod = probes[Node(2).name]
    code = ("import json, urllib.request\n"
            "print(json.dumps(sorted({json.load(urllib.request.urlopen('http://twotier-mn-probe/', timeout=5))['node']"
            " for _ in range(60)})))")
    seen = seen_over_tries(lambda: json.loads(_exec(pod, code)), set(probes), "every node's pod behind the Service")
    assert seen == set(probes), (seen, probe_endpoints())


def test_node_ports_answer_on_every_node_ip(probes, multinode):
    for node, ip in multinode.items():
        seen = seen_over_tries(lambda ip=ip: {http(f"http://{ip}:{PROBE_NODEPORT}/")[1]["node"] for _ in range(30)},
                               set(probes), f"every node's pod behind {ip}:{PROBE_NODEPORT}")
        assert seen == set(probes), (node, ip, seen, probe_endpoints())


def test_host_path_is_per_node(probes):
    for node, pod in probes.items():
        _exec(pod, f"open('/hostdir/written-on', 'w').write({node!r})")
    for node, pod in probes.items():
        assert _exec(pod, "print(open('/hostdir/written-on').read())") == node
    assert Path("/tmp/twotier-mn-probe/written-on").read_text() == L.NODE_NAME   # node 1 is the host
    assert (Node(2).tmp / "twotier-mn-probe" / "written-on").read_text() == Node(2).name
    for pod in probes.values():
        _exec(pod, "import os; os.remove('/hostdir/written-on')")


# ------------------------------------------------------------------------------ NetworkPolicy across nodes

POLICY_NS = "twotier-mn-policy"
# (pod, node, role): a server on node 3; clients with the allowed role on the host and on node 2;
# a pod without it on node 2, beside an allowed one (same node address, other labels).
POLICY_PODS = (("server", Node(3), "server"), ("client-1", Node(1), "client"), ("client-2", Node(2), "client"),
               ("other", Node(2), "other"))
ASK = ("import json, sys, urllib.request\n"
       "try: print(json.load(urllib.request.urlopen(sys.argv[1], timeout=3))['client'])\n"
       "except Exception as e: print('refused' if 'Connection refused' in str(e) else repr(e))\n")


def ask(ns: str, pod: str, url: str) -> str:
    """What the probe at URL saw as the source address of POD's request, or 'refused'."""
    return kubectl("-n", ns, "exec", pod, "--", "python3", "-c", ASK, url).strip()


def refused(ns: str, pod: str, url: str) -> bool:
    got = ask(ns, pod, url)
    assert got == "refused" or re.fullmatch(r"[0-9.]+", got), f"{pod} -> {url}: {got}"  # not a timeout
    return got == "refused"


def test_network_policy_is_enforced_across_nodes_on_the_pods_own_addresses(multinode, probe_image):
    """No masquerade between nodes: the server sees each client pod's own address, so kube-router on
    the server's node refuses every client under a deny-all ingress policy and lets the clients an
    allow rule selects by label back in, from the host and from another node, and no other pod."""
    pods = "\n---\n".join(f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {POLICY_NS}, labels: {{role: {role}}}}}
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector: {{kubernetes.io/hostname: {node.name}}}
  containers:
  - name: probe
    image: {probe_image}
    command: [python3, /probe.py]
    readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
""" for name, node, role in POLICY_PODS)
    kubectl("create", "namespace", POLICY_NS)
    try:
        kubectl("apply", "-f", "-", input=pods)
        kubectl("-n", POLICY_NS, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s", timeout=150)
        found = {p["metadata"]["name"]: p for p in kubectl_json("-n", POLICY_NS, "get", "pods")["items"]}
        assert {n: p["spec"]["nodeName"] for n, p in found.items()} == {n: node.name for n, node, _ in POLICY_PODS}
        ip = {n: p["status"]["podIP"] for n, p in found.items()}
        url = f"http://{ip['server']}:8080/"
        clients = ("client-1", "client-2", "other")
        assert {c: ask(POLICY_NS, c, url) for c in clients} == {c: ip[c] for c in clients}   # no masquerade
        t0 = time.monotonic()
        kubectl("-n", POLICY_NS, "apply", "-f", "-", input="apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                "metadata: {name: deny-all}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n")
        wait_until(lambda: all(refused(POLICY_NS, c, url) for c in clients), "the deny-all policy on node 3", 60)
        denied = time.monotonic() - t0
        t0 = time.monotonic()
        kubectl("-n", POLICY_NS, "apply", "-f", "-", input=(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-clients}\nspec:\n"
            "  podSelector: {matchLabels: {role: server}}\n"
            "  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}], ports: [{port: 8080}]}]\n"))
        wait_until(lambda: all(ask(POLICY_NS, c, url) == ip[c] for c in ("client-1", "client-2")),
                   "the allow rule to let both clients in", 60)
        allowed = time.monotonic() - t0
        assert refused(POLICY_NS, "other", url)     # on the same node as client-2: the label decides
        print(f"NetworkPolicy across {NODES} nodes: the server on {Node(3).name} saw each client's pod address; "
              f"deny-all enforced {denied:.1f}s after apply, the allow rule {allowed:.1f}s after apply "
              f"(clients on {Node(1).name} and {Node(2).name}); the other pod refused")
    finally:
        kubectl("delete", "namespace", POLICY_NS, "--wait=true", "--timeout=120s", timeout=150, check=False)


# ------------------------------------------------------------------------------ 2. the tutorial's flaw

def project_image_refs() -> dict[str, str]:
    """{bare name: reference} of the images `invoke push --stage full` pushed."""
    must("push", "--stage", "full")
    rendered = must("render", "--stage", "full").stdout
    refs = {}
    for ref in re.findall(r"image: (\S+)", rendered):
        refs[ref.rsplit("/", 1)[-1].split(":")[0]] = ref
    return refs


@pytest.fixture(scope="module")
def refs(multinode):
    return project_image_refs()


def test_tutorial_step3_on_two_nodes_replicas_diverge(refs):
    """The tutorial's hostPath PV on two nodes: each storage replica writes its own node's
    /tmp/data/kubetestpv, so an item written through one replica is missing through the other.

    Changes to the tutorial's text: the images are ours (stlottini/* cannot be pulled here), and
    sto-dep gets a required pod anti-affinity so that the scheduler's usual spreading of the two
    replicas over two nodes happens on every run, not just most runs."""
    must("cluster.up", "--nodes", "2")
    docs = step3_manifests(refs)
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("PersistentVolume", "local-pv"), ("PersistentVolumeClaim", "sto-pvc"), ("Deployment", "sto-dep"),
        ("Service", "in-svc"), ("Deployment", "api-dep"), ("Service", "out-svc")]
    # The tutorial's image ran as root; ours runs as uid 10001. Hand each node's directory to it,
    # as the project's storage-owner init container does (node 1's /tmp is the host's).
    dirs = [(Path("/tmp") if i == 1 else Node(i).tmp) / "data" / "kubetestpv" for i in (1, 2)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "10001:10001", str(d)], check=True)
        d.chmod(0o770)
        (d / "FromFirst").unlink(missing_ok=True)     # a stale item from an interrupted run
    manifest = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    kubectl("apply", "-f", "-", input=manifest)
    try:
        pods = wait_until(lambda: (p := [x for x in running_pods("run=sto-app")
                                         if all(c.get("ready") for c in x["status"].get("containerStatuses", []))])
                          and len(p) == 2 and p, "two Ready tutorial storage pods", 180)
        assert sorted(p["spec"]["nodeName"] for p in pods) == [Node(1).name, Node(2).name]
        first, second = (f"http://{p['status']['podIP']}:5000" for p in pods)
        # The tutorial has no readiness probe: a pod is Ready before its server listens.
        for url in (first, second, f"http://{Node(1).ip}:31000"):
            wait_until(lambda url=url: http(f"{url}/items", timeout=2)[0] == 200, f"{url} answering", 60)
        # The tutorial's own check: write through the first pod, read through the second.
        assert http(f"{first}/items/FromFirst", "PUT")[1] == {"created": {"FromFirst": True}}
        assert "FromFirst" in http(f"{first}/items")[1]["items"]
        assert "FromFirst" not in http(f"{second}/items")[1]["items"]    # the tutorial expects it there
        wait_until(lambda: sum(ep.get("conditions", {}).get("ready", False)
                               for es in kubectl_json("get", "endpointslices", "-l",
                                                      "kubernetes.io/service-name=in-svc")["items"]
                               for ep in es.get("endpoints") or []) == 2, "both pods behind in-svc", 60)
        # Through in-svc's NodePort, a client sees the item or not, depending on the replica. The
        # node's kube-proxy may program the second endpoint a moment after the EndpointSlice says
        # ready, so ask until both answers have been seen (the deadline only bounds a hang).
        seen: set = set()

        def both_seen() -> bool:
            seen.add("FromFirst" in http(f"http://{Node(1).ip}:31000/items")[1]["items"])
            return seen == {True, False}

        wait_until(both_seen, f"in-svc answering both with and without the item (seen: {seen})", 120, interval=0.05)
        print(f"tutorial Step 3 on 2 nodes: replicas on {[p['spec']['nodeName'] for p in pods]}; an item written "
              "through one is missing through the other; in-svc answers both ways")
        assert http(f"{first}/items/FromFirst", "DELETE")[0] == 200
    finally:
        kubectl("delete", "--wait=true", "--timeout=120s", "-f", "-", input=manifest, check=False)
        for d in dirs:
            (d / "FromFirst").unlink(missing_ok=True)
        must("cluster.up", "--nodes", str(NODES))   # the later tests need every node back


# ------------------------------------------------------------------------------ 3. the project's manifests

def pods_by_node(selector: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in running_pods(selector):
        out.setdefault(p["spec"]["nodeName"], []).append(p["metadata"]["name"])
    return out


def test_invoke_up_on_three_nodes_passes_every_smoke_check(multinode):
    out = must("up", env={"INVOKE_TWOTIER_OVERLAY": "spread-app"}).stdout
    # smoke adds one line when it finds items stored before it (it puts them back at the end)
    passes = [ln for ln in out.splitlines() if ln.startswith("PASS") and "stored before smoke" not in ln]
    assert "FAIL" not in out and len(passes) == 17, out
    storage = pods_by_node("run=sto-app")
    assert list(storage) == [L.NODE_NAME] and len(storage[L.NODE_NAME]) == 2, storage   # pinned, together
    pv = kubectl_json("get", "pv", "local-pv")
    assert pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == [L.NODE_NAME]
    app = pods_by_node("run=api-app")
    assert len(app) == 2 and all(len(v) == 1 for v in app.values()), app                # spread over nodes
    print(f"invoke up on {NODES} nodes: {len(passes)} PASS; sto-app on {storage}, api-app on {app}")


def test_zero_failed_requests_through_a_rolling_update_on_three_nodes(multinode):
    ips = list(multinode.values())
    url = lambda i: f"http://{ips[i % len(ips)]}:31001/" + ("createlist/20" if i % 2 == 0 else "clear")
    results = restart_under_load(kubectl, url)
    failed = failed_answers(results)
    assert http(f"http://{Node(1).ip}:31001/clear")[0] == 200      # leave no items behind
    print(f"rolling update on {NODES} nodes: {len(results)} requests over every node IP, {len(failed)} failed")
    assert len(results) > 20
    assert failed == []
    assert list(pods_by_node("run=sto-app")) == [L.NODE_NAME]


# ------------------------------------------------------------------------------ 4. node loss

STORAGE_NODE = Node(2)


def out_svc_endpoints() -> dict[str, bool]:
    """{pod name: ready} of out-svc's endpoints."""
    out = {}
    for es in kubectl_json("get", "endpointslices", "-l", "kubernetes.io/service-name=out-svc")["items"]:
        for ep in es.get("endpoints") or []:
            out[ep["targetRef"]["name"]] = bool(ep.get("conditions", {}).get("ready"))
    return out


@pytest.fixture(scope="module")
def storage_on_node2(multinode):
    """The full stage with local-pv pinned to node 2 (setting storage_node) and the two app replicas
    on the other nodes, 5 items stored."""
    must("clean")
    env = {"INVOKE_TWOTIER_OVERLAY": "spread-app", "INVOKE_TWOTIER_STORAGE_NODE": STORAGE_NODE.name}
    must("deploy", env=env)
    assert list(pods_by_node("run=sto-app")) == [STORAGE_NODE.name]
    # Keep the app tier off the storage node, so losing it loses storage only.
    kubectl("cordon", STORAGE_NODE.name)
    for name in pods_by_node("run=api-app").get(STORAGE_NODE.name, []):
        kubectl("delete", "pod", name, "--wait=true")
    kubectl("rollout", "status", "deployment/api-dep", "--timeout=120s", timeout=150)
    kubectl("uncordon", STORAGE_NODE.name)
    app = pods_by_node("run=api-app")
    assert STORAGE_NODE.name not in app and len(app) == 2, app
    assert http(f"http://{Node(1).ip}:31001/createlist/5")[1]["faileds"] == []
    yield app
    for i in range(2, NODES + 1):   # whatever happened, every node is back
        if not node_ops.components_running(Node(i)):
            node_ops.start(Node(i), progress=lambda *_: None)
    run_invoke("clean")


def test_with_the_network_policy_component_app_pods_on_other_nodes_reach_the_storage(storage_on_node2, probes):
    """`network-policy` on 3 nodes: both app replicas, on other nodes than the storage, clear and
    create every item (so they list and write through in-svc); a probe pod on an app node is refused
    at the storage pod. The component is removed afterwards (the node-loss tests run without it)."""
    env = {"INVOKE_TWOTIER_OVERLAY": "spread-app,network-policy", "INVOKE_TWOTIER_STORAGE_NODE": STORAGE_NODE.name}
    must("deploy", env=env)
    try:
        sto_ip = kubectl_json("get", "pods", "-l", "run=sto-app")["items"][0]["status"]["podIP"]
        app_node = next(n for n in storage_on_node2 if n != L.NODE_NAME)
        stranger = next(p["metadata"]["name"] for p in running_pods("app=twotier-mn-probe")
                        if p["spec"]["nodeName"] == app_node)
        t0 = time.monotonic()
        wait_until(lambda: refused("default", stranger, f"http://{sto_ip}:5000/items"),
                   f"the policies refusing {stranger} on {app_node}", 60)
        enforced = time.monotonic() - t0
        answers = {}
        for node, (pod,) in storage_on_node2.items():
            app = f"http://{kubectl_json('get', 'pod', pod)['status']['podIP']}:5001"
            cleared = http(f"{app}/clear")
            assert cleared[0] == 200 and cleared[1]["faileds"] == [], (node, cleared)
            answers[node] = http(f"{app}/createlist/5")
        assert answers == {n: (200, {"createds": [str(i) for i in range(5)], "deleteds": [], "faileds": []})
                           for n in storage_on_node2}, answers
        through_svc = http(f"http://{Node(1).ip}:31001/createlist/6")
        assert through_svc == (200, {"createds": ["5"], "deleteds": [], "faileds": []}), through_svc
        print(f"network-policy on {NODES} nodes: storage on {STORAGE_NODE.name}, app pods on {sorted(storage_on_node2)} "
              f"each cleared and created 5 items; a probe pod on {app_node} refused {enforced:.1f}s after the deploy")
    finally:
        kubectl("delete", "networkpolicy", "sto-allow-clients", "api-allow-clients", "--ignore-not-found")
    wait_until(lambda: http(f"http://{Node(1).ip}:31000/items/5", "DELETE")[0] == 200,
               "item 5 deleted through in-svc once the policies are gone", 60)


def test_storage_node_lost_app_answers_fast_json_503_and_recovers_with_every_item(storage_on_node2):
    url = f"http://{Node(1).ip}:31001/createlist/5"
    assert http(url) == (200, {"createds": [], "deleteds": [], "faileds": []})
    killed = time.monotonic()
    node_ops.kill(STORAGE_NODE)
    answers = []

    def answer_503s() -> bool:
        """One request (a request every 0.2 s); done when 50 have been answered 503."""
        t0 = time.monotonic()
        status, body = http(url, timeout=30)
        answers.append((t0 - killed, time.monotonic() - t0, status, body))
        return sum(1 for a in answers if a[2] == 503) >= 50

    wait_until(answer_503s, "50 answers of the app without its storage node", 300, interval=0.2)
    unavailable = [a for a in answers if a[2] == 503]
    assert all(a[2] in (200, 503) for a in answers), [a for a in answers if a[2] not in (200, 503)][:5]
    assert all(isinstance(a[3], dict) and a[3].get("error") for a in unavailable), unavailable[:3]
    first_503 = unavailable[0][0]
    slowest = max(a[1] for a in unavailable)
    # The node comes back (kubelet and containerd restart, as after a reboot).
    restarted = time.monotonic()
    node_ops.start(STORAGE_NODE, progress=lambda *_: None)
    wait_until(lambda: http(url, timeout=5)[0] == 200, "the app answering 200 again", 180, interval=0.5)
    recovered = time.monotonic() - restarted
    assert http(url) == (200, {"createds": [], "deleteds": [], "faileds": []})   # all 5 items still there
    assert list(pods_by_node("run=sto-app")) == [STORAGE_NODE.name]
    print(f"storage node {STORAGE_NODE.name} killed: first JSON 503 after {first_503:.2f}s, "
          f"{len(unavailable)}/{len(answers)} requests in {answers[-1][0]:.0f} s answered 503, slowest 503 took {slowest:.2f}s; "
          f"after its kubelet and containerd restarted, the app answered 200 with every item in {recovered:.1f}s")


def test_app_node_lost_requests_succeed_through_the_other_replica(storage_on_node2):
    victim = Node(max(i for i in range(2, NODES + 1) if Node(i).name in storage_on_node2))
    url = lambda i: f"http://{Node(1).ip}:31001/createlist/5"
    results: list = []
    stop = threading.Event()
    worker = threading.Thread(target=load, args=(url, stop, results), kwargs={"timeout": 5}, daemon=True)
    worker.start()
    try:
        more_results(results, 20)  # the load runs before the node dies
        killed = time.monotonic()
        node_ops.kill(victim)
        lost_pod = storage_on_node2[victim.name][0]
        lost_ip = kubectl_json("get", "pod", lost_pod)["status"]["podIP"]
        wait_until(lambda: out_svc_endpoints().get(lost_pod) is not True, "the lost pod's endpoint to go", 180)
        endpoint_gone = time.monotonic() - killed
        # node 1's kube-proxy (this host's iptables) no longer sends new connections to the lost pod
        wait_until(lambda: f"--to-destination {lost_ip}:" not in subprocess.run(
            ["iptables-save", "-t", "nat"], capture_output=True, text=True, timeout=30).stdout,
            f"node 1's kube-proxy rules without {lost_ip}", 120)
        rules_gone = time.monotonic()
        more_results(results, 50, after=rules_gone)
    finally:
        stop.set()
        worker.join(timeout=30)
    after_kill = [r for r in results if r[0] >= killed]
    failed = [r for r in after_kill if r[2] != 200]
    settled = [r for r in after_kill if r[0] >= rules_gone]
    assert settled and all(r[2] == 200 for r in settled), [r for r in settled if r[2] != 200][:5]
    last_failure = max((r[0] - killed for r in failed), default=0.0)
    print(f"app node {victim.name} killed: out-svc dropped its endpoint after {endpoint_gone:.1f}s; "
          f"{len(failed)}/{len(after_kill)} requests failed, the last {last_failure:.1f}s after the kill; "
          f"all {len(settled)} requests after that succeeded through the other replica")
    t0 = time.monotonic()
    node_ops.start(victim, progress=lambda *_: None)
    wait_until(lambda: localcluster.node_ready(victim.name), f"{victim.name} Ready again", 120)
    kubectl("rollout", "status", "deployment/api-dep", "--timeout=180s", timeout=200)
    print(f"app node {victim.name} restarted: Ready and api-dep complete again in {time.monotonic() - t0:.1f}s")
