"""Glue shared by the deploy/inspect/clean tasks: effective settings, renders, project targets.

Settings precedence (lowest to highest): invoke.yaml ``twotier:`` < ``INVOKE_TWOTIER_*``
environment variables (Invoke applies them to keys that exist; lists can't be set that way) <
task flags. ``effective(settings, {"stage": flag, ...})`` applies the flags that were given.
"""
from __future__ import annotations

import copy

from twotier.errors import UserError

STAGES = ("hello", "storage", "full")

# Which Deployment each tier name of `invoke logs --tier` means.
TIERS = {"hello": "f-webapp", "storage": "sto-dep", "app": "api-dep"}


def plain(value):
    """An Invoke DataProxy (or any mapping) as plain dicts and lists, detached from the config."""
    if hasattr(value, "items") and callable(value.items):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return copy.deepcopy(value)


def effective(settings, flags: dict | None = None) -> dict:
    """Settings with the given flags applied; ``None`` flags leave the setting alone.

    Keys may be dotted (``"timeouts.rollout"``) to reach nested settings."""
    result = plain(settings)
    for key, value in (flags or {}).items():
        if value is None:
            continue
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return result


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}", "use --stage hello, storage or full")
    return stage


def _manifests():
    try:
        from twotier import manifests  # noqa: PLC0415 - written by the manifests part
    except ImportError as err:
        raise UserError(f"the manifests module is not available ({err})",
                        "check twotier/manifests.py exists (see k8s/README.md)") from None
    return manifests


def image_refs(settings: dict, stage: str, inspect_base: bool = True) -> dict:
    """{seed image name: registry/name:content-tag} for a stage, as `invoke build` tags them."""
    from twotier import images  # noqa: PLC0415

    return images.image_map(images.plan(settings, stage, inspect_base=inspect_base))


def render(settings: dict, stage: str, refs: dict | None = None) -> list[dict]:
    """The objects `invoke render --stage` prints, in apply order."""
    check_stage(stage)
    refs = refs if refs is not None else image_refs(settings, stage)
    return list(_manifests().render_stage(settings, stage, images=refs))


def all_stage_objects(settings: dict) -> list[dict]:
    """Every object any stage renders (names and labels are what clean/status need)."""
    objs = []
    for stage in STAGES:
        objs.extend(render(settings, stage, image_refs(settings, stage, inspect_base=False)))
    return objs


def loader_manifest(settings: dict, ref: str | None = None) -> dict:
    """The loader Pod (k8s/loader) with the loader image: ``ref``, else `invoke build`'s tag."""
    from twotier import images  # noqa: PLC0415
    from twotier.loader import loader_pod  # noqa: PLC0415

    if not ref:
        ref = next(i.ref for i in images.plan(settings, "full") if i.role == "loader")
    return loader_pod(ref, settings.get("namespace") or "default")


def start_loader(cluster, settings: dict, ref: str | None = None):
    """Create or reuse the loader pod; a loader image missing from the registry is said first."""
    from twotier import loader, registrycheck  # noqa: PLC0415

    manifest = loader_manifest(settings, ref)
    missing = registrycheck.missing_images([manifest])
    if missing:
        raise UserError(f"the loader image is not in the registry: {', '.join(missing)}",
                        "build and push it: `invoke push` (or `invoke up`)")
    return loader.ensure_loader(cluster, manifest, timeout=float(settings["timeouts"]["rollout"]))


def project_targets(settings: dict, namespace: str):
    """Delete/status targets: every stage's objects, then the loader pod."""
    from twotier.cleanup import targets_from  # noqa: PLC0415

    objs = all_stage_objects(settings)
    objs.extend(_manifests().render_loader(settings, images={}))  # names only
    return targets_from(objs, namespace)


def connect(settings: dict, allow_context: str | None = None, check_namespace: bool = True):
    """The configured cluster (safety rule applied, API and namespace checked within seconds)."""
    from twotier import kube  # noqa: PLC0415

    return kube.connect(settings, allow_context=[allow_context] if allow_context else (),
                        check_namespace=check_namespace)


def deploy_objects(cluster, objs: list[dict], dry_run: bool, timeout: float, out=print,
                   check_images: bool = True) -> list:
    """Apply rendered objects in the safe order, then wait like `kubectl rollout status`.

    First, unless ``check_images`` is off, ask the registry whether every image exists: a
    missing one stops the deploy before anything changes (a dry run only notes it)."""
    import time  # noqa: PLC0415

    from twotier import apply, registrycheck, rollout  # noqa: PLC0415

    start = time.monotonic()
    apply.check_nodeports(cluster, objs)  # the other stage holding 31000 is the first thing to say
    if check_images:
        missing = registrycheck.missing_images(objs)
        if missing and dry_run:
            out("note: not in the registry (yet): " + ", ".join(missing)
                + "; a real deploy would stop here: `invoke push` first")
        elif missing:
            raise UserError(
                "not in the registry: " + ", ".join(missing) + " (nothing was changed)",
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


def logs_argv(kubectl: str, cluster, selector: str, follow: bool, tail: int) -> list[str]:
    # --ignore-errors: a pod still starting (its init container running) must not end the stream
    argv = [kubectl, *cluster.kubectl_args(), "logs", "--selector", selector, "--prefix",
            "--all-containers", "--ignore-errors", "--tail", str(tail), "--max-log-requests", "20"]
    if follow:
        argv.append("--follow")
    return argv


def tier_selector(cluster, tier: str | None) -> str:
    """Label selector of one tier's pods (from the live Deployment), or of every project pod."""
    from twotier.kube import PROJECT_LABEL  # noqa: PLC0415
    from twotier.rollout import selector_string  # noqa: PLC0415

    if not tier:
        return f"{PROJECT_LABEL[0]}={PROJECT_LABEL[1]}"
    if tier == "loader":
        return "app.kubernetes.io/name=loader"
    if tier not in TIERS:
        raise UserError(f"unknown tier {tier!r}", "use --tier " + ", ".join([*TIERS, "loader"]))
    dep = cluster.get("apps/v1", "Deployment", TIERS[tier])
    if dep is None:
        raise UserError(f"deployment {TIERS[tier]} (tier {tier}) is not deployed in namespace "
                        f"{cluster.namespace!r}", "deploy it first: `invoke deploy --stage ...`")
    return selector_string(((dep.get("spec") or {}).get("selector") or {}).get("matchLabels"))
