"""Acceptance of the local cluster itself: a real node, registry, DNS, Services, PV, logs, exec."""
from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from localcluster import layout as L
from tests.e2e.conftest import kubectl, kubectl_json
from tests.support.traffic import python_image
from twotier.poll import poll

pytestmark = pytest.mark.cluster

PROBE_NODEPORT = 30999
PROBE_PY = """\
import http.server, json, os, socket
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pod": socket.gethostname(), "path": self.path}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers()
        self.wfile.write(body)
        print("served", self.path, flush=True)
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
"""


def _manifest(image: str) -> str:
    return f"""
apiVersion: v1
kind: PersistentVolume
metadata: {{name: twotier-probe-pv, labels: {{app: twotier-probe}}}}
spec:
  storageClassName: probe-manual
  capacity: {{storage: 1Mi}}
  accessModes: [ReadWriteMany]
  hostPath: {{path: /tmp/twotier-probe-pv, type: DirectoryOrCreate}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: twotier-probe-pvc, namespace: default}}
spec:
  storageClassName: probe-manual
  accessModes: [ReadWriteMany]
  resources: {{requests: {{storage: 1Mi}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: twotier-probe, namespace: default}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: twotier-probe}}}}
  template:
    metadata: {{labels: {{app: twotier-probe}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: probe
        image: {image}
        command: [python3, /probe.py]
        readinessProbe: {{httpGet: {{path: /ready, port: 8080}}, periodSeconds: 1}}
        volumeMounts: [{{name: data, mountPath: /data}}]
      volumes: [{{name: data, persistentVolumeClaim: {{claimName: twotier-probe-pvc}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: twotier-probe, namespace: default}}
spec:
  type: NodePort
  selector: {{app: twotier-probe}}
  ports: [{{port: 80, targetPort: 8080, nodePort: {PROBE_NODEPORT}}}]
"""


@pytest.fixture(scope="module")
def probe(cluster):
    """A Deployment of an image built here, pushed to the local registry and pulled by the cluster."""
    ref = python_image("twotier-probe", PROBE_PY, user="10001")
    kubectl("apply", "-f", "-", input=_manifest(ref))
    kubectl("rollout", "status", "deployment/twotier-probe", "--timeout=120s")
    # kube-proxy programs the Service a moment after the pod is Ready: a test picked alone (-k)
    # would otherwise call the NodePort in that instant and be refused
    poll(lambda: _answers(f"http://127.0.0.1:{PROBE_NODEPORT}/ready"), timeout=60, interval=1,
         what="kube-proxy to program the probe's Service (its NodePort answering on this host)")
    pod = kubectl_json("get", "pods", "-l", "app=twotier-probe")["items"][0]
    yield {"image": ref, "pod": pod["metadata"]["name"], "pod_ip": pod["status"]["podIP"]}
    kubectl("delete", "--wait=true", "deployment/twotier-probe", "service/twotier-probe", "pvc/twotier-probe-pvc",
            "pv/twotier-probe-pv", check=False)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _exec(pod: str, code: str) -> str:
    return kubectl("exec", pod, "--", "python3", "-c", code).strip()


def test_node_is_ready_with_pinned_version(cluster):
    node = kubectl_json("get", "node", L.NODE_NAME)
    assert node["status"]["nodeInfo"]["kubeletVersion"] == L.versions()["KUBERNETES_VERSION"]
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"


def test_no_default_storage_class(cluster):
    classes = kubectl_json("get", "storageclass")["items"]
    default = [c["metadata"]["name"] for c in classes
               if c["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class") == "true"]
    assert default == []


def test_registry_is_announced(cluster):
    cm = kubectl_json("get", "configmap", "-n", "kube-public", "local-registry-hosting")
    assert 'host: "localhost:5000"' in cm["data"]["localRegistryHosting.v1"]


def test_image_from_local_registry_runs(probe):
    pod = kubectl_json("get", "pod", probe["pod"])
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is True
    assert status["image"].endswith(probe["image"].split("/", 1)[1])


def test_pods_resolve_service_names(probe):
    code = "import socket; print(socket.gethostbyname('{}'))"
    svc_ip = kubectl_json("get", "service", "twotier-probe")["spec"]["clusterIP"]
    assert _exec(probe["pod"], code.format("twotier-probe")) == svc_ip
    assert _exec(probe["pod"], code.format("twotier-probe.default.svc.cluster.local")) == svc_ip
    assert _exec(probe["pod"], code.format("kubernetes.default")) == L.KUBERNETES_SVC_IP


def test_cluster_ip_answers_from_a_pod(probe):
    """Through its own Service (the only endpoint is the pod itself). kube-proxy programs the
    Service's DNAT a moment after the pod is Ready; a call that wins that race is not answered
    (with the policy engine, "No route to host" after 3 s), so the check waits for the answer."""
    code = ("import urllib.request\ntry:\n"
            "    print(urllib.request.urlopen('http://twotier-probe/x', timeout=5).read().decode())\n"
            "except OSError as err:\n    print('no answer:', err)")
    out = poll(lambda: (o := _exec(probe["pod"], code)) and not o.startswith("no answer") and o,
               timeout=60, interval=1, what="the probe's own Service answering from the pod")
    assert '"path": "/x"' in out


def test_node_port_answers_from_the_host(probe):
    for host in ("127.0.0.1", L.node_ip()):
        with urllib.request.urlopen(f"http://{host}:{PROBE_NODEPORT}/np", timeout=5) as r:
            assert b'"/np"' in r.read()


def test_pod_ip_answers_from_the_host(probe):
    with urllib.request.urlopen(f"http://{probe['pod_ip']}:8080/direct", timeout=5) as r:
        assert b'"/direct"' in r.read()


def test_host_path_pv_binds_and_is_writable(probe):
    assert kubectl_json("get", "pvc", "twotier-probe-pvc")["status"]["phase"] == "Bound"
    assert kubectl_json("get", "pv", "twotier-probe-pv")["spec"]["claimRef"]["name"] == "twotier-probe-pvc"
    # The hostPath is root-owned; the probe runs as uid 10001, so write as root through the host.
    Path("/tmp/twotier-probe-pv/from-host").write_text("x")
    assert "from-host" in _exec(probe["pod"], "import os; print(os.listdir('/data'))")


def test_logs_and_exec_work(probe):
    with urllib.request.urlopen(f"http://127.0.0.1:{PROBE_NODEPORT}/logged", timeout=5):
        pass
    poll(lambda: "served /logged" in kubectl("logs", probe["pod"]), timeout=10, interval=0.5,
         what="the request to appear in kubectl logs")
    assert kubectl("exec", probe["pod"], "--", "id", "-u").strip() == "10001"
