"""Resource metrics (metrics.k8s.io, served by metrics-server): is the API there, what pods use.

`invoke deploy` asks `check_autoscaling` first, so a stage with a HorizontalPodAutoscaler (the
`autoscale` component) on a cluster without resource metrics stops with a hint instead of leaving
an HPA whose target stays <unknown>. `invoke status` shows each pod's CPU and memory from
`pod_usage` when the API answers, and nothing extra when it does not.
"""
from __future__ import annotations

import json
import re

from twotier.errors import UserError
from twotier.kube.objects import condition, dig, name

METRICS_APISERVICE = "v1beta1.metrics.k8s.io"
HINT = ("the local cluster runs metrics-server as an addon: `invoke cluster.up` (re)applies it; on "
        "another cluster install metrics-server (sigs.k8s.io/metrics-server), or deploy without the "
        "`autoscale` component")


def apiservice_state(cluster) -> tuple[bool, str]:
    """(available, why not) of the metrics.k8s.io APIService."""
    svc = cluster.get("apiregistration.k8s.io/v1", "APIService", METRICS_APISERVICE)
    if svc is None:
        return False, f"the cluster has no APIService {METRICS_APISERVICE} (no metrics-server)"
    cond = condition(svc, "Available")
    if not cond:
        return False, f"APIService {METRICS_APISERVICE} reports no Available condition yet"
    if cond.get("status") == "True":
        return True, ""
    return False, (f"APIService {METRICS_APISERVICE} is not available: "
                   f"{cond.get('reason', '')} {cond.get('message', '')}".strip())


def check_autoscaling(cluster, objs: list[dict]) -> None:
    """Refuse HPAs the cluster cannot serve, or whose target the stage does not deploy."""
    hpas = [o for o in objs if o.get("kind") == "HorizontalPodAutoscaler"]
    if not hpas:
        return
    names = {(o.get("kind"), name(o)) for o in objs}
    for hpa in hpas:
        ref = dig(hpa, "spec.scaleTargetRef", {})
        if (ref.get("kind"), ref.get("name")) not in names:
            raise UserError(
                f"HorizontalPodAutoscaler {hpa['metadata']['name']} scales {ref.get('kind')} "
                f"{ref.get('name')}, which this stage does not deploy (nothing was changed)",
                "use the `autoscale` component with the full stage")
    ok, why = apiservice_state(cluster)
    if not ok:
        raise UserError(f"the stage has a HorizontalPodAutoscaler but the cluster serves no resource "
                        f"metrics: {why} (nothing was changed)", HINT)


_CPU = re.compile(r"^(\d+(?:\.\d+)?)(n|u|m)?$")
_MEM = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}


def millicores(quantity: str) -> float:
    """A CPU quantity as metrics-server reports it ("12345678n", "3m", "1") in millicores."""
    m = _CPU.match(str(quantity).strip())
    if not m:
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    scale = {"n": 1e-6, "u": 1e-3, "m": 1.0, None: 1000.0}[m.group(2)]
    return float(m.group(1)) * scale


def mebibytes(quantity: str) -> float:
    """A memory quantity ("23456Ki", "120Mi", "1024") in MiB."""
    q = str(quantity).strip()
    for suffix, factor in _MEM.items():
        if q.endswith(suffix) and q[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(q[: -len(suffix)]) * factor / 2**20
    return float(q) / 2**20


def usage_text(cpu_m: float, mem_mib: float) -> str:
    return f"cpu {cpu_m:.0f}m, mem {mem_mib:.0f}Mi"


def parse_pod_metrics(body: dict) -> dict[str, str]:
    """{pod name: "cpu 12m, mem 34Mi"} from a PodMetricsList (containers summed)."""
    out = {}
    for item in body.get("items") or []:
        cpu = mem = 0.0
        for c in item.get("containers") or []:
            usage = c.get("usage") or {}
            cpu += millicores(usage.get("cpu", "0"))
            mem += mebibytes(usage.get("memory", "0"))
        out[item["metadata"]["name"]] = usage_text(cpu, mem)
    return out


def pod_usage(cluster, namespace: str | None = None) -> dict[str, str]:
    """Each pod's usage in the namespace; {} when the metrics API does not answer (or not yet)."""
    from localcluster import raw_get  # a GET of any API path with the client's credentials

    ns = namespace or cluster.namespace
    try:
        body = raw_get(cluster.api_client, f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", (2, 5))
        return parse_pod_metrics(body if isinstance(body, dict) else json.loads(body))
    except Exception:  # no metrics-server, not ready yet, no permission: status shows no usage
        return {}
