"""`invoke cluster.up --provider kind` (setting `cluster_provider: kind`): a kind cluster whose node
image is built here from the local cluster's cached binaries (localcluster/kind/trial.sh does the
building and the `kind create`; docs/kind.md says how and why).

What it does: up (1 control-plane node + N-1 workers, bridge CNI with routes between the nodes' pod
subnets and no masquerading between pods, no default StorageClass, kind's local-registry recipe on
localhost:5010 with Debian's docker-registry, the local cluster's addons built from source:
metrics-server and kube-router's NetworkPolicy firewall), down (the node and registry containers and
the `kind` network, nothing else; the registry's data stays), status, kubeconfig, env (the settings
`invoke up` needs on it). Not done: the stock `kindest/node` image (no container registry here). A
kind cluster made by hand needs no settings: `invoke up` loads the images with `kind load`
(twotier/images/kindload.py; trial.sh image/config/cni make such a cluster here).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from localcluster import layout as L
from localcluster.errors import ClusterError

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "trial.sh"
CLUSTER = "twotier-kind"
STATE = L.STATE.parent / "kind"           # /var/lib/twotier/kind
KUBECONFIG = STATE / "kubeconfig"
CONTEXT = f"kind-{CLUSTER}"
REGISTRY_PORT = 5010   # kind's recipe says 5001: here that is `invoke serve`'s app port; 5000 is the local registry
REGISTRY = f"localhost:{REGISTRY_PORT}"
KIND_VERSION = "v0.33.0"   # trial.sh's default


def kind_cli() -> Path:
    """The kind CLI trial.sh builds, wrapped so that kind runs docker-shim (this host's dockerd can't
    grant --privileged); a directory of its own holds it as `kind`, for Tilt (which runs PATH's kind)."""
    return L.CACHE / "kind" / f"kind-{KIND_VERSION}" / "bin" / "kind"


def _env(nodes: int = 1) -> dict:
    return {**os.environ, "KIND_CLUSTER": CLUSTER, "KIND_NODES": str(nodes), "KIND_KUBECONFIG": str(KUBECONFIG),
            "KIND_REGISTRY": "1", "KIND_REGISTRY_PORT": str(REGISTRY_PORT), "KIND_REGISTRY_DATA": str(STATE / "registry"),
            "PATH": os.environ.get("PATH", "") + os.pathsep + "/usr/local/go/bin"}


def _script(step: str, nodes: int = 1, progress=print) -> None:
    """Run trial.sh STEP; its one-line-per-step progress (stderr) goes to PROGRESS."""
    proc = subprocess.Popen(["bash", str(SCRIPT), step], env=_env(nodes), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail = (tail + [line])[-40:]
        if line.startswith("[kind-trial"):
            progress(line.split("] ", 1)[-1])
    if proc.wait() != 0:
        raise ClusterError(f"kind: `{SCRIPT.name} {step}` failed:\n" + "\n".join(tail),
                           hint="the full log is named above; `invoke cluster.down --provider kind` removes a half-made cluster")


def _docker_ok() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def node_containers(label: str = "io.x-k8s.kind.cluster") -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label={label}={CLUSTER}",
                          "--format", "{{.Names}}"], capture_output=True, text=True)
    return sorted(out.stdout.split()) if out.returncode == 0 else []


def up(nodes: int = 1, progress=print) -> float:
    t0 = time.monotonic()
    if not _docker_ok():
        raise ClusterError("kind: dockerd is not running", hint="`invoke cluster.up` (the default provider) starts it")
    STATE.mkdir(parents=True, exist_ok=True)
    existing = node_containers()
    if len(existing) == nodes and KUBECONFIG.exists() and all(r[2] == "Ready" for r in _node_rows()):
        install_addons(progress)
        progress(f"the kind cluster is already up (context {CONTEXT}, {nodes} node{'s' if nodes > 1 else ''})")
        return time.monotonic() - t0
    _script("build", nodes, progress)
    _script("create", nodes, progress)   # deletes a cluster of that name first: kind cannot resize one
    install_addons(progress)
    progress(f"kind cluster {CLUSTER} up in {time.monotonic() - t0:.0f}s (context {CONTEXT}, KUBECONFIG={KUBECONFIG})")
    progress("for invoke up on it: eval \"$(invoke cluster.env --provider kind)\", or "
             + " ".join(f"{k}={v}" for k, v in settings_env(nodes).items()))
    return time.monotonic() - t0


def install_addons(progress=print) -> None:
    """The local cluster's addons built from source (localcluster/addons.py), the same binaries and
    manifests, with their images in the kind registry."""
    from kubernetes import client, config

    from localcluster import _apply, addons

    api_client = config.new_client_from_config(config_file=str(KUBECONFIG))
    apps = client.AppsV1Api(api_client)

    def available(addon) -> bool:
        kind, name = addon.workload
        read = apps.read_namespaced_daemon_set if kind == "DaemonSet" else apps.read_namespaced_deployment
        return addons.workload_available(kind, api_client.sanitize_for_serialization(
            read(name, "kube-system", _request_timeout=10)))

    addons.install(lambda text: _apply(text, api_client), available, REGISTRY, progress, timeout=180)
    progress("addons " + ", ".join(f"{a.name} {a.version}" for a in addons.BUILT_ADDONS) + " available")


def down(progress=print) -> None:
    _script("delete", progress=progress)
    KUBECONFIG.unlink(missing_ok=True)
    progress("the kind cluster is down")


def kubeconfig_path() -> Path:
    return KUBECONFIG


def settings_env(nodes: int | None = None) -> dict[str, str]:
    """What `invoke up` needs on this kind cluster: its kubeconfig, its registry, the volume-owner
    overlay (local-pv is a hostPath inside a node container: `invoke up` cannot prepare it from the
    host) and, with workers, local-pv on the first worker (kind taints the control-plane node)."""
    nodes = len(node_containers()) if nodes is None else nodes
    env = {"KUBECONFIG": str(KUBECONFIG), "INVOKE_TWOTIER_REGISTRY": REGISTRY, "INVOKE_TWOTIER_OVERLAY": "volume-owner"}
    if nodes > 1:
        env["INVOKE_TWOTIER_STORAGE_NODE"] = f"{CLUSTER}-worker"
    return env


def env_lines() -> list[str]:
    """`eval "$(invoke cluster.env --provider kind)"`: the default provider's lines (PATH with invoke,
    kubectl, tilt), KUBECONFIG pointing at the kind cluster, and settings_env()."""
    import shlex

    from twotier.dev.shellenv import env_lines as base_lines

    lines = [line for line in base_lines() if not line.startswith("export KUBECONFIG=")]
    return [f"export {k}={shlex.quote(v)}" for k, v in settings_env().items()] + lines


def _node_rows() -> list[tuple[str, str, str]]:
    if not KUBECONFIG.exists():
        return []
    kubectl = L.kubectl_path()
    out = subprocess.run([str(kubectl), "--kubeconfig", str(KUBECONFIG), "get", "nodes", "-o", "json"],
                         capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        return []
    rows = []
    for n in json.loads(out.stdout)["items"]:
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
        rows.append((f"node {n['metadata']['name']}", "-", "Ready" if ready else "NotReady"))
    return rows


def status_rows() -> list[tuple[str, str, str]]:
    rows = []
    for name in node_containers() + node_containers("io.x-k8s.kind.registry"):
        state = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}}", name],
                               capture_output=True, text=True).stdout.strip()
        rows.append((f"container {name}", "-", state or "unknown"))
    return rows + _node_rows()
