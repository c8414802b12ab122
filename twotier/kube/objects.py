"""Reading Kubernetes objects (the API's JSON as dicts): one home for the digging.

``dig(obj, "spec.selector.matchLabels")`` walks dotted keys, treating a missing key or a null as
absent (``default``); the helpers name the reads the project makes in several places.
"""
from __future__ import annotations


def dig(obj, path: str, default=None):
    for key in path.split("."):
        if not isinstance(obj, dict) or obj.get(key) is None:
            return default
        obj = obj[key]
    return obj


def name(obj: dict) -> str:
    return dig(obj, "metadata.name", "")


def labels(obj: dict) -> dict:
    return dig(obj, "metadata.labels", {})


def annotation(obj: dict, key: str) -> str | None:
    return dig(obj, "metadata.annotations", {}).get(key)


def terminating(obj: dict) -> bool:
    return bool(dig(obj, "metadata.deletionTimestamp"))


def owned_by(obj: dict, uid: str | None) -> bool:
    return bool(uid) and any(o.get("uid") == uid for o in dig(obj, "metadata.ownerReferences", []))


def selector_string(match_labels: dict | None) -> str:
    """A label selector (``run=sto-app,tier=x``) from a matchLabels mapping."""
    return ",".join(f"{k}={v}" for k, v in sorted((match_labels or {}).items()))


def pod_selector(workload: dict) -> str:
    """The label selector of a workload's pods (Deployment, ReplicaSet, ...; "" if none)."""
    return selector_string(dig(workload, "spec.selector.matchLabels"))


def pod_spec(obj: dict) -> dict | None:
    """The pod spec inside a workload object (Deployment, StatefulSet, Pod, ...), if any."""
    return obj.get("spec") if obj.get("kind") == "Pod" else dig(obj, "spec.template.spec")


def containers(obj: dict) -> list[dict]:
    """Init containers, then containers, of a Pod or a workload's pod template."""
    spec = pod_spec(obj) or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def container_statuses(pod: dict) -> list[dict]:
    return [*dig(pod, "status.initContainerStatuses", []), *dig(pod, "status.containerStatuses", [])]


def pod_ready(pod: dict) -> bool:
    """Running, not being deleted, and every container ready."""
    statuses = dig(pod, "status.containerStatuses", [])
    return (dig(pod, "status.phase") == "Running" and not terminating(pod)
            and bool(statuses) and all(cs.get("ready") for cs in statuses))


def condition(obj: dict, kind: str) -> dict:
    """The status condition of type KIND ({} if absent)."""
    return next((c for c in dig(obj, "status.conditions", []) if c.get("type") == kind), {})
