"""Pod traffic keeps its pod address inside the cluster; only what leaves it is masqueraded."""
from __future__ import annotations

import json

from localcluster import configs, netclean
from localcluster import layout as L
from localcluster.node import Node


def test_the_bridge_plugin_masquerades_nothing_on_any_node():
    for node in (Node(1), Node(2)):
        bridge = json.loads(configs.cni_conflist(node))["plugins"][0]
        assert bridge["type"] == "bridge" and bridge["ipMasq"] is False


def test_each_node_masquerades_its_pods_traffic_except_to_pods_nodes_and_multicast():
    jump, chain = netclean.masquerade_rules(Node(3).pod_cidr)
    assert jump == ["POSTROUTING", "-s", "10.244.2.0/24", "-j", netclean.MASQ_CHAIN]
    returns = [rule.split()[3] for rule in chain if rule.endswith("-j RETURN")]
    assert returns == [L.CLUSTER_CIDR, L.NODES_CIDR, "224.0.0.0/4"]
    assert chain[0] == f"-N {netclean.MASQ_CHAIN}" and chain[-1] == f"-A {netclean.MASQ_CHAIN} -j MASQUERADE"


def test_the_masquerade_chain_goes_with_the_cni_chains_at_cluster_down_only():
    # cluster.down removes CNI-, KUBE- and TWOTIER- chains; a single-node cluster.up removes TWOTIER-
    # ones (the nodes' network), which must leave the host's masquerade in place.
    assert netclean.MASQ_CHAIN.startswith("CNI-") and not netclean.MASQ_CHAIN.startswith("TWOTIER-")
