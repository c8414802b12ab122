"""Which Kubernetes release the local cluster runs, and the versions of everything built with it.

versions.env pins the default release and its dependencies. Another release is chosen with
``invoke cluster.up --kubernetes v1.35.4`` (or the setting twotier.cluster_kubernetes): its etcd,
CoreDNS, crictl and pause versions are read once from that release's own build/dependencies.yaml
(in the k8s.io/kubernetes module the Go proxy serves, which the build downloads anyway) and kept
in $CACHE/versions/kubernetes-<version>.env; containerd, which that file does not name, comes
from versions.env's table per minor (CONTAINERD_FOR_1_<minor>). Reading upstream's file rather
than keeping a table here means a new patch release needs no edit.

The choice, with its whole set, is recorded in /var/lib/twotier/kubernetes-version (beside the cluster's state, which
`cluster.down` removes, and the registry's images, which it keeps): every later command (kubectl
on PATH, crictl, the builds) uses the release the cluster runs until cluster.up chooses again.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from localcluster import layout as L
from localcluster.errors import ClusterError

RELEASE = re.compile(r"^v1\.(\d+)\.(\d+)$")
# what build/dependencies.yaml calls each dependency -> our versions.env key, and its tag prefix
DEPENDENCIES = {"etcd": ("ETCD_VERSION", "v"), "coredns-kubeadm": ("COREDNS_VERSION", "v"),
                "crictl": ("CRITOOLS_VERSION", "v"), "registry.k8s.io/pause": ("PAUSE_VERSION", "")}
KEYS = ("KUBERNETES_VERSION", "ETCD_VERSION", "CONTAINERD_VERSION", "COREDNS_VERSION", "CRITOOLS_VERSION",
        "PAUSE_VERSION")


def parse_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Z0-9_]+)=(\S+)", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def defaults() -> dict[str, str]:
    return parse_env(L.VERSIONS_FILE.read_text())


def selection_file() -> Path:
    return L.STATE.parent / "kubernetes-version"


def selected() -> str:
    """The release chosen last (the default when none was); TWOTIER_KUBERNETES overrides it for one
    command without changing the choice, e.g. to build another release while the cluster runs:
    TWOTIER_KUBERNETES=v1.35.4 invoke cluster.build."""
    if os.environ.get("TWOTIER_KUBERNETES"):
        return os.environ["TWOTIER_KUBERNETES"]
    return _chosen_set().get("KUBERNETES_VERSION") or defaults()["KUBERNETES_VERSION"]


def _chosen_set() -> dict[str, str]:
    """The selection file: the chosen release's whole set (KEY=value lines), so that every process
    reads the same versions whatever its cache directory (a plain version from older runs works too)."""
    try:
        text = selection_file().read_text().strip()
    except OSError:
        return {}
    return parse_env(text) if "=" in text else {"KUBERNETES_VERSION": text}


def set_file(version: str) -> Path:
    return L.CACHE / "versions" / f"kubernetes-{version}.env"


def effective() -> dict[str, str]:
    """versions.env with the selected release's own versions in place of the default's."""
    base = defaults()
    version = selected()
    if version == base["KUBERNETES_VERSION"]:
        return base
    if os.environ.get("TWOTIER_KUBERNETES") == version:  # checked and read now, once
        from localcluster import build

        return {**base, **resolve(version, env=build.go_env())}
    chosen = _chosen_set()
    if chosen.get("KUBERNETES_VERSION") == version and set(KEYS) <= set(chosen):
        return {**base, **chosen}
    try:
        return {**base, **parse_env(set_file(version).read_text())}
    except OSError:  # chosen, but its set is gone (cache cleared): the default until cluster.up chooses again
        return base


def minor(version: str) -> int:
    m = RELEASE.match(version)
    return int(m.group(1)) if m else -1


def check(version: str, base: dict[str, str] | None = None) -> None:
    """Refuse what the project does not support, before any download (one line each)."""
    base = base or defaults()
    oldest = base["OLDEST_KUBERNETES_MINOR"]
    if not RELEASE.match(version):
        raise ClusterError(f"--kubernetes {version!r} is not a Kubernetes release: write it as v1.<minor>.<patch>, "
                           f"e.g. {base['KUBERNETES_VERSION']}")
    if minor(version) < int(oldest.split(".")[1]):
        raise ClusterError(f"Kubernetes {version} is older than {oldest}, the oldest minor this project supports "
                           f"(upstream patches the three newest)")
    if f"CONTAINERD_FOR_1_{minor(version)}" not in base:
        newest = max(int(k.rsplit("_", 1)[1]) for k in base if k.startswith("CONTAINERD_FOR_1_"))
        raise ClusterError(f"Kubernetes {version} is newer than 1.{newest}, the newest minor localcluster/versions.env "
                           f"names a containerd for (CONTAINERD_FOR_1_<minor>)")


def dependencies(yaml_text: str) -> dict[str, str]:
    """Our versions.env keys from a Kubernetes release's build/dependencies.yaml."""
    import yaml

    out = {}
    for dep in yaml.safe_load(yaml_text).get("dependencies", []):
        if dep.get("name") in DEPENDENCIES:
            key, prefix = DEPENDENCIES[dep["name"]]
            out[key] = prefix + str(dep["version"]).lstrip("v")
    missing = sorted({k for k, _ in DEPENDENCIES.values()} - set(out))
    if missing:
        raise ClusterError(f"build/dependencies.yaml names no version for {', '.join(missing)}")
    return out


def download_module(version: str, env: dict | None = None) -> Path:
    """The k8s.io/kubernetes module of this release from the Go module proxy (cached by Go)."""
    res = subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"], capture_output=True,
                         text=True, env=env, cwd=L.CACHE if L.CACHE.is_dir() else None)
    try:
        info = json.loads(res.stdout)
    except ValueError:
        info = {"Error": (res.stderr or res.stdout).strip()}
    if info.get("Error") or res.returncode != 0:
        err = str(info.get("Error", "")).splitlines()[-1:] or [""]
        if "not available" in err[0] or "unknown revision" in err[0] or "404" in err[0] or "410" in err[0]:
            raise ClusterError(f"the Go module proxy does not serve k8s.io/kubernetes {version}: "
                               f"choose a release it serves (go list -m -versions k8s.io/kubernetes)")
        raise ClusterError(f"downloading k8s.io/kubernetes {version} failed: {err[0]}",
                           hint="the Go module proxy must be reachable")
    return Path(info["Dir"])


def resolve(version: str, env: dict | None = None) -> dict[str, str]:
    """This release's versions.env lines (downloaded and read once, then from the cache)."""
    base = defaults()
    if version == base["KUBERNETES_VERSION"]:
        return {k: base[k] for k in KEYS}
    check(version, base)
    path = set_file(version)
    if path.exists():
        return {**{k: base[k] for k in KEYS}, **parse_env(path.read_text())}
    moddir = download_module(version, env)
    found = dependencies((moddir / "build" / "dependencies.yaml").read_text())
    found["KUBERNETES_VERSION"] = version
    found["CONTAINERD_VERSION"] = base[f"CONTAINERD_FOR_1_{minor(version)}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"# Read from k8s.io/kubernetes@{version} build/dependencies.yaml (containerd: versions.env)\n"
                   + "".join(f"{k}={found[k]}\n" for k in KEYS))
    os.replace(tmp, path)
    return found


def select(version: str, env: dict | None = None) -> dict[str, str]:
    """Choose the release the cluster runs from now on ("" = the default); returns its versions."""
    version = version.strip() or defaults()["KUBERNETES_VERSION"]
    found = resolve(version, env)
    f = selection_file()
    text = "".join(f"{k}={found[k]}\n" for k in KEYS)
    if not f.exists() or f.read_text() != text:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    L.versions.cache_clear()
    return found


def running_file() -> Path:
    return L.STATE / "versions.env"


def running() -> dict[str, str]:
    """The versions the cluster's state was made with ({} when there is none, or it predates this file)."""
    try:
        return parse_env(running_file().read_text())
    except OSError:
        return {}


def record_running() -> None:
    v = L.versions()
    running_file().write_text("".join(f"{k}={v[k]}\n" for k in KEYS if k in v))
