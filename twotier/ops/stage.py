"""A stage's operations, each assembled once: deploy, clean, smoke.

`tasks.py`, the Tilt runner (`twotier.dev.tiltrun`) and the tests call these; each takes a
connected cluster and the settings, and goes down to render, apply, cleanup and the loader.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from localcluster import layout as localcluster
from twotier.kube import cleanup
from twotier.ops import hostvolume, loader, render, storagenode
from twotier.ops import smoke as checks
from twotier.ops.deploy import deploy_objects

if TYPE_CHECKING:  # annotations only: the settings are handed in
    from collections.abc import Mapping

    from twotier.settings import Settings


def deploy(cluster, settings: Settings, images: Mapping[str, str] | None = None, dry_run: bool = False,
           out=print) -> list:
    """Render settings.stage (IMAGES: see render.render_stage), pin local-pv to its node, apply it
    and wait for the rollout."""
    objs = render.render_stage(settings, settings.stage, images)
    objs = storagenode.pin_for_cluster(cluster, objs, settings)
    if cluster.context == localcluster.CONTEXT and not dry_run:
        hostvolume.prepare_all(objs, out=out)  # the node is this host (see hostvolume)
    elif not dry_run:
        hostvolume.prepare_in_kind(cluster, objs, out=out)  # a kind node is a container: docker exec
    return deploy_objects(cluster, objs, dry_run=dry_run, timeout=settings.timeouts.rollout, out=out)


def clean(cluster, settings: Settings, objs: list[dict] | None = None, out=print) -> dict:
    """Delete the project's objects among OBJS (default: every stage's and the loader pod) in
    the order finalizers allow, and wait until they are gone."""
    objs = render.every_stage_objects(settings) if objs is None else objs
    return cleanup.clean(cluster, cleanup.targets_from(objs, cluster.namespace),
                         timeout=settings.timeouts.delete, out=out)


def smoke(cluster, settings: Settings, stage: str | None = None, loader_ref: str | None = None,
          start_loader: bool = True, out=print) -> checks.Smoke:
    """The tutorial's checks of STAGE (default settings.stage) from the host and the loader pod
    (started first unless START_LOADER is off: Tilt runs its own)."""
    if start_loader:
        loader.start_loader(cluster, settings, loader_ref)
    return checks.run_smoke(cluster, stage or settings.stage,
                            lambda argv: loader.exec_in_loader(cluster, argv), out=out,
                            access=settings.access)
