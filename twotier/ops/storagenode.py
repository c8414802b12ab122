"""Which node holds the storage tier's data: local-pv is pinned to it by node affinity.

A hostPath volume is a directory on one node. Pinning the PersistentVolume to that node (the way
`local` volumes work) makes the scheduler put every pod that claims it there, so both storage
replicas always see the same directory, on a cluster of any size. The node is, in order: the one
an existing local-pv is pinned to (node affinity is immutable, and that node holds the items),
the `storage_node` setting, the node k8s/storage/pv.yaml names if the cluster has it (the local
cluster's first node), else the first Ready schedulable node by name, chosen at the first deploy.
"""
from __future__ import annotations

from twotier.errors import UserError
from twotier.kube.objects import condition, dig

PV_NAME = "local-pv"
HOSTNAME = "kubernetes.io/hostname"


def _hostname_expr(pv: dict) -> dict | None:
    terms = dig(pv, "spec.nodeAffinity.required.nodeSelectorTerms", [])
    for term in terms:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == HOSTNAME and expr.get("operator") == "In":
                return expr
    return None


def pinned_node(pv: dict | None) -> str | None:
    expr = _hostname_expr(pv or {})
    return (expr.get("values") or [None])[0] if expr else None


def storage_pv(objs: list[dict]) -> dict | None:
    return next((o for o in objs if o.get("kind") == "PersistentVolume" and o["metadata"]["name"] == PV_NAME
                 and _hostname_expr(o) is not None), None)


def pin(objs: list[dict], node: str) -> list[dict]:
    """OBJS with local-pv pinned to NODE (no-op for stages without it)."""
    pv = storage_pv(objs)
    if pv is not None:
        _hostname_expr(pv)["values"] = [node]
    return objs


def _ready_schedulable(node: dict) -> bool:
    return not dig(node, "spec.unschedulable") and condition(node, "Ready").get("status") == "True"


def choose(cluster, objs: list[dict], setting: str = "") -> str | None:
    """The node local-pv must be pinned to on this cluster (None if the stage has no local-pv)."""
    pv = storage_pv(objs)
    if pv is None:
        return None
    live = pinned_node(cluster.get("v1", "PersistentVolume", PV_NAME))
    if live:
        if setting and setting != live:
            raise UserError(f"{PV_NAME} is pinned to node {live}, which holds the stored items, but the "
                            f"storage_node setting says {setting}",
                            hint=f"unset storage_node (or set it to {live}); to move the data, copy it to "
                                 f"{setting}'s directory, then `invoke clean` and deploy again")
        return live
    nodes = cluster.list("v1", "Node")
    names = sorted(n["metadata"]["name"] for n in nodes)
    if setting:
        if setting not in names:
            raise UserError(f"the storage_node setting names {setting}, which is not a node of this cluster",
                            hint="choose one of: " + ", ".join(names))
        return setting
    default = pinned_node(pv)
    if default in names:
        return default
    ready = sorted(n["metadata"]["name"] for n in nodes if _ready_schedulable(n))
    if not ready:
        raise UserError("no Ready, schedulable node to keep the storage tier's volume on",
                        hint="check `kubectl get nodes`")
    return ready[0]


def pin_for_cluster(cluster, objs: list[dict], settings) -> list[dict]:
    node = choose(cluster, objs, settings.storage_node)
    return pin(objs, node) if node else objs
