"""Remove the host state the cluster created: iptables chains, the bridge, netns, mounts, cgroups."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from localcluster import layout as L


def _sh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


def iptables_chains_removed(prefixes=("CNI-",)) -> int:
    """Delete rules jumping to chains with these prefixes, then the chains. Returns rules removed."""
    removed = 0
    for table in ("nat", "filter", "mangle"):
        rules = _sh("iptables", "-t", table, "-S").stdout.splitlines()
        for rule in rules:
            if rule.startswith("-A ") and any(f"-j {p}" in rule or f"-g {p}" in rule for p in prefixes):
                args = shlex.split(rule)  # comments are quoted and hold spaces (kube-router's do)
                args[0] = "-D"
                if _sh("iptables", "-t", table, *args).returncode == 0:
                    removed += 1
        chains = [r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(prefixes)]
        for chain in chains:
            _sh("iptables", "-t", table, "-F", chain)
        for chain in chains:
            _sh("iptables", "-t", table, "-X", chain)
    return removed


# The bridge plugin's ipMasq masquerades all a pod sends beyond its node's /24, pods on other nodes
# included, so a NetworkPolicy on another node would see the node's address (no pod selector
# matches it). Instead, each node masquerades only what leaves the cluster: not to pod addresses,
# not to node addresses, not multicast (as the plugin). Named CNI-: it stands in for the plugin's
# rule and goes with the CNI chains at `cluster.down` (a TWOTIER- chain would also go when a
# single-node `cluster.up` removes the nodes' network).
MASQ_CHAIN = "CNI-TWOTIER-MASQ"


def masquerade_rules(pod_cidr: str) -> tuple[list[str], list[str]]:
    """(the POSTROUTING rule that sends the node's pod traffic to MASQ_CHAIN, the chain as `iptables -S`
    prints it), for the node whose pods are POD_CIDR."""
    jump = ["POSTROUTING", "-s", pod_cidr, "-j", MASQ_CHAIN]
    chain = [f"-N {MASQ_CHAIN}",
             *(f"-A {MASQ_CHAIN} -d {cidr} -j RETURN" for cidr in (L.CLUSTER_CIDR, L.NODES_CIDR, "224.0.0.0/4")),
             f"-A {MASQ_CHAIN} -j MASQUERADE"]
    return jump, chain


def ensure_masquerade(pod_cidr: str, inside: tuple[str, ...] = ()) -> None:
    """MASQ_CHAIN and its jump in the nat table, made or corrected (INSIDE: the argv prefix that
    runs a command in a node's network namespace; none for the host)."""
    from localcluster.errors import ClusterError

    def ipt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = _sh(*inside, "iptables", "-t", "nat", *args)
        if check and res.returncode != 0:
            raise ClusterError(f"`iptables -t nat {' '.join(args)}` failed: {res.stderr.strip()}",
                               hint="`invoke cluster.down` then `invoke cluster.up` starts clean")
        return res

    jump, chain = masquerade_rules(pod_cidr)
    have = ipt("-S", MASQ_CHAIN, check=False)
    if have.stdout.splitlines() != chain:
        if have.returncode != 0:
            ipt("-N", MASQ_CHAIN)
        ipt("-F", MASQ_CHAIN)   # a moment without the rule: a new connection out leaves unmasqueraded
        for rule in chain[1:]:
            ipt(*rule.split())
    if ipt("-C", *jump, check=False).returncode != 0:
        ipt("-A", *jump)   # appended: after kube-proxy's KUBE-POSTROUTING, which keeps its own masquerades


def ensure_bridge_and_routes() -> None:
    """Keep cluster traffic on this machine.

    The pod bridge is created up front (the CNI bridge plugin adopts it) so the whole Service
    range can be routed onto it: a packet to a ClusterIP that no Service owns (e.g. a stale DNS
    answer) then dies on the bridge instead of following the default route off the host.
    Pod addresses outside this node's /24 are unreachable for the same reason. Pod traffic that
    leaves the cluster is masqueraded (ensure_masquerade).
    """
    if not Path(f"/sys/class/net/{L.BRIDGE}").exists():
        _sh("ip", "link", "add", L.BRIDGE, "type", "bridge")
    gateway = L.POD_CIDR.rsplit(".", 1)[0] + ".1/" + L.POD_CIDR.split("/")[1]
    if gateway.split("/")[0] not in _sh("ip", "-4", "addr", "show", "dev", L.BRIDGE).stdout:
        _sh("ip", "addr", "add", gateway, "dev", L.BRIDGE)
    _sh("ip", "link", "set", L.BRIDGE, "up")
    for argv in (["ip", "route", "replace", L.SERVICE_CIDR, "dev", L.BRIDGE],
                 ["ip", "route", "replace", "unreachable", L.CLUSTER_CIDR]):
        res = _sh(*argv)
        if res.returncode != 0:
            from localcluster.errors import ClusterError as UserError
            raise UserError(f"`{' '.join(argv)}` failed: {res.stderr.strip()}")
    ensure_masquerade(L.POD_CIDR)


def remove_routes() -> int:
    n = 0
    for argv in (["ip", "route", "del", L.SERVICE_CIDR, "dev", L.BRIDGE],
                 ["ip", "route", "del", "unreachable", L.CLUSTER_CIDR]):
        n += _sh(*argv).returncode == 0
    return n


def cluster_routes() -> list[str]:
    out = _sh("ip", "-4", "route", "show").stdout.splitlines()
    return [r for r in out if r.startswith((L.SERVICE_CIDR, f"unreachable {L.CLUSTER_CIDR}"))]


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
        n += rmdir_tree(hier / "kubepods")
    return n


def rmdir_tree(top: Path) -> int:
    """rmdir every directory of TOP, deepest first (cgroups: only the empty ones go); how many went."""
    n = 0
    if not top.is_dir():
        return 0
    for dirpath, _dirnames, _ in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
        try:
            os.rmdir(dirpath)
            n += 1
        except OSError:
            pass
    return n
