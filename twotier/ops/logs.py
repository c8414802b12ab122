"""`invoke logs`: the kubectl command that streams one tier's pods (or all the project's)."""
from __future__ import annotations

from twotier import shape
from twotier.errors import UserError
from twotier.kube.objects import pod_selector, selector_string


def logs_argv(kubectl: str, cluster, selector: str, follow: bool, tail: int) -> list[str]:
    # --ignore-errors: a pod still starting (its init container running) must not end the stream
    argv = [kubectl, *cluster.kubectl_args(), "logs", "--selector", selector, "--prefix",
            "--all-containers", "--ignore-errors", "--tail", str(tail), "--max-log-requests", "20"]
    if follow:
        argv.append("--follow")
    return argv


def tier_selector(cluster, tier: str | None) -> str:
    """Label selector of one tier's pods (from the live Deployment), or of every project pod."""
    system = shape.load()
    if not tier:
        return "=".join(system.label)
    if tier == "loader":
        return selector_string(system.loader.selector)
    if tier not in system.tiers:
        raise UserError(f"unknown tier {tier!r}", "use --tier " + ", ".join([*system.tiers, "loader"]))
    name = system.tiers[tier].deployment
    dep = cluster.get("apps/v1", "Deployment", name)
    if dep is None:
        raise UserError(f"deployment {name} (tier {tier}) is not deployed in namespace "
                        f"{cluster.namespace!r}", "deploy it first: `invoke deploy --stage ...`")
    return pod_selector(dep)
