"""`invoke status`: a readable table of the project's objects, their readiness and URLs.

Rows come from the live cluster: every object the render of any stage names (and the loader pod)
that exists and carries the project's label, plus the pods of the project's Deployments.
NodePort Services get URLs on the node's InternalIP (the seed's `kubectl get nodes -o wide`);
with access ``port-forward`` each Service is reached through a short-lived port-forward on
127.0.0.1 instead, and the row says whether it answered and how to open one yourself.
"""
from __future__ import annotations

from datetime import UTC, datetime

from twotier.kube.client import owned
from twotier.kube.objects import dig, pod_selector, terminating
from twotier.kube.rollout import rollout_state_safe
from twotier.ops.metrics import pod_usage
from twotier.tables import table

HEADERS = ("KIND", "NAME", "READY", "AGE", "DETAILS")


def human_age(seconds: float) -> str:
    """kubectl's short durations: 45s, 3m12s, 2h5m, 3d4h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d{h}h" if h else f"{d}d"


def age_of(obj: dict, now: datetime) -> str:
    ts = dig(obj, "metadata.creationTimestamp")
    if not ts:
        return "-"
    if isinstance(ts, datetime):
        created = ts
    else:
        created = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return human_age((now - created).total_seconds())


def pod_ready(pod: dict) -> str:
    statuses = dig(pod, "status.containerStatuses", [])
    total = len(statuses) or len(dig(pod, "spec.containers", []))
    return f"{sum(1 for c in statuses if c.get('ready'))}/{total}"


def pod_details(pod: dict) -> str:
    status = pod.get("status") or {}
    words = ["Terminating" if terminating(pod) else status.get("phase") or "Unknown"]
    for cs in status.get("containerStatuses") or []:
        if dig(cs, "state.waiting.reason"):
            words = [cs["state"]["waiting"]["reason"]]
    restarts = sum(c.get("restartCount") or 0 for c in status.get("containerStatuses") or [])
    if restarts:
        words.append(f"restarts {restarts}")
    if status.get("podIP"):
        words.append(f"IP {status['podIP']}")
    return ", ".join(words)


def row_for(obj: dict, now: datetime, node_ip: str | None, reach=None) -> tuple[str, str, str, str, str]:
    kind = obj.get("kind", "")
    name = dig(obj, "metadata.name", "")
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    ready, details = "-", ""
    if kind == "Deployment":
        ready = f"{status.get('readyReplicas') or 0}/{spec.get('replicas', 1)}"
        details = rollout_state_safe(obj).replace(f'deployment "{name}" ', "")
    elif kind == "Pod":
        ready, details = pod_ready(obj), pod_details(obj)
    elif kind == "Service":
        ports = []
        for p in spec.get("ports") or []:
            text = f"{p.get('port')}"
            if p.get("nodePort"):
                text += f":{p['nodePort']}"
            ports.append(text + f"/{p.get('protocol', 'TCP')}")
        details = f"{spec.get('type', 'ClusterIP')} {spec.get('clusterIP', '')} {','.join(ports)}"
        urls = reach(obj) if reach else service_urls(obj, node_ip)
        if urls:
            details += "  " + " ".join(urls)
    elif kind in ("PersistentVolume", "PersistentVolumeClaim"):
        phase = status.get("phase", "")
        ready = "yes" if phase == "Bound" else "no"
        cap = dig(spec, "capacity.storage") or dig(status, "capacity.storage") or \
            dig(spec, "resources.requests.storage", "")
        details = f"{phase} {cap} {','.join(spec.get('accessModes') or [])}".strip()
        claim = spec.get("claimRef") or {}
        if claim.get("name"):
            details += f" claim {claim.get('namespace')}/{claim['name']}"
        if spec.get("volumeName"):
            details += f" volume {spec['volumeName']}"
    elif kind == "PodDisruptionBudget":
        ready = f"{status.get('currentHealthy', 0)}/{status.get('desiredHealthy', 0)}"
        details = f"disruptions allowed {status.get('disruptionsAllowed', 0)}"
    if terminating(obj) and kind != "Pod":
        details = ("Terminating " + details).strip()
    return (kind, name, ready, age_of(obj, now), details)


def service_urls(svc: dict, node_ip: str | None) -> list[str]:
    if not node_ip:
        return []
    return [f"http://{node_ip}:{p['nodePort']}" for p in dig(svc, "spec.ports", []) if p.get("nodePort")]


def format_table(rows: list[tuple], headers=HEADERS) -> str:
    return table(headers, rows, gap=3)


def collect(cluster, targets) -> list[dict]:
    """Live project objects for the given delete/status targets, plus their pods (in order)."""
    found, seen = [], set()
    for t in targets:
        live = cluster.get(t.api_version, t.kind, t.name, t.namespace)
        if live is None or not owned(live):
            continue
        live.setdefault("kind", t.kind)
        found.append(live)
        if t.kind == "Deployment":
            for pod in sorted(cluster.list("v1", "Pod", namespace=t.namespace, label_selector=pod_selector(live)),
                              key=lambda p: p["metadata"]["name"]):
                key = pod["metadata"]["name"]
                if key not in seen:
                    seen.add(key)
                    pod.setdefault("kind", "Pod")
                    found.append(pod)
    return found


def forwarded_reach(cluster):
    """For access port-forward: a Service's row gets what a fresh port-forward to it answered."""
    from twotier.errors import UserError
    from twotier.kube.portforward import PortForward, wait_answering

    def reach(svc: dict) -> list[str]:
        name = svc["metadata"]["name"]
        port = dig(svc, "spec.ports", [{}])[0].get("port")
        try:
            with PortForward(cluster, name, port) as fwd:
                code = wait_answering(fwd.url + "/healthz")
        except UserError:
            code = None
        said = f"answers /healthz {code}" if code else "does not answer"
        return [f"port-forward {said} (kubectl port-forward svc/{name} <local port>:{port})"]
    return reach


def status_report(cluster, targets, now: datetime | None = None, access: str = "nodeport") -> str:
    now = now or datetime.now(UTC)
    objs = collect(cluster, targets)
    head = (f"context {cluster.context}, namespace {cluster.namespace}, API {cluster.server}")
    if not objs:
        return head + "\nnothing of the project is deployed here: run `invoke deploy` or `invoke up`"
    reach = forwarded_reach(cluster) if access == "port-forward" else None
    ips = [] if reach else cluster.node_ips()
    node_ip = ips[0] if ips else None
    order = {"PersistentVolume": 0, "PersistentVolumeClaim": 1, "Service": 2,
             "PodDisruptionBudget": 3, "Deployment": 4, "Pod": 5}
    rows = [row_for(o, now, node_ip, reach) for o in objs]
    usage = pod_usage(cluster)  # each pod's CPU and memory from metrics-server; {} without it
    rows = [(*r[:4], f"{r[4]}, {usage[r[1]]}") if r[0] == "Pod" and r[1] in usage else r for r in rows]
    rows.sort(key=lambda r: (order.get(r[0], 9), r[1]))
    return head + (f", node {node_ip}" if node_ip else "") + ("  (access: port-forward)" if reach else "") \
        + "\n" + format_table(rows)
