"""The user's settings, read once into a typed object that the rest of the machinery receives.

Precedence, lowest first (docs/configuration.md): the defaults below, invoke.yaml, twotier.local.yaml,
INVOKE_TWOTIER_<KEY>[_<SUB>] environment variables, task flags (``Settings.with_flags``).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from twotier import shape
from twotier.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ENV_PREFIX = "INVOKE_TWOTIER_"
ACCESS_MODES = ("nodeport", "port-forward")
CLUSTER_PROVIDERS = ("local", "kind")
# What ./bootstrap.sh decides when nothing says otherwise: no registry is reachable from the
# reference machine, so images build FROM the local Debian base; the local cluster's registry.
BOOTSTRAP_DEFAULTS = {"base_image": "local", "registry": "localhost:5000"}
# Recorded only when given to the bootstrap in the environment (empty means the local cluster).
BOOTSTRAP_OPTIONAL = ("kubeconfig", "context")


def local_file() -> Path:
    """This machine's settings file: twotier.local.yaml at the root ($TWOTIER_LOCAL_SETTINGS elsewhere)."""
    return Path(os.environ.get("TWOTIER_LOCAL_SETTINGS") or ROOT / "twotier.local.yaml")


@dataclass(frozen=True)
class Timeouts:
    rollout: float = 180.0  # seconds to wait for Deployments
    delete: float = 120.0   # seconds to wait for deletions
    api: float = 5.0        # seconds per Kubernetes API call before "unreachable"
    tilt_ci: float = 900.0  # seconds `invoke tilt.ci` gives `tilt ci`


def _forward_ports() -> dict[str, int]:
    """127.0.0.1 ports of tilt up's port-forwards: 10000 + each full-stage tier's port."""
    return {t.name: 10000 + t.port for t in shape.load().stage("full").tiers}


@dataclass(frozen=True)
class Serve:
    storage_port: int = field(default_factory=lambda: shape.load().tier("storage").port)  # system.yaml's
    app_port: int = field(default_factory=lambda: shape.load().tier("app").port)
    storage_dir: str = ""  # empty = a temporary directory, removed on exit


@dataclass(frozen=True)
class Settings:
    registry: str = "localhost:5000"
    images: Mapping[str, str] = field(default_factory=dict)  # role -> image name overrides
    base_image: str = ""
    context: str = ""
    kubeconfig: str = ""
    allowed_contexts: tuple[str, ...] = ("twotier-local",)
    namespace: str = "default"
    storage_node: str = ""  # node holding local-pv's data ("" = kept, else chosen at first deploy)
    cluster_nodes: int = 1  # nodes of the local cluster (invoke cluster.up --nodes N)
    cluster_kubernetes: str = ""  # the local cluster's Kubernetes release ("" = localcluster/versions.env's)
    cluster_provider: str = "local"  # what invoke cluster.* make: local (the project's cluster) | kind
    stage: str = "full"
    overlay: str = ""
    field_manager: str = "twotier"
    access: str = "nodeport"  # how the host reaches the Services: nodeport | port-forward
    forward_ports: Mapping[str, int] = field(default_factory=_forward_ports)
    timeouts: Timeouts = field(default_factory=Timeouts)
    serve: Serve = field(default_factory=Serve)

    @classmethod
    def from_mapping(cls, data: Mapping | None) -> Settings:
        """Settings from a plain mapping shaped like invoke.yaml's ``twotier:``; bad values are
        a UserError that names the key."""
        data = plain(data or {})
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in data or data[f.name] is None:
                continue
            value = data[f.name]
            if f.name == "timeouts":
                value = _nested(Timeouts, value, "timeouts")
            elif f.name == "serve":
                value = _nested(Serve, value, "serve")
            elif f.name == "forward_ports":
                if not isinstance(value, Mapping):
                    raise UserError("setting twotier.forward_ports must be a mapping of tier to port")
                value = {str(k): int(v) for k, v in value.items()}
            elif f.name == "images":
                if not isinstance(value, Mapping):
                    raise UserError("setting twotier.images must be a mapping of tier to image name")
                value = {str(k): str(v) for k, v in value.items() if v}
            elif f.name == "allowed_contexts":
                value = tuple(str(v) for v in ([value] if isinstance(value, str) else value))
            elif f.type in ("int", int):
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    raise UserError(f"setting twotier.{f.name} must be a whole number, got {value!r}") from None
            else:
                value = str(value).strip()
            kwargs[f.name] = value
        s = cls(**kwargs)
        if s.access not in ACCESS_MODES:
            raise UserError(f"access must be one of {', '.join(ACCESS_MODES)}, got {s.access!r}",
                            "set twotier.access in invoke.yaml, or INVOKE_TWOTIER_ACCESS=port-forward")
        if s.cluster_provider not in CLUSTER_PROVIDERS:
            raise UserError(f"cluster_provider must be one of {', '.join(CLUSTER_PROVIDERS)}, got {s.cluster_provider!r}",
                            "set twotier.cluster_provider in invoke.yaml, or INVOKE_TWOTIER_CLUSTER_PROVIDER=kind")
        return dataclasses.replace(s, registry=s.registry.rstrip("/"))

    @classmethod
    def from_invoke(cls, config, local_file: Path | None = None, environ=None) -> Settings:
        """The settings of an Invoke context's config (invoke.yaml + env already merged by
        Invoke), with this machine's twotier.local.yaml slotted in below the environment."""
        environ = os.environ if environ is None else environ
        merged = plain(config.get("twotier", {}) if hasattr(config, "get") else config)
        for key, value in read_local(local_file).items():  # (None = the default file)
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                for sub, subvalue in value.items():
                    if f"{ENV_PREFIX}{key}_{sub}".upper() not in environ:
                        merged[key][sub] = subvalue
            elif f"{ENV_PREFIX}{key}".upper() not in environ:
                merged[key] = value
        return cls.from_mapping(merged)

    def with_flags(self, **flags) -> Settings:
        """These settings with the task flags that were given (``None`` = not given);
        ``timeouts__rollout=`` reaches a nested setting."""
        top, nested = {}, {}
        for key, value in flags.items():
            if value is None:
                continue
            if "__" in key:
                group, sub = key.split("__", 1)
                nested.setdefault(group, {})[sub] = value
            else:
                top[key] = value
        result = dataclasses.replace(self, **top)
        for group, values in nested.items():
            result = dataclasses.replace(result, **{group: dataclasses.replace(getattr(result, group), **values)})
        return result


def _nested(kind, value, name: str):
    if not isinstance(value, Mapping):
        raise UserError(f"setting twotier.{name} must be a mapping")
    known = {f.name: f.type for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise UserError(f"unknown setting twotier.{name}.{unknown[0]}",
                        f"known: {', '.join(known)} (see invoke.yaml)")
    out = {}
    defaults = kind()
    for key, raw in value.items():
        if raw is None:
            continue
        want = type(getattr(defaults, key))
        try:
            out[key] = want(raw) if want is not str else str(raw)
        except (TypeError, ValueError):
            raise UserError(f"setting twotier.{name}.{key} must be a {want.__name__}, got {raw!r}") from None
        if want in (int, float) and out[key] < 0:
            raise UserError(f"setting twotier.{name}.{key} must not be negative, got {raw!r}")
    return kind(**out)


def defaults() -> dict:
    """The defaults as the plain mapping Invoke's ``ns.configure`` takes (every key must exist
    there for INVOKE_TWOTIER_* variables to apply to it)."""
    data = dataclasses.asdict(Settings())
    data["allowed_contexts"] = list(data["allowed_contexts"])
    return data


def read_local(path: Path | None = None) -> dict:
    """This machine's settings file (a mapping like invoke.yaml's ``twotier:``), {} if absent."""
    path = path or local_file()
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path} is not valid YAML: {err}",
                        "fix it, or delete it and run ./bootstrap.sh again") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of settings (like `twotier:` in invoke.yaml)",
                        "fix it, or delete it and run ./bootstrap.sh again")
    return data


def write_local(values: Mapping, path: Path | None = None) -> Path:
    """Record machine-dependent settings for every later shell, keeping the file's other keys."""
    path = path or local_file()
    data = {**read_local(path), **values}
    path.write_text("# This machine's twotier settings, written by ./bootstrap.sh (git-ignored; edit freely).\n"
                    "# Keys as under `twotier:` in invoke.yaml. Precedence: invoke.yaml < this file <\n"
                    "# INVOKE_TWOTIER_<KEY> environment variables < task flags.\n"
                    + yaml.safe_dump(data, default_flow_style=False, sort_keys=True))
    return path


def bootstrap_decisions(environ=None, current: Mapping | None = None) -> dict:
    """What the bootstrap records: a value given in its environment, else the one already in the
    file (a user's earlier choice stays), else the default."""
    environ = os.environ if environ is None else environ
    current = current or {}
    out = {}
    for key, default in BOOTSTRAP_DEFAULTS.items():
        name = f"{ENV_PREFIX}{key}".upper()
        out[key] = environ[name] if name in environ else current.get(key, default)
    for key in BOOTSTRAP_OPTIONAL:
        name = f"{ENV_PREFIX}{key}".upper()
        if name in environ:
            out[key] = environ[name]
    return out


def main(argv: list[str]) -> int:
    """``python -m twotier.settings record``: what ./bootstrap.sh runs."""
    if argv != ["record"]:
        print("usage: python -m twotier.settings record", file=sys.stderr)
        return 2
    try:
        decisions = bootstrap_decisions(current=read_local())
        path = write_local(decisions)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    shown = ", ".join(f"{k}: {v!r}" for k, v in decisions.items())
    print(f"recorded this machine's settings in {path.name} ({shown})")
    return 0


def plain(value):
    """An Invoke DataProxy (or any mapping) as plain dicts and lists, detached from the config."""
    if hasattr(value, "items") and callable(value.items):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return copy.deepcopy(value)


def load() -> Settings:
    """The settings tasks see, for callers outside Invoke (benchmarks, tests, tools)."""
    from invoke import Config

    cfg = Config(defaults={**Config.global_defaults(), "twotier": defaults()}, project_location=str(ROOT))
    cfg.load_project()
    cfg.load_shell_env()
    return Settings.from_invoke(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
