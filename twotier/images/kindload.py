"""Images into a kind cluster's nodes with `kind load`, when the cluster advertises no registry.

A kind cluster made by hand (`kind create cluster`) has no registry: kind's way in is `kind load
docker-image`, which copies an image from the local Docker engine into every node's containerd.
Tilt decides the same way (internal/build/image_builder.go, shouldUseKINDLoad): the cluster is kind
and no registry is advertised (KEP-1755's ConfigMap kube-public/local-registry-hosting), so load,
don't push. A cluster is kind when its nodes' providerID is ``kind://<provider>/<cluster>/<node>``
(kind's kubeadm config sets it), else when its context is named ``kind-<cluster>``.

The references stay what the manifests name (``<registry>/<name>:<content tag>``): the tag is never
``latest`` and every container has ``imagePullPolicy: IfNotPresent``, so the kubelet finds the
loaded image and never pulls. Before deploying, the images are looked up in the nodes' containerd
(``crictl images`` through ``docker exec``: a kind node is a container named after the node).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from twotier.errors import UserError
from twotier.kube.objects import dig

PROVIDER_PREFIX = "kind://"
CONTEXT_PREFIX = "kind-"
REGISTRY_CONFIGMAP = ("kube-public", "local-registry-hosting")
REGISTRY_KEY = "localRegistryHosting.v1"
LOAD_TIMEOUT = 900.0  # seconds for one `kind load` of a stage's images (hundreds of MB each)
INSTALL_HINT = ("install the kind CLI (https://kind.sigs.k8s.io/docs/user/quick-start/#installation, or "
                "`go install sigs.k8s.io/kind@v0.33.0`) and put it on PATH; on this project's machine "
                "`localcluster/kind/trial.sh kind` builds it under /var/cache/twotier/kind. Or give the "
                "cluster a registry (kind's local-registry recipe) and set twotier.registry to it")


@dataclass(frozen=True)
class KindCluster:
    name: str  # kind's cluster name (`kind get clusters`), not the context's
    nodes: tuple[str, ...]  # node names = the node containers' names
    registry: str = ""  # the registry the cluster advertises ("" = none: images go in with kind load)

    @property
    def loads(self) -> bool:
        return not self.registry


def cluster_name(context: str, nodes: list[dict]) -> str | None:
    """kind's name for the cluster of these nodes, or None when it is not a kind cluster."""
    for node in nodes:
        provider_id = dig(node, "spec.providerID", "") or ""
        if provider_id.startswith(PROVIDER_PREFIX):
            parts = provider_id[len(PROVIDER_PREFIX):].split("/")
            if len(parts) == 3 and parts[1]:
                return parts[1]
    if context.startswith(CONTEXT_PREFIX) and len(context) > len(CONTEXT_PREFIX):
        return context[len(CONTEXT_PREFIX):]
    return None


def advertised_registry(configmap: dict | None) -> str:
    """The host of KEP-1755's localRegistryHosting.v1 in the ConfigMap, or ""."""
    text = ((configmap or {}).get("data") or {}).get(REGISTRY_KEY) or ""  # the key has dots: no dig()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return ""
    return str(data.get("host") or "") if isinstance(data, dict) else ""


def detect(cluster) -> KindCluster | None:
    """The kind cluster behind CLUSTER, or None (any other cluster: images go to the registry)."""
    from localcluster import layout as localcluster

    if cluster.context == localcluster.CONTEXT:
        return None
    nodes = cluster.list("v1", "Node")
    name = cluster_name(cluster.context, nodes)
    if name is None:
        return None
    namespace, cm_name = REGISTRY_CONFIGMAP
    registry = advertised_registry(cluster.get("v1", "ConfigMap", cm_name, namespace=namespace))
    return KindCluster(name, tuple(sorted(n["metadata"]["name"] for n in nodes)), registry)


def detect_for(settings) -> KindCluster | None:
    """detect() on the configured cluster, for `invoke push`; None when it cannot be reached (the
    push then goes to the registry, as it did before clusters were looked at)."""
    from twotier.ops.cluster import connect

    try:
        return detect(connect(settings, check_namespace=False))
    except UserError:
        return None


# ---------------------------------------------------------------------------------------------
# the kind CLI
# ---------------------------------------------------------------------------------------------

def kind_binary() -> str:
    """The kind CLI: the project's build for this machine (its docker shim: dockerd here cannot
    grant --privileged, which `kind load` asks for on `docker exec`), else PATH's `kind`."""
    from localcluster.kind import provider

    built = provider.kind_cli()
    if built.exists():
        return str(built)
    found = shutil.which("kind")
    if found:
        return found
    raise UserError("the kind CLI is needed to load the images into the kind cluster's nodes (it advertises "
                    "no registry), but `kind` is not on PATH", hint=INSTALL_HINT)


def load(target: KindCluster, refs: list[str], progress=print, kind: str | None = None,
         timeout: float = LOAD_TIMEOUT) -> None:
    """`kind load docker-image` REFS into every node of TARGET (kind skips nodes that have them)."""
    kind = kind or kind_binary()
    argv = [kind, "load", "docker-image", "--name", target.name, *refs]
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"`kind load docker-image` into kind cluster {target.name} took over {timeout:.0f}s",
                        hint="check the node containers (`docker ps`) and the Docker engine") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        raise UserError(f"`kind load docker-image --name {target.name}` failed:\n{tail}",
                        hint=f"is kind cluster {target.name} running (`{Path(kind).name} get clusters`, "
                             "`docker ps`)? The images must be in the local Docker engine (`invoke build`)")
    for ref in refs:
        progress(f"{ref}: loaded into kind cluster {target.name} ({', '.join(target.nodes)})")
    progress(f"kind load: {len(refs)} images in {time.monotonic() - start:.1f}s")


# ---------------------------------------------------------------------------------------------
# which images the nodes have
# ---------------------------------------------------------------------------------------------

def normalize(ref: str) -> str:
    """REF as containerd names it: Docker Hub shorthand gets docker.io/ (and library/)."""
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if rest else f"docker.io/library/{ref}"


def node_images(node: str, timeout: float = 30.0) -> set[str] | None:
    """The image tags in NODE's containerd (`crictl images`), or None when they can't be read."""
    docker = shutil.which("docker")
    if not docker:
        return None
    try:
        proc = subprocess.run([docker, "exec", node, "crictl", "images", "-o", "json"], capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            return None
        images = json.loads(proc.stdout).get("images") or []
    except (subprocess.TimeoutExpired, ValueError, AttributeError):
        return None
    return {tag for img in images for tag in img.get("repoTags") or []}


def missing_in_nodes(target: KindCluster, refs: list[str], read=None) -> list[str]:
    """REFS some node of TARGET lacks; a node whose images can't be read is left to the rollout."""
    read = read or node_images
    missing: list[str] = []
    for node in target.nodes:
        have = read(node)
        if have is not None:
            missing += [ref for ref in refs if normalize(ref) not in have and ref not in missing]
    return [ref for ref in refs if ref in missing]


def missing_images(cluster, objs: list[dict]) -> tuple[str, list[str]]:
    """(where the images were looked for, the images of OBJS not there): the nodes of a kind
    cluster without a registry, else the registry (twotier.images.registry)."""
    from twotier.images import registry

    target = detect(cluster)
    if target is not None and target.loads:
        return f"kind cluster {target.name}'s nodes", missing_in_nodes(target, registry.images_of(objs))
    return "the registry", registry.missing_images(objs)
