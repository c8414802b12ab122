"""Nodes 2..N of the local cluster, each a set of host processes in its own namespaces.

kind makes a node out of a container (its own network, mount, pid and cgroup namespaces) on one
docker bridge network. Without node images we build the same shape from the pieces: per node a
holder process owns a network namespace and a mount namespace; containerd, kubelet and kube-proxy
run inside both (nsenter). The node's end of a veth pair is its eth0 (10.250.0.<n>) on the host
bridge twotier-nodes, where the host (node 1) is 10.250.0.1. The node's /tmp is a private
directory bind-mounted in its mount namespace, so hostPath volumes are per node; its pods sit on
their own bridge twotier0 inside the namespace, in 10.244.<n-1>.0/24, and the host routes every
node's pod subnet to that node. Each kubelet keeps its pods under its own cgroup root
(/twotier-node<n>) in the host's cgroup hierarchies, since all nodes share the host's kernel.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from localcluster import addons, configs, netclean, pki, procs
from localcluster import layout as L
from localcluster.errors import ClusterError
from localcluster.node import Node, by_name

COMPONENTS = ("containerd", "kubelet", "kube-proxy")
REGISTRY_PORT = int(L.REGISTRY_HOST.rsplit(":", 1)[1])
CHAINS = {"PREROUTING": "TWOTIER-PREROUTING", "POSTROUTING": "TWOTIER-POSTROUTING"}


def _sh(*argv: str, check: bool = False) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise ClusterError(f"`{' '.join(argv)}` failed: {(res.stderr or res.stdout).strip()}",
                           hint="see the message above; `invoke cluster.down` then `invoke cluster.up` starts clean")
    return res


# ------------------------------------------------------------------------------------------ which nodes

def existing() -> list[Node]:
    """Nodes 2..N that have state or a process on this host (whatever their health)."""
    found = set()
    base = L.STATE / "nodes"
    names = [p.name for p in base.iterdir()] if base.is_dir() else []
    if L.PIDS.is_dir():
        names += [p.name[: -len("-namespaces.pid")] for p in L.PIDS.glob("*-namespaces.pid")]
    for name in names:
        try:
            found.add(by_name(name).index)
        except KeyError:
            pass
    return [Node(i) for i in sorted(found) if i > 1]


def holder_pid(node: Node) -> int | None:
    return procs.pid_of(node.holder)


def in_node(node: Node, *argv: str, mount: bool = True, net: bool = True) -> list[str]:
    """argv run inside the node's namespaces."""
    pid = holder_pid(node)
    if pid is None:
        raise ClusterError(f"node {node.name} has no namespaces (its holder process is gone)",
                           hint="`invoke cluster.up --nodes N` recreates it")
    return ["nsenter", "-t", str(pid), *(["-m"] if mount else []), *(["-n"] if net else []), "--", *argv]


def components_running(node: Node) -> bool:
    return holder_pid(node) is not None and all(procs.running(node.proc(c)) for c in COMPONENTS)


# ------------------------------------------------------------------------------------------ files

def write_configs(node: Node) -> None:
    for d in (node.state, node.run, node.cni_conf_dir, node.cni_ipam_dir, node.kubelet_root, node.pod_logs,
              node.containerd_root / "certs.d" / L.REGISTRY_HOST, node.tmp):
        d.mkdir(parents=True, exist_ok=True)
    node.tmp.chmod(0o1777)
    pki.ensure_node(L.PKI, node.name, node.ip)
    server = f"https://{apiserver_address()}:{L.APISERVER_PORT}"
    s = node.state
    files = {
        s / "kubelet.kubeconfig": configs.kubeconfig(node.kubelet_identity, server),
        s / "kube-proxy.kubeconfig": configs.kubeconfig("kube-proxy", server),
        s / "containerd.toml": configs.containerd_toml(shutil.which("runc") or "runc", node),
        node.containerd_root / "certs.d" / L.REGISTRY_HOST / "hosts.toml": configs.registry_hosts_toml(node),
        node.cni_conf_dir / "10-twotier.conflist": configs.cni_conflist(node),
        s / "kubelet.json": configs.kubelet_config(node),
        s / "kube-proxy.json": configs.kube_proxy_config(s / "kube-proxy.kubeconfig", node),
    }
    for path, text in files.items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        if path.suffix == ".kubeconfig":
            path.chmod(0o600)


def apiserver_address() -> str:
    """Nodes reach the API server at the host's node IP (in its serving certificate)."""
    ip = Node(1).ip
    if ip.startswith("127."):
        raise ClusterError("a multi-node cluster needs a host address that is not loopback (none has a default route)",
                           hint="give the host a default route, or use a single node (`invoke cluster.up --nodes 1`)")
    return ip


def argv(node: Node, component: str) -> list[str]:
    s = node.state
    k8s = lambda name: str(L.binary("kubernetes", name))
    if component == "containerd":
        return [str(L.binary("containerd")), "--config", str(s / "containerd.toml")]
    if component == "kubelet":
        return [k8s("kubelet"), "--kubeconfig", str(s / "kubelet.kubeconfig"), "--config", str(s / "kubelet.json"),
                "--hostname-override", node.name, "--node-ip", node.ip, "--root-dir", str(node.kubelet_root),
                "--oom-score-adj=0", "--v=1"]
    if component == "kube-proxy":
        return [k8s("kube-proxy"), "--config", str(s / "kube-proxy.json"), "--v=1"]
    raise KeyError(component)


# ------------------------------------------------------------------------------------------ host side

def ensure_host_network() -> None:
    """The node bridge (the host is its gateway), registry forwarding and egress for the nodes."""
    if not Path(f"/sys/class/net/{L.NODES_BRIDGE}").exists():
        _sh("ip", "link", "add", L.NODES_BRIDGE, "type", "bridge", check=True)
    if f" {L.NODES_GATEWAY}/" not in _sh("ip", "-4", "addr", "show", "dev", L.NODES_BRIDGE).stdout:
        _sh("ip", "addr", "add", f"{L.NODES_GATEWAY}/{L.NODES_CIDR.split('/')[1]}", "dev", L.NODES_BRIDGE, check=True)
    _sh("ip", "link", "set", L.NODES_BRIDGE, "up", check=True)
    # The registry listens on 127.0.0.1 only: nodes reach it at the gateway address, DNAT-ed to
    # loopback, which the kernel accepts from this bridge only with route_localnet.
    Path(f"/proc/sys/net/ipv4/conf/{L.NODES_BRIDGE}/route_localnet").write_text("1")
    for hook, chain in CHAINS.items():
        if _sh("iptables", "-t", "nat", "-S", chain).returncode != 0:
            _sh("iptables", "-t", "nat", "-N", chain, check=True)
        if _sh("iptables", "-t", "nat", "-C", hook, "-j", chain).returncode != 0:
            _sh("iptables", "-t", "nat", "-A", hook, "-j", chain, check=True)
    rules = {
        "TWOTIER-PREROUTING": ["-i", L.NODES_BRIDGE, "-d", L.NODES_GATEWAY, "-p", "tcp", "--dport", str(REGISTRY_PORT),
                               "-j", "DNAT", "--to-destination", f"127.0.0.1:{REGISTRY_PORT}"],
        # Nodes 2..N reach beyond this host (e.g. CoreDNS's upstream) from the host's address.
        "TWOTIER-POSTROUTING": ["-s", L.NODES_CIDR, "!", "-d", L.CLUSTER_CIDR, "!", "-o", L.NODES_BRIDGE,
                                "-j", "MASQUERADE"],
    }
    for chain, rule in rules.items():
        if _sh("iptables", "-t", "nat", "-C", chain, *rule).returncode != 0:
            _sh("iptables", "-t", "nat", "-A", chain, *rule, check=True)


def remove_host_network() -> bool:
    """The node bridge and the TWOTIER-* chains (rules are removed by netclean with the others)."""
    if Path(f"/sys/class/net/{L.NODES_BRIDGE}").exists():
        _sh("ip", "link", "delete", L.NODES_BRIDGE)
        return True
    return False


def host_routes() -> list[str]:
    """Routes to the pod subnets of nodes 2..N (they go via the node bridge)."""
    return [r for r in _sh("ip", "-4", "route", "show").stdout.splitlines()
            if r.startswith("10.244.") and f"dev {L.NODES_BRIDGE}" in r]


# ------------------------------------------------------------------------------------------ namespaces

def _start_namespaces(node: Node) -> int:
    node.run.mkdir(parents=True, exist_ok=True)
    marker = f"{node.run}/namespaces"
    # `exec -a` names the sleeping holder after the node's run directory, so it is recognisable.
    procs.start(node.holder, ["unshare", "--net", "--mount", "--propagation", "private", "--",
                              "bash", "-c", f'exec -a "{marker}" sleep infinity'])
    pid = procs.wait_for(lambda: (p := holder_pid(node)) and Path(f"/proc/{p}/cmdline").read_bytes().startswith(
        marker.encode()) and p, f"{node.name}'s namespaces", 10, name=node.holder)
    # The new mount namespace holds copies of the host's mounts under the cluster's directories
    # (node 1's container roots, volumes, pod netns): drop them, they are not this node's, and a
    # copy would keep a deleted pod's network namespace alive.
    mounts = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if any(mp == str(r) or mp.startswith(str(r) + "/") for r in (L.STATE, L.RUN, Path("/run/netns"))):
            mounts.append(mp)
    for mp in sorted(mounts, key=len, reverse=True):
        _sh(*in_node(node, "umount", "-l", mp, net=False))
    write_configs(node)   # creates node.tmp
    _sh(*in_node(node, "mount", "--bind", str(node.tmp), "/tmp", net=False), check=True)
    # Pod network namespaces are bind-mounted under /run/netns: keep them inside the node too.
    Path("/run/netns").mkdir(exist_ok=True)
    _sh(*in_node(node, "mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "twotier-netns", "/run/netns", net=False),
        check=True)
    return pid


def _wire(node: Node, pid: int) -> None:
    """eth0 on the node bridge, the pod bridge inside, routes both ways, forwarding on, pod traffic
    leaving the cluster masqueraded (to the node's address; the host masquerades it again)."""
    if not Path(f"/sys/class/net/{node.veth}").exists():
        _sh("ip", "link", "add", node.veth, "type", "veth", "peer", "name", "eth0", "netns", str(pid), check=True)
    _sh("ip", "link", "set", node.veth, "master", L.NODES_BRIDGE, check=True)
    _sh("ip", "link", "set", node.veth, "up", check=True)
    prefix = L.NODES_CIDR.split("/")[1]
    pod_prefix = node.pod_cidr.split("/")[1]
    for cmd in (["ip", "link", "set", "lo", "up"],
                ["ip", "addr", "replace", f"{node.ip}/{prefix}", "dev", "eth0"],
                ["ip", "link", "set", "eth0", "up"],
                ["ip", "route", "replace", "default", "via", L.NODES_GATEWAY],
                ["ip", "link", "add", L.BRIDGE, "type", "bridge"],
                ["ip", "addr", "replace", f"{node.pod_gateway}/{pod_prefix}", "dev", L.BRIDGE],
                ["ip", "link", "set", L.BRIDGE, "up"],
                # As on the host: a ClusterIP nobody owns dies on the pod bridge.
                ["ip", "route", "replace", L.SERVICE_CIDR, "dev", L.BRIDGE],
                ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
                ["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]):
        res = _sh(*in_node(node, *cmd, mount=False))
        if res.returncode != 0 and "File exists" not in res.stderr:
            raise ClusterError(f"setting up {node.name}: `{' '.join(cmd)}` failed: {res.stderr.strip()}")
    netclean.ensure_masquerade(node.pod_cidr, inside=tuple(in_node(node, mount=False)))
    _sh("ip", "route", "replace", node.pod_cidr, "via", node.ip, "dev", L.NODES_BRIDGE, check=True)


def ensure_cgroups(node: Node) -> None:
    """The kubelet's --cgroup-root must exist in every v1 hierarchy (cm.Validate) before it starts."""
    for hier in _hierarchies():
        d = hier / node.name
        d.mkdir(exist_ok=True)
        if hier.name == "cpuset":   # a v1 cpuset cgroup takes tasks only once it has cpus and mems
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((hier / f).read_text())


def _hierarchies() -> list[Path]:
    base = Path("/sys/fs/cgroup")
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            mp, fstype = parts[4], parts[parts.index("-") + 1]
            if fstype == "cgroup" and mp.startswith(str(base) + "/"):
                out.append(Path(mp))
    return out


def _all_hierarchies() -> list[Path]:
    """Every mounted hierarchy, the cgroup2 one too: runc mirrors v1 cgroups into it on hybrid hosts."""
    base = Path("/sys/fs/cgroup")
    return [h for h in base.iterdir() if h.is_dir()] if base.is_dir() else []


def _cgroup_pids(node: Node) -> set[int]:
    pids = set()
    for hier in _all_hierarchies():
        top = hier / node.name
        if top.is_dir():
            for procs_file in top.rglob("cgroup.procs"):
                try:
                    pids.update(int(x) for x in procs_file.read_text().split())
                except OSError:
                    pass
    return pids


def remove_cgroups(node: Node) -> int:
    return sum(netclean.rmdir_tree(hier / node.name) for hier in _all_hierarchies())


# ------------------------------------------------------------------------------------------ lifecycle

def start(node: Node, progress=print) -> None:
    """Create the node (or repair it): namespaces, network, containerd, images, kubelet, kube-proxy."""
    pid = holder_pid(node)
    if pid is None:
        if any(procs.running(node.proc(c)) for c in COMPONENTS):
            stop_processes(node)   # they live in namespaces we can no longer reach
        progress(f"creating node {node.name} ({node.ip}, pods {node.pod_cidr})")
        pid = _start_namespaces(node)
    write_configs(node)
    ensure_cgroups(node)
    _wire(node, pid)
    env = {"PATH": f"{L.bin_dir('containerd')}:{os.environ.get('PATH', '')}"}
    if not procs.running(node.proc("containerd")):
        procs.start(node.proc("containerd"), in_node(node, *argv(node, "containerd")), env=env)
        procs.wait_for(lambda: subprocess.run(addons.ctr("version", address=node.containerd_sock),
                                              capture_output=True).returncode == 0,
                       f"{node.name}'s containerd", 30, progress, name=node.proc("containerd"))
    addons.ensure_images(node.containerd_sock)
    for comp in ("kubelet", "kube-proxy"):
        if not procs.running(node.proc(comp)):
            progress(f"starting {node.name}'s {comp}")
            procs.start(node.proc(comp), in_node(node, *argv(node, comp)))


def stop_processes(node: Node, progress=print) -> None:
    """Stop the node's kubelet, kube-proxy, containerd and every container: the node is down but
    keeps its state (disk, network), so `start` brings it back as a rebooted node."""
    for comp in ("kube-proxy", "kubelet"):
        procs.stop(node.proc(comp), timeout=10)
    if procs.running(node.proc("containerd")):
        subprocess.run(crictl(node, "rmp", "--all", "--force"), capture_output=True)
    procs.stop(node.proc("containerd"), timeout=10)
    kill_node_leftovers(node)


def kill(node: Node) -> None:
    """Node loss: SIGKILL the kubelet, kube-proxy, containerd, the shims and every container at once."""
    for comp in ("kubelet", "kube-proxy", "containerd"):
        pid = procs.pid_of(node.proc(comp))
        if pid:
            os.kill(pid, signal.SIGKILL)
    kill_node_leftovers(node)


def kill_node_leftovers(node: Node) -> None:
    sock = str(node.containerd_sock)
    for _ in range(3):  # a shim may fork a process while we kill its siblings
        pids = {pid for pid, cmd in procs.find(lambda c: c.split()[0].endswith("containerd-shim-runc-v2")
                                                and sock in c)}
        pids |= _cgroup_pids(node)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.3)


def remove(node: Node, progress=print) -> None:
    """Take the node apart: processes, namespaces (and with them its veth, routes and mounts),
    host route, cgroups, state."""
    stop_processes(node, progress)
    pid = holder_pid(node)
    procs.stop(node.holder, timeout=5)
    if pid:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    _sh("ip", "route", "del", node.pod_cidr, "via", node.ip)
    if Path(f"/sys/class/net/{node.veth}").exists():
        _sh("ip", "link", "delete", node.veth)
    remove_cgroups(node)
    shutil.rmtree(node.state, ignore_errors=True)
    shutil.rmtree(node.run, ignore_errors=True)
    for comp in (*COMPONENTS, "namespaces"):
        procs.pidfile(node.proc(comp)).unlink(missing_ok=True)
    for parent in (node.state.parent, node.run.parent):
        try:
            parent.rmdir()   # the last node gone: no empty nodes/ directory either
        except OSError:
            pass
    progress(f"removed node {node.name}")


def crictl(node: Node, *args: str) -> list[str]:
    ep = f"unix://{node.containerd_sock}"
    return [str(L.binary("cri-tools", "crictl")), "--runtime-endpoint", ep, "--image-endpoint", ep,
            "--timeout", "30s", *args]
