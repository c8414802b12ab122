"""The local cluster's node plan (pure: names, addresses, paths, per-node configuration files)."""
from __future__ import annotations

import json
from pathlib import Path

from localcluster import configs, pki
from localcluster import layout as L
from localcluster.node import Node, by_name


def test_node_1_is_the_single_node_cluster_unchanged():
    host = Node(1)
    assert (host.name, host.pod_cidr, host.cgroup_root) == (L.NODE_NAME, L.POD_CIDR, "/")
    assert (host.containerd_root, host.containerd_sock, host.cni_conf_dir, host.cni_ipam_dir) == (
        L.CONTAINERD_ROOT, L.CONTAINERD_SOCK, L.CNI_CONF_DIR, L.CNI_IPAM_DIR)
    assert (host.kubelet_root, host.pod_logs, host.proc("kubelet")) == (L.KUBELET_ROOT, L.POD_LOGS, "kubelet")
    assert "cgroupRoot" not in json.loads(configs.kubelet_config(host))
    assert "nri" not in configs.containerd_toml("runc", host)
    assert configs.registry_hosts_toml(host) == configs.registry_hosts_toml()


def test_other_nodes_have_their_own_name_ip_subnet_paths_and_cgroup_root():
    nodes = [Node(i) for i in range(2, L.MAX_NODES + 1)]
    assert [n.name for n in nodes[:2]] == ["twotier-node2", "twotier-node3"]
    assert [n.ip for n in nodes[:2]] == ["10.250.0.2", "10.250.0.3"]
    assert [n.pod_cidr for n in nodes[:2]] == ["10.244.1.0/24", "10.244.2.0/24"]
    for n in nodes:
        assert n.state == L.STATE / "nodes" / n.name and n.run == L.RUN / "nodes" / n.name
        assert n.tmp == n.state / "tmp" and n.cgroup_root == f"/{n.name}"
        assert len(n.veth) <= 15 and by_name(n.name) == n
    assert len({n.pod_cidr for n in [Node(1), *nodes]}) == L.MAX_NODES


def test_node_configs_point_at_the_nodes_own_runtime_subnet_and_registry_mirror():
    n = Node(3)
    kubelet = json.loads(configs.kubelet_config(n))
    assert kubelet["cgroupRoot"] == "/twotier-node3"
    assert kubelet["containerRuntimeEndpoint"] == f"unix://{n.containerd_sock}"
    assert kubelet["tlsCertFile"].endswith("kubelet-serving-twotier-node3.crt")
    toml = configs.containerd_toml("runc", n)
    assert f'address = "{n.containerd_sock}"' in toml and f'socket_path = "{n.run / "nri.sock"}"' in toml
    assert str(n.cni_conf_dir) in toml
    cni = json.loads(configs.cni_conflist(n))
    assert cni["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.2.0/24"}]]
    assert cni["plugins"][0]["ipam"]["dataDir"] == str(n.cni_ipam_dir)
    hosts = configs.registry_hosts_toml(n)
    assert 'server = "http://localhost:5000"' in hosts and '[host."http://10.250.0.1:5000"]' in hosts
    assert json.loads(configs.kube_proxy_config(Path("/k"), n))["hostnameOverride"] == "twotier-node3"


def test_each_node_gets_its_own_kubelet_identity_for_the_node_authorizer():
    client, serving = pki.node_identities("twotier-node2", "10.250.0.2")
    assert (client.cn, client.org) == ("system:node:twotier-node2", "system:nodes")
    assert serving.usage == "serverAuth" and "10.250.0.2" in serving.ips
