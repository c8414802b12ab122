"""`invoke clean`: delete everything the project created, in an order the finalizers allow.

Only objects the project owns are touched: each candidate is named by the render of every stage
(plus the loader pod) AND must carry the project's label on the live object; a same-named object
without it is reported and left alone. Finalizers are never stripped: the order makes them go
away on their own (pods gone -> the PVC's ``kubernetes.io/pvc-protection`` lifts; claim gone ->
the PV's ``kubernetes.io/pv-protection`` lifts). Running it again finds nothing and says so.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from twotier.errors import UserError
from twotier.kube.client import PROJECT_LABEL, live_namespace, owned
from twotier.kube.objects import dig, pod_selector
from twotier.poll import Timeout
from twotier.poll import poll as poll_until

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod")
NETWORK_KINDS = ("Ingress", "Service", "NetworkPolicy")
POLICY_KINDS = ("HorizontalPodAutoscaler", "PodDisruptionBudget")
CONFIG_KINDS = ("ConfigMap", "Secret", "RoleBinding", "Role", "ServiceAccount")
CLAIM_KINDS = ("PersistentVolumeClaim",)
VOLUME_KINDS = ("PersistentVolume", "StorageClass")

# (title, kinds, wait until gone before the next phase)
PHASES = [
    ("workloads", WORKLOAD_KINDS, True),
    ("services", NETWORK_KINDS, False),
    ("policies and config", POLICY_KINDS + CONFIG_KINDS, False),
    ("volume claims", CLAIM_KINDS, True),
    ("volumes", VOLUME_KINDS, True),
]


@dataclass(frozen=True)
class Target:
    api_version: str
    kind: str
    name: str
    namespace: str | None
    selector: str = ""  # for workloads: the label selector of their pods

    @property
    def ref(self) -> str:
        return f"{self.kind.lower()}/{self.name}"


def targets_from(objs: list[dict], namespace: str) -> list[Target]:
    """De-duplicated delete targets from rendered objects (all stages) and the loader pod."""
    seen, out = set(), []
    for obj in objs:
        kind = obj.get("kind", "")
        meta = obj.get("metadata") or {}
        ns = live_namespace(obj, namespace)
        key = (kind, ns, meta.get("name"))
        if key in seen:
            continue
        seen.add(key)
        selector = pod_selector(obj) if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet") else ""
        out.append(Target(obj.get("apiVersion", "v1"), kind, meta.get("name"), ns, selector))
    return out


def phase_of(kind: str) -> int:
    # unknown namespaced kinds: with policies and config (2), before the claims
    return next((i for i, (_title, kinds, _wait) in enumerate(PHASES) if kind in kinds), 2)


def plan(targets: list[Target]) -> list[tuple[str, list[Target], bool]]:
    """Targets grouped into the ordered delete phases (pure)."""
    phases = [(title, [], wait) for title, _k, wait in PHASES]
    for t in targets:
        phases[phase_of(t.kind)][1].append(t)
    return [p for p in phases if p[1]]


def _propagation(kind: str) -> str:
    # Foreground: the Deployment object stays until its ReplicaSets and pods are gone, so
    # "the Deployment is gone" also means "its pods are gone".
    return "Foreground" if kind in WORKLOAD_KINDS and kind != "Pod" else "Background"


def clean(cluster, targets: list[Target], timeout: float, out=print,
          progress_every: float = 5.0, clock=time.monotonic, sleep=time.sleep) -> dict:
    """Delete the project's objects phase by phase; wait for each phase that needs it."""
    label = f"{PROJECT_LABEL[0]}={PROJECT_LABEL[1]}"
    summary = {"deleted": [], "absent": [], "foreign": []}
    start = clock()
    for title, group, wait in plan(targets):
        waiting: list[Target] = []
        for t in group:
            live = cluster.get(t.api_version, t.kind, t.name, t.namespace)
            if live is None:
                summary["absent"].append(t.ref)
                continue
            if not owned(live):
                out(f"skip {t.ref}: it exists but is not labelled {label} (not the project's)")
                summary["foreign"].append(t.ref)
                continue
            if not dig(live, "metadata.deletionTimestamp"):
                grace = 1 if t.kind == "Pod" else None
                if cluster.delete(t.api_version, t.kind, t.name, t.namespace,
                                  propagation=_propagation(t.kind), grace_period=grace):
                    out(f"{t.ref} deleted")
            else:
                out(f"{t.ref} already terminating")
            summary["deleted"].append(t.ref)
            waiting.append(t)
        if wait and waiting:
            _wait_gone(cluster, title, waiting, timeout, start, out, progress_every, clock, sleep)
    if not summary["deleted"]:
        out("nothing to clean: none of the project's objects exist"
            + (f" (left alone: {', '.join(summary['foreign'])})" if summary["foreign"] else ""))
    else:
        out(f"clean: {len(summary['deleted'])} objects removed in {clock() - start:.0f}s")
    return summary


def _remaining(cluster, waiting: list[Target]) -> list[str]:
    """What is still there: the objects themselves, and the pods of deleted workloads."""
    left = []
    for t in waiting:
        live = cluster.get(t.api_version, t.kind, t.name, t.namespace)
        if live is not None:
            fins = dig(live, "metadata.finalizers", [])
            left.append(t.ref + (f" (finalizers: {', '.join(fins)})" if fins else ""))
        if t.selector:
            for pod in cluster.list("v1", "Pod", namespace=t.namespace, label_selector=t.selector):
                left.append(f"pod/{pod['metadata']['name']}")
    return left


def _wait_gone(cluster, title, waiting, timeout, start, out, progress_every, clock, sleep):
    left: list[str] = []
    said = [0.0]

    def gone() -> bool:
        left[:] = _remaining(cluster, waiting)
        return not left

    def progress(elapsed: float) -> None:
        if elapsed - said[0] >= progress_every:
            out(f"[{clock() - start:4.0f}s] waiting for {title} to go: {', '.join(left)}")
            said[0] = elapsed

    try:
        poll_until(gone, timeout=timeout, interval=1.0, what=title, on_wait=progress, clock=clock, sleep=sleep)
    except Timeout:
        raise UserError(
            f"timed out after {timeout:.0f}s waiting for {title} to go: {', '.join(left)}",
            "finalizers are not stripped on purpose: check what blocks them "
            "(`kubectl describe` the objects above), then run `invoke clean` again; "
            "raise twotier.timeouts.delete if it is only slow") from None
    out(f"[{clock() - start:4.0f}s] {title}: gone")
