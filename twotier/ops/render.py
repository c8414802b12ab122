"""Render a stage's Kubernetes objects from the kustomize sources in ``k8s/``.

``render_stage(settings, stage, images=...)`` returns the objects that ``deploy`` applies, in
apply order (PersistentVolume and PersistentVolumeClaim before the Deployments that mount them,
as the seed warns), and ``to_yaml(objs)`` prints them. Rendering needs no cluster: it runs
``kubectl kustomize`` on a small generated kustomization that points at the stage, adds the
chosen components (``overlay`` in settings, comma-separated names under ``k8s/components/``),
sets the namespace and substitutes the image references with kustomize's ``images:``.

``images`` maps the names the sources use (``first-app``, ``sto-img``, ``api-img``, ``loader``) to
full references; ``None`` computes the content-derived references ``invoke build`` produces
(see twotier.images), and ``{}`` keeps the bare names (for tools such as Tilt that substitute
their own).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from twotier import shape
from twotier.errors import UserError
from twotier.images import build as imagesmod
from twotier.images import registry
from twotier.kube.objects import containers
from twotier.ops.cluster import kubectl
from twotier.shape import K8S, ROOT

if TYPE_CHECKING:  # annotations only: the settings are handed in
    from twotier.settings import Settings

COMPONENTS = K8S / "components"
LOADER = "loader"
SEED_NAMESPACE = "default"


def available_components() -> list[str]:
    return sorted(p.name for p in COMPONENTS.iterdir() if (p / "kustomization.yaml").exists())


def parse_overlay(value: str | Iterable[str] | None) -> list[str]:
    """Component names from an ``overlay`` setting ("a,b" or a list); each must exist."""
    if value is None:
        return []
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n and n.strip()]
    known = available_components()
    for name in names:
        if name not in known:
            raise UserError(f"unknown overlay component {name!r}",
                            hint="overlay takes comma-separated names among: " + ", ".join(known)
                            + " (see k8s/README.md)")
    return names


def split_ref(ref: str) -> dict:
    """A kustomize ``images:`` entry's new* fields for REF (name[:tag] or name@digest)."""
    name, tag, digest = registry.parse_ref(ref)
    return {"newName": name, **({"digest": digest} if digest else {"newTag": tag} if tag else {})}


def kustomize(source: Path, *, components: list[str] = (), namespace: str | None = None,
              images: Mapping[str, str] | None = None) -> list[dict]:
    """Objects of kustomization SOURCE with COMPONENTS, NAMESPACE and IMAGES applied."""
    with tempfile.TemporaryDirectory(prefix="twotier-render-") as tmp:
        rel = lambda p: os.path.relpath(p, tmp)  # kustomize refuses absolute resource paths
        kustomization: dict = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [rel(source)],
            # every object the project creates carries its label (clean and status touch nothing
            # else), a component's own objects too; selectors and pod templates are left as written
            "labels": [{"pairs": dict([shape.load().label])}],
        }
        if components:
            kustomization["components"] = [rel(COMPONENTS / c) for c in components]
        if namespace:
            kustomization["namespace"] = namespace
        if images:
            kustomization["images"] = [{"name": name, **split_ref(ref)} for name, ref in sorted(images.items())]
        Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        proc = subprocess.run([kubectl(), "kustomize", tmp], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = re.sub(r"^E\d{4} [\d:.]+\s+\d+ \S+\] ", "", proc.stderr.strip())
        raise UserError(f"rendering {source.relative_to(ROOT)} failed: {detail}",
                        hint="check the kustomize sources under k8s/ (kubectl kustomize k8s/<stage>)")
    return [obj for obj in yaml.safe_load_all(proc.stdout) if obj]


def _namespace(settings: Settings) -> str:
    return settings.namespace or SEED_NAMESPACE


def _retarget_cluster_dns(objs: list[dict], namespace: str) -> None:
    """STO_API names in-svc in the seed's namespace; point it at the namespace we deploy to."""
    if namespace == SEED_NAMESPACE:
        return
    for obj in objs:
        for container in containers(obj):
            for env in container.get("env") or []:
                value = env.get("value")
                if isinstance(value, str):
                    env["value"] = value.replace(f".{SEED_NAMESPACE}.svc.", f".{namespace}.svc.")


def _images_for(settings: Settings, stage: str, images: Mapping[str, str] | None) -> dict[str, str]:
    if images is None:
        return imagesmod.image_map(imagesmod.plan(settings, stage))
    return dict(images)


def _check_images(objs: list[dict], images: Mapping[str, str]) -> None:
    if not images:
        return
    for obj in objs:
        for container in containers(obj):
            if container.get("image") in shape.load().image_names.values():
                raise UserError(f"no image reference given for {container['image']!r} "
                                f"({obj['kind']} {obj['metadata']['name']})",
                                hint="pass images={name: ref} for every image the stage uses")


def render(source: Path, settings: Settings, *, images: Mapping[str, str],
           overlay: str | Iterable[str] | None = None) -> list[dict]:
    components = parse_overlay(settings.overlay if overlay is None else overlay)
    namespace = _namespace(settings)
    # kustomize already orders its output for applying: volumes and claims before the pods that
    # mount them, Services before Deployments
    objs = kustomize(source, components=components, namespace=namespace, images=images)
    _retarget_cluster_dns(objs, namespace)
    _check_images(objs, images)
    return objs


def render_stage(settings: Settings, stage: str, images: Mapping[str, str] | None = None,
                 overlay: str | Iterable[str] | None = None) -> list[dict]:
    """The objects of STAGE (hello | storage | full) in kustomize's order, as `deploy` applies them.

    ``images``: {name used in k8s/: reference}; None = the content-derived references of
    `invoke build`; {} = keep the bare names. ``overlay``: component names (default: settings).
    """
    shape.load().stage(stage)
    return render(K8S / stage, settings, images=_images_for(settings, stage, images), overlay=overlay)


def loader_ref(settings: Settings) -> str:
    """The loader image as `invoke build` tags it (its own folder is its context: one tag for every stage)."""
    return next(img.ref for img in imagesmod.plan(settings, "hello") if img.role == "loader")


def render_loader(settings: Settings, ref: str | None = None) -> list[dict]:
    """The in-cluster probe pod `loader` (shell + curl) with image REF (default: `invoke build`'s
    tag); ``ref=""`` keeps the bare name (for names only, or for Tilt)."""
    ref = loader_ref(settings) if ref is None else ref
    images = {shape.load().loader.image: ref} if ref else {}
    return render(K8S / LOADER, settings, images=images, overlay=[])


def loader_pod(settings: Settings, ref: str | None = None) -> dict:
    """The loader Pod manifest (k8s/loader, rendered)."""
    pods = [o for o in render_loader(settings, ref) if o.get("kind") == "Pod"]
    if len(pods) != 1:
        raise UserError("k8s/loader must render exactly one Pod", "check k8s/loader/kustomization.yaml")
    return pods[0]


def every_stage_objects(settings: Settings) -> list[dict]:
    """Every object any stage renders, with the configured overlay and with each component alone
    (an HPA or NetworkPolicies deployed under another overlay than today's), and the loader pod:
    what clean and status look for (names and labels only, so the images are left bare)."""
    renders = [(stage, None) for stage in shape.load().stages]
    renders += [(list(shape.load().stages)[-1], [component]) for component in available_components()]
    objs: dict[tuple, dict] = {}
    for stage, overlay in renders:
        for obj in render_stage(settings, stage, images={}, overlay=overlay):
            meta = obj["metadata"]
            objs.setdefault((obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]), obj)
    return list(objs.values()) + render_loader(settings, ref="")


def to_yaml(objs: Iterable[dict]) -> str:
    """A multi-document YAML stream of OBJS ("---" between documents)."""
    return "---\n".join(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False) for obj in objs)
