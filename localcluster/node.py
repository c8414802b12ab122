"""One node of the local cluster: its name, addresses, pod subnet, paths and process names.

Node 1 is the host itself, with exactly the paths and process names of the single-node cluster
(so a single-node cluster is unchanged). Nodes 2..N keep their state under
<state>/nodes/<name> and <run>/nodes/<name> and run in their own namespaces (see nodes.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from localcluster import layout as L


@dataclass(frozen=True)
class Node:
    index: int  # 1 = the host

    @property
    def is_host(self) -> bool:
        return self.index == 1

    @property
    def name(self) -> str:
        return L.NODE_NAME if self.is_host else f"{L.NODE_NAME}{self.index}"

    @property
    def ip(self) -> str:
        if self.is_host:
            return L.node_ip()
        return L.NODES_CIDR.rsplit(".", 1)[0] + f".{self.index}"

    @property
    def pod_cidr(self) -> str:
        # 10.244.0.0/24 for node 1 (as before), 10.244.1.0/24 for node 2, ...
        return f"10.244.{self.index - 1}.0/24"

    @property
    def pod_gateway(self) -> str:
        return self.pod_cidr.rsplit(".", 1)[0] + ".1"

    @property
    def state(self) -> Path:
        return L.STATE if self.is_host else L.STATE / "nodes" / self.name

    @property
    def run(self) -> Path:
        return L.RUN if self.is_host else L.RUN / "nodes" / self.name

    containerd_root = property(lambda self: self.state / "containerd")
    containerd_state = property(lambda self: self.run / "containerd")
    containerd_sock = property(lambda self: self.containerd_state / "containerd.sock")
    cni_conf_dir = property(lambda self: self.state / "cni" / "net.d")
    cni_ipam_dir = property(lambda self: self.state / "cni" / "ipam")
    kubelet_root = property(lambda self: self.state / "kubelet")
    pod_logs = property(lambda self: self.state / "pod-logs")
    # The node's own /tmp (hostPath volumes under /tmp are per node, as on real nodes).
    tmp = property(lambda self: self.state / "tmp")

    @property
    def cgroup_root(self) -> str:
        """The kubelet's --cgroup-root: each node's pods in their own subtree of every hierarchy."""
        return "/" if self.is_host else f"/{self.name}"

    @property
    def veth(self) -> str:
        return f"twotier-n{self.index}"  # host end; the node's end is eth0 in its namespace

    def proc(self, component: str) -> str:
        """The pid/log file name of one of this node's processes."""
        return component if self.is_host else f"{self.name}-{component}"

    @property
    def holder(self) -> str:
        """The process that owns the node's network and mount namespaces."""
        return f"{self.name}-namespaces"

    @property
    def kubelet_identity(self) -> str:
        return "kubelet" if self.is_host else f"kubelet-{self.name}"

    @property
    def serving_identity(self) -> str:
        return "kubelet-serving" if self.is_host else f"kubelet-serving-{self.name}"


HOST = Node(1)


def by_name(name: str) -> Node:
    for i in range(1, L.MAX_NODES + 1):
        if Node(i).name == name:
            return Node(i)
    raise KeyError(name)
