"""Where the local cluster keeps its binaries, state and logs, and the fixed network plan."""
from __future__ import annotations

import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.env"
BUILD_SCRIPT = HERE / "build-binaries.sh"

CACHE = Path(os.environ.get("TWOTIER_CACHE", "/var/cache/twotier"))
STATE = Path(os.environ.get("TWOTIER_STATE", "/var/lib/twotier/cluster"))
RUN = Path(os.environ.get("TWOTIER_RUN", "/run/twotier"))
REGISTRY_DATA = STATE.parent / "registry"

PKI = STATE / "pki"
LOGS = STATE / "logs"
PIDS = RUN / "pids"
KUBECONFIG = STATE / "kubeconfig"
CONTEXT = "twotier-local"
NODE_NAME = "twotier-node"

CONTAINERD_ROOT = STATE / "containerd"
CONTAINERD_STATE = RUN / "containerd"
CONTAINERD_SOCK = CONTAINERD_STATE / "containerd.sock"
CNI_CONF_DIR = STATE / "cni" / "net.d"
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_IPAM_DIR = STATE / "cni" / "ipam"
KUBELET_ROOT = STATE / "kubelet"
POD_LOGS = STATE / "pod-logs"
ETCD_DATA = STATE / "etcd"

BRIDGE = "twotier0"
POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SVC_IP = "10.96.0.1"
DNS_IP = "10.96.0.10"
DNS_DOMAIN = "cluster.local"
REGISTRY_HOST = "localhost:5000"
APISERVER_PORT = 6443

# Nodes 2..N (see nodes.py): each in its own network and mount namespace, on one host bridge like
# kind's docker network; the host (node 1) is 10.250.0.1 on it and routes between pod subnets.
MAX_NODES = 9
NODES_BRIDGE = "twotier-nodes"
NODES_CIDR = "10.250.0.0/24"
NODES_GATEWAY = "10.250.0.1"

# Ports the cluster listens on (checked free before start; the registry is checked apart).
PORTS = {
    "etcd": [2379, 2380],
    "kube-apiserver": [APISERVER_PORT],
    "kube-controller-manager": [10257],
    "kube-scheduler": [10259],
    "kubelet": [10250, 10248],
    "kube-proxy": [10256, 10249],
}


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """The versions of what the cluster runs: localcluster/versions.env, with the chosen Kubernetes
    release's own etcd/containerd/CoreDNS/crictl/pause when it is not the default (versions.py)."""
    from localcluster import versions as V

    return V.effective()


def pause_image() -> str:
    """The sandbox image containerd runs every pod in (built from the release's build/pause)."""
    return f"registry.k8s.io/pause:{versions()['PAUSE_VERSION']}"


def bin_dir(component: str) -> Path:
    """Directory holding the cached build of one component (kubernetes, etcd, ...)."""
    key = {"cri-tools": "CRITOOLS"}.get(component, component.upper())
    return CACHE / "bin" / f"{component}-{versions()[key + '_VERSION']}"


def binary(component: str, name: str | None = None) -> Path:
    return bin_dir(component) / (name or component)


def kubectl_path() -> Path:
    return binary("kubernetes", "kubectl")


def node_ip() -> str:
    """The address of the interface that carries the default route."""
    out = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True).stdout
    m = re.search(r"\bsrc (\d+\.\d+\.\d+\.\d+)", out)
    if m:
        return m.group(1)
    return "127.0.0.1"
