"""`invoke cluster.up --provider kind --nodes 3` (docs/kind.md): a kind cluster whose node image is
built here, and on it what the local cluster's own tests prove: every node Ready with its own IP and
pod subnet; the addons built from source (kube-router's NetworkPolicy firewall on every node,
metrics-server verifying the kubelets); the tutorial's stages through the tasks; the tutorial's
flaw with its own Step 3 manifests (replicas on two nodes diverge); `invoke up` with its 17 PASS
lines and one item list through every node; a rolling update of both tiers under load with 0 failed
requests; the network-policy component holding across nodes; the autoscale component's HPA reading
CPU from metrics-server; `tilt ci`. `cluster.down --provider kind` then leaves no node or registry
container and no `kind` network.

Self-contained (no fixture of conftest.py is used), so it can run alone, without touching the local
cluster: `pytest --noconftest tests/e2e/test_kind.py`. Under the whole e2e run the session fixtures
(the local cluster up, `invoke clean` on it) apply as for every module; this module only touches
the kind cluster, through its own kubeconfig.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from localcluster import layout as L
from localcluster.kind import provider as kind
from tests.e2e.conftest import must as invoke
from tests.e2e.conftest import wait_for
from tests.support.traffic import failed_answers, http, restart_under_load
from tests.support.tutorial import step3_manifests

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]
NODES = 3
WORKERS = (f"{kind.CLUSTER}-worker", f"{kind.CLUSTER}-worker2")   # kind taints its control plane


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
    out = subprocess.run([str(L.kubectl_path()), "--kubeconfig", str(kind.KUBECONFIG), *args], input=input,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0 or not check, f"kubectl {' '.join(args)}: {out.stderr[-2000:]}"
    return out.stdout


def kubectl_json(*args: str):
    return json.loads(kubectl(*args, "-o", "json"))


def node_ips() -> dict[str, str]:
    return {n["metadata"]["name"]: next(a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP")
            for n in kubectl_json("get", "nodes")["items"]}


def ready_pods(selector: str) -> list[dict]:
    return [p for p in kubectl_json("get", "pods", "-l", selector)["items"]
            if not p["metadata"].get("deletionTimestamp")
            and p["status"].get("containerStatuses") and all(c.get("ready") for c in p["status"]["containerStatuses"])]


def pods_by_node(selector: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in ready_pods(selector):
        out.setdefault(p["spec"]["nodeName"], []).append(p["metadata"]["name"])
    return out


def in_pod(pod: str, url: str, method: str = "GET"):
    """The JSON answer to METHOD URL, asked from inside POD (its image's Python)."""
    code = ("import json, sys, urllib.request; r = urllib.request.urlopen(urllib.request.Request(sys.argv[1], "
            "method=sys.argv[2]), timeout=10); print(r.read().decode())")
    return json.loads(kubectl("exec", pod, "--", "python", "-c", code, url, method))


def docker_lines(*args: str) -> list[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.split()


@pytest.fixture(scope="module")
def kind_cluster():
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("dockerd is not running: `invoke cluster.up` starts it", pytrace=False)
    invoke("cluster.up", "--provider", "kind", "--nodes", str(NODES))
    yield kind
    invoke("cluster.down", "--provider", "kind")


def test_nodes_ready_with_own_ips_and_pod_subnets(kind_cluster):
    nodes = kubectl_json("get", "nodes")["items"]
    assert len(nodes) == NODES
    for n in nodes:
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]), n["metadata"]["name"]
    assert len({n["spec"]["podCIDR"] for n in nodes}) == NODES
    assert len(set(node_ips().values())) == NODES


def test_registry_advertised_and_no_default_storageclass(kind_cluster):
    cm = kubectl_json("-n", "kube-public", "get", "configmap", "local-registry-hosting")
    assert f'host: "{kind.REGISTRY}"' in cm["data"]["localRegistryHosting.v1"]
    classes = kubectl_json("get", "storageclass")["items"]
    assert not [c for c in classes if c["metadata"].get("annotations", {}).get(
        "storageclass.kubernetes.io/is-default-class") == "true"], "a default StorageClass would take sto-pvc"


def test_addons_on_every_node_with_verified_kubelets(kind_cluster):
    """The local cluster's addons, built from source, on kind: kube-router's firewall on each node;
    metrics-server serving every node's metrics while verifying the kubelets' serving certificates
    (issued by the cluster CA: serverTLSBootstrap and approved CSRs), not skipping the check."""
    router = [p for p in kubectl_json("-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-router")["items"]
              if all(c.get("ready") for c in p["status"].get("containerStatuses", [{}]))]
    assert sorted(p["spec"]["nodeName"] for p in router) == sorted(node_ips()), router
    args = kubectl_json("-n", "kube-system", "get", "deployment", "metrics-server")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert "--kubelet-insecure-tls" not in args and any(a.startswith("--kubelet-certificate-authority=") for a in args)
    metrics = wait_for(lambda: (m := json.loads(kubectl("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes",
                                                        check=False) or "{}").get("items", []))
                       and len(m) == NODES and m, "metrics of every node", 120)
    assert {m["metadata"]["name"] for m in metrics} == set(node_ips())


def test_the_tutorials_first_stages_through_the_tasks(kind_cluster):
    """Step 1-2 (hello) and deploy1.yaml (storage) as the tasks deploy and check them, each stage alone."""
    env = kind.settings_env()
    for stage in ("hello", "storage"):
        out = invoke("up", "--stage", stage, env=env).stdout
        assert re.search(r"^PASS", out, re.M) and "FAIL" not in out, out[-3000:]
        invoke("clean", env=env)


def test_tutorial_step3_on_two_nodes_replicas_diverge(kind_cluster):
    """The tutorial's hostPath PV on two kind nodes: an item written through one storage replica is
    missing through the other. Changes to its text: our images (stlottini/* cannot be pulled here),
    a required anti-affinity so the two replicas always land on two nodes, and each node's
    directory handed to the image's user (uid 10001; the tutorial's image ran as root)."""
    env = kind.settings_env()
    invoke("push", "--stage", "full", env=env)
    refs = {ref.rsplit("/", 1)[-1].split(":")[0]: ref
            for ref in re.findall(r"image: (\S+)", invoke("render", "--stage", "full", env=env).stdout)}
    docs = step3_manifests(refs)
    for node in WORKERS:
        subprocess.run(["docker", "exec", node, "sh", "-c", "rm -rf /tmp/data/kubetestpv && "
                        "install -d -o 10001 -g 10001 -m 770 /tmp/data/kubetestpv"], check=True)
    manifest = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    kubectl("apply", "-f", "-", input=manifest)
    try:
        try:
            pods = wait_for(lambda: len(p := ready_pods("run=sto-app")) == 2 and p, "two Ready tutorial storage pods", 180)
        except Exception:
            print(kubectl("get", "pods,pvc,pv", "-o", "wide", check=False),
                  kubectl("get", "events", "--sort-by=.lastTimestamp", check=False)[-3000:])
            raise
        assert sorted(p["spec"]["nodeName"] for p in pods) == list(WORKERS)
        first, second = pods[0]["metadata"]["name"], pods[1]["metadata"]["name"]
        # no readiness probe in the tutorial: a pod is Ready before its server listens
        for pod in (first, second):
            wait_for(lambda pod=pod: in_pod(pod, "http://127.0.0.1:5000/items").get("items") is not None,
                     f"{pod} answering", 60)
        # the tutorial's own check: write through the first pod, read through the second
        assert in_pod(first, "http://127.0.0.1:5000/items/FromFirst", "PUT") == {"created": {"FromFirst": True}}
        assert "FromFirst" in in_pod(first, "http://127.0.0.1:5000/items")["items"]
        assert "FromFirst" not in in_pod(second, "http://127.0.0.1:5000/items")["items"]
    finally:
        kubectl("delete", "--wait=true", "--timeout=120s", "-f", "-", input=manifest, check=False)
        for node in WORKERS:
            subprocess.run(["docker", "exec", node, "rm", "-rf", "/tmp/data/kubetestpv"], check=False)


def test_invoke_up_passes_on_kind(kind_cluster):
    # what `invoke cluster.env --provider kind` exports: the kind cluster's kubeconfig and registry; the
    # volume-owner overlay, since local-pv is a hostPath inside a node container, which `invoke up`'s
    # host-side preparation of the directory cannot reach; local-pv on the worker, since kind taints
    # its control-plane node when there are workers
    env = kind.settings_env()
    assert env["INVOKE_TWOTIER_STORAGE_NODE"] == f"{kind.CLUSTER}-worker"
    res = invoke("up", env=env)
    passes = [line for line in res.stdout.splitlines() if line.startswith("PASS")]
    assert len(passes) == 17, res.stdout[-3000:]
    storage = pods_by_node("run=sto-app")
    assert list(storage) == [f"{kind.CLUSTER}-worker"] and len(storage[f"{kind.CLUSTER}-worker"]) == 2, storage


def test_one_item_list_through_every_node(kind_cluster):
    ips = node_ips()
    status, body = http(f"http://{ips[f'{kind.CLUSTER}-worker2']}:31000/items/through-worker2", "PUT")
    assert status == 201 and body == {"created": {"through-worker2": True}}, body
    try:
        for node, ip in ips.items():
            assert "through-worker2" in http(f"http://{ip}:31000/items")[1]["items"], node
    finally:
        http(f"http://{ips[f'{kind.CLUSTER}-worker']}:31000/items/through-worker2", "DELETE")


def test_zero_failed_requests_through_a_rolling_update(kind_cluster):
    ips = list(node_ips().values())
    url = lambda i: f"http://{ips[i % len(ips)]}:31001/" + ("createlist/20" if i % 2 == 0 else "clear")
    results = restart_under_load(kubectl, url)
    failed = failed_answers(results)
    print(f"rolling update on kind, {NODES} nodes: {len(results)} requests over every node IP, {len(failed)} failed")
    assert len(results) > 40 and failed == [], failed[:5]


def run_client(name: str, node: str, labels: str, image: str) -> None:
    """A curl-capable pod (the loader's image) with LABELS, pinned to NODE."""
    overrides = {"spec": {"nodeName": node, "automountServiceAccountToken": False, "containers": [{
        "name": name, "image": image, "command": ["sleep", "600"]}]}}
    kubectl("run", name, f"--image={image}", f"--labels={labels}", "--restart=Never",
            f"--overrides={json.dumps(overrides)}")


def curl_exit(pod: str, url: str) -> int:
    """curl's exit code for GET URL from POD, 3 s at most (7: refused, 28: timed out)."""
    return subprocess.run([str(L.kubectl_path()), "--kubeconfig", str(kind.KUBECONFIG), "exec", pod, "--",
                           "curl", "-sSf", "-m", "3", "-o", "/dev/null", url],
                          capture_output=True, text=True, timeout=30).returncode


def test_network_policy_holds_across_nodes(kind_cluster):
    """With the network-policy component, in-svc answers only the app tier and the loader, judged by
    the client pod's labels also when it runs on another node than the storage pods (pod traffic
    between nodes keeps its source address); a stranger is refused on either node."""
    # internal-storage: this host is not a node, so the policy refuses it at the storage NodePort
    # (`invoke up` with network-policy alone says so in its FAIL line, tests/unit/test_ops_smoke.py)
    env = {**kind.settings_env(), "INVOKE_TWOTIER_OVERLAY": "volume-owner,network-policy,internal-storage"}
    storage_node, other_node = WORKERS
    clients = {"as-loader-far": (other_node, "run=loader,twotier.test=kind-policy"),
               "stranger-far": (other_node, "twotier.test=kind-policy"),
               "stranger-near": (storage_node, "twotier.test=kind-policy")}
    try:
        out = invoke("up", env=env).stdout
        assert not re.search(r"^FAIL", out, re.M) and re.search(r"^smoke \(full\): 1[67] passed, 0 failed", out, re.M)
        assert ":31000" not in out, "internal-storage: no NodePort on in-svc"
        assert {p["metadata"]["name"] for p in kubectl_json("get", "networkpolicy")["items"]} == {
            "sto-allow-clients", "api-allow-clients"}
        assert list(pods_by_node("run=sto-app")) == [storage_node]
        image = kubectl_json("get", "pod", "loader")["spec"]["containers"][0]["image"]
        for name, (node, labels) in clients.items():
            run_client(name, node, labels, image)
        kubectl("wait", "--for=condition=Ready", *[f"pod/{n}" for n in clients], "--timeout=120s", timeout=150)
        sto_ips = [p["status"]["podIP"] for p in ready_pods("run=sto-app")]
        for url in ["http://in-svc:5000/items", *(f"http://{ip}:5000/items" for ip in sto_ips)]:
            assert curl_exit("as-loader-far", url) == 0, url
            assert curl_exit("stranger-far", url) in (7, 28), url
            assert curl_exit("stranger-near", url) in (7, 28), url
        # the app tier is public, and reaches the storage tier from wherever it runs
        created = kubectl("exec", "stranger-far", "--", "curl", "-sSf", "-m", "10", "http://out-svc:5001/createlist/1")
        assert json.loads(created)["faileds"] == [], created
        kubectl("exec", "stranger-far", "--", "curl", "-sSf", "-m", "10", "http://out-svc:5001/clear")
    finally:
        kubectl("delete", "pod", "-l", "twotier.test=kind-policy", "--wait=false", check=False)
        invoke("clean", env=env)


def hpa_cpu(name: str) -> int | None:
    """The CPU utilization the HPA last read from the metrics API, once it scales on it."""
    st = kubectl_json("get", "hpa", name).get("status", {})
    active = any(c["type"] == "ScalingActive" and c["status"] == "True" for c in st.get("conditions", []))
    cpu = [m["resource"]["current"].get("averageUtilization") for m in st.get("currentMetrics") or []
           if m.get("type") == "Resource" and m["resource"]["name"] == "cpu"]
    return cpu[0] if active and cpu and cpu[0] is not None else None


def test_autoscale_component_reads_cpu_on_kind(kind_cluster):
    """The autoscale component's HorizontalPodAutoscaler gets api-dep's CPU from metrics-server."""
    env = {**kind.settings_env(), "INVOKE_TWOTIER_OVERLAY": "volume-owner,autoscale"}
    try:
        res = invoke("up", env=env)
        assert "FAIL" not in res.stdout, res.stdout[-3000:]
        hpa = kubectl_json("get", "hpa")["items"]
        assert [h["spec"]["scaleTargetRef"]["name"] for h in hpa] == ["api-dep"], hpa
        name = hpa[0]["metadata"]["name"]
        read = wait_for(lambda: (cpu := hpa_cpu(name)) is not None and [cpu], "the HPA to read api-dep's CPU",
                        180, every=3)   # a list: 0% is a reading too
        print(f"HPA on kind reads api-dep at {read[0]}% CPU")
    finally:
        invoke("clean", env=env)


def test_tilt_ci_on_kind(kind_cluster):
    """`invoke tilt.ci` on the kind cluster: Tilt finds the registry in local-registry-hosting."""
    env = kind.settings_env()
    invoke("clean", env=env)
    res = invoke("tilt.ci", env=env)
    assert "SUCCESS. All workloads are healthy." in res.stdout
    assert re.search(r"smoke \(full\): \d+ passed, 0 failed", res.stdout), res.stdout[-3000:]


def test_down_leaves_nothing(kind_cluster):
    invoke("cluster.down", "--provider", "kind")
    assert not docker_lines("ps", "-aq", "--filter", f"label=io.x-k8s.kind.cluster={kind.CLUSTER}")
    assert not docker_lines("ps", "-aq", "--filter", f"label=io.x-k8s.kind.registry={kind.CLUSTER}")
    assert "kind" not in docker_lines("network", "ls", "--format", "{{.Name}}")
    invoke("cluster.up", "--provider", "kind", "--nodes", "1")  # the fixture's teardown removes it again
