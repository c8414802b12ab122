"""Remove the host state the cluster created: iptables chains, the bridge, netns, mounts, cgroups."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from twotier.localcluster import layout as L


def _sh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


def iptables_chains_removed(prefixes=("CNI-",)) -> int:
    """Delete rules jumping to chains with these prefixes, then the chains. Returns rules removed."""
    removed = 0
    for table in ("nat", "filter", "mangle"):
        rules = _sh("iptables", "-t", table, "-S").stdout.splitlines()
        for rule in rules:
            if rule.startswith("-A ") and any(f"-j {p}" in rule or f"-g {p}" in rule for p in prefixes):
                args = rule.split()
                args[0] = "-D"
                if _sh("iptables", "-t", table, *args).returncode == 0:
                    removed += 1
        chains = [r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(prefixes)]
        for chain in chains:
            _sh("iptables", "-t", table, "-F", chain)
        for chain in chains:
            _sh("iptables", "-t", table, "-X", chain)
    return removed


def remove_bridge() -> bool:
    if Path(f"/sys/class/net/{L.BRIDGE}").exists():
        _sh("ip", "link", "set", L.BRIDGE, "down")
        return _sh("ip", "link", "delete", L.BRIDGE).returncode == 0
    return False


def remove_cni_netns() -> int:
    """containerd names pod network namespaces cni-<uuid> under /var/run/netns."""
    n = 0
    netns = Path("/var/run/netns")
    if netns.is_dir():
        for p in netns.glob("cni-*"):
            _sh("umount", str(p))
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
    return n


def mounts_under(*roots: Path) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if any(mp == str(r) or mp.startswith(str(r) + "/") for r in roots):
                found.append(mp)
    return found


def unmount_all(*roots: Path) -> int:
    n = 0
    for _ in range(3):  # stacked mounts need more than one pass
        mps = sorted(set(mounts_under(*roots)), key=len, reverse=True)
        if not mps:
            break
        for mp in mps:
            if _sh("umount", mp).returncode != 0:
                _sh("umount", "-l", mp)
            n += 1
    return n


def remove_kubepods_cgroups() -> int:
    """rmdir the (empty) cgroups kubelet created under each v1 hierarchy; never touch others."""
    n = 0
    base = Path("/sys/fs/cgroup")
    for hier in base.iterdir() if base.is_dir() else []:
        top = hier / "kubepods"
        if not top.is_dir():
            continue
        for dirpath, dirnames, _ in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
            try:
                os.rmdir(dirpath)
                n += 1
            except OSError:
                pass
    return n
