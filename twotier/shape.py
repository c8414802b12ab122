"""The system's shape, read from system.yaml: stages, tiers, their names, images, ports, probes.

Everything that needs to know what twotier is made of asks this module; nothing else spells
out a Deployment, Service, image or port of a tier.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from twotier.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_FILE = ROOT / "system.yaml"
SERVICES = ROOT / "services"
K8S = ROOT / "k8s"
BUILD = ROOT / "build"


@dataclass(frozen=True)
class View:
    file: str      # relative to the tier's folder
    function: str  # a Flask view whose first jsonify( the live-update benchmark marks


@dataclass(frozen=True)
class Tier:
    name: str
    title: str
    folder: str
    package: str
    env_prefix: str
    image: str
    deployment: str
    service: str
    selector: dict
    port: int
    node_port: int
    check_path: str
    uses: tuple[str, ...] = ()
    view: View | None = None
    debug_port: int | None = None

    @property
    def directory(self) -> Path:
        return SERVICES / self.folder


@dataclass(frozen=True)
class Loader:
    folder: str
    image: str
    pod: str
    selector: dict


@dataclass(frozen=True)
class Stage:
    name: str
    tutorial: str
    tiers: tuple[Tier, ...]

    @property
    def images(self) -> tuple[str, ...]:
        """Image roles the stage builds, in build order (its tiers, then the loader)."""
        return (*(t.name for t in self.tiers), "loader")


@dataclass(frozen=True)
class Shape:
    label: tuple[str, str]
    tiers: dict[str, Tier]
    loader: Loader
    common: str
    stages: dict[str, Stage] = field(default_factory=dict)

    def stage(self, name: str) -> Stage:
        """The stage called ``name``; an unknown name is a clear error listing the known ones."""
        try:
            return self.stages[name]
        except KeyError:
            raise UserError(f"unknown stage {name!r}",
                            "use --stage " + ", ".join(self.stages)) from None

    def tier(self, name: str) -> Tier:
        try:
            return self.tiers[name]
        except KeyError:
            raise UserError(f"unknown tier {name!r}", "use one of " + ", ".join(self.tiers)) from None

    @property
    def image_names(self) -> dict[str, str]:
        """{role: the tutorial's image name} for every tier and the loader."""
        return {**{t.name: t.image for t in self.tiers.values()}, "loader": self.loader.image}

    def folder_of(self, role: str) -> str:
        return self.loader.folder if role == "loader" else self.tier(role).folder


def parse(data: dict) -> Shape:
    tiers = {}
    for name, t in data["tiers"].items():
        view = View(**t["view"]) if t.get("view") else None
        tiers[name] = Tier(name=name, title=t["title"], folder=t["folder"], package=t["package"],
                           env_prefix=t["env_prefix"], image=t["image"], deployment=t["deployment"],
                           service=t["service"], selector=dict(t["selector"]), port=int(t["port"]),
                           node_port=int(t["node_port"]), check_path=t["check_path"],
                           uses=tuple(t.get("uses", ())), view=view, debug_port=t.get("debug_port"))
    for tier in tiers.values():
        for used in tier.uses:
            if used not in tiers:
                raise ValueError(f"system.yaml: tier {tier.name} uses unknown tier {used!r}")
    stages = {}
    for name, s in data["stages"].items():
        unknown = [t for t in s["tiers"] if t not in tiers]
        if unknown:
            raise ValueError(f"system.yaml: stage {name} names unknown tiers {unknown}")
        stages[name] = Stage(name, s.get("tutorial", ""), tuple(tiers[t] for t in s["tiers"]))
    ((label_key, label_value),) = data["label"].items()
    return Shape(label=(label_key, label_value), tiers=tiers, loader=Loader(**data["loader"]),
                 common=data["common"], stages=stages)


@lru_cache(maxsize=1)
def load(path: Path = SYSTEM_FILE) -> Shape:
    return parse(yaml.safe_load(path.read_text()))
