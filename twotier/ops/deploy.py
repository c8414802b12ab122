"""`invoke deploy`: apply a stage's rendered objects, then wait like `kubectl rollout status`."""
from __future__ import annotations

import time

from twotier.errors import UserError
from twotier.images import kindload
from twotier.kube import apply, rollout
from twotier.ops import metrics


def deploy_objects(cluster, objs: list[dict], dry_run: bool, timeout: float, out=print,
                   check_images: bool = True) -> list:
    """Apply rendered objects in order, then wait until every Deployment has rolled out.

    First, unless ``check_images`` is off, ask the registry whether every image exists: a
    missing one stops the deploy before anything changes (a dry run only notes it)."""
    start = time.monotonic()
    apply.check_nodeports(cluster, objs)  # the other stage holding 31000 is the first thing to say
    metrics.check_autoscaling(cluster, objs)  # an HPA needs the resource metrics API (metrics-server)
    if check_images:
        where, missing = kindload.missing_images(cluster, objs)  # a kind cluster's nodes, or the registry
        if missing and dry_run:
            out(f"note: not in {where} (yet): " + ", ".join(missing)
                + "; a real deploy would stop here: `invoke push` first")
        elif missing:
            raise UserError(
                f"not in {where}: " + ", ".join(missing) + " (nothing was changed)",
                "build and push them first: `invoke push --stage ...`, or `invoke up` to build, "
                "push, deploy and smoke-check in one go")
    out(f"applying {len(objs)} objects to context {cluster.context}, namespace {cluster.namespace}"
        + (" (server dry run: nothing is changed)" if dry_run else ""))
    changes = apply.apply_objects(cluster, objs, dry_run=dry_run, out=out)
    if dry_run:
        would = [c for c in changes if c.action != "unchanged"]
        out(f"dry run: {len(would)} of {len(changes)} objects would change")
        return changes
    names = apply.deployments_of(objs)
    if names:
        out(f"waiting for {', '.join(names)} (timeout {timeout:.0f}s)")
        rollout.wait_for_rollouts(cluster, names, timeout=timeout, out=out)
    changed = sum(c.action != "unchanged" for c in changes)
    out(f"deployed: {changed} changed, {len(changes) - changed} unchanged, "
        f"all ready in {time.monotonic() - start:.1f}s")
    return changes
