"""The configuration files of each component, as text (pure functions of the layout)."""
from __future__ import annotations

import base64
import json
from pathlib import Path

from localcluster import layout as L
from localcluster.node import HOST, Node


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig(user: str, server: str, context: str = L.CONTEXT) -> str:
    """A kubeconfig that authenticates with the client cert <user>.crt of the cluster's PKI."""
    pki = L.PKI
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": context, "cluster": {
            "server": server, "certificate-authority-data": _b64(pki / "ca.crt")}}],
        "users": [{"name": f"{context}-{user}", "user": {
            "client-certificate-data": _b64(pki / f"{user}.crt"),
            "client-key-data": _b64(pki / f"{user}.key")}}],
        "contexts": [{"name": context, "context": {
            "cluster": context, "user": f"{context}-{user}", "namespace": "default"}}],
        "current-context": context,
    }, indent=2) + "\n"


def containerd_toml(runc: str, node: Node = HOST) -> str:
    # NRI listens on a fixed /var/run/nri/nri.sock by default: nodes 2..N get their own.
    nri = "" if node.is_host else f"""
[plugins.'io.containerd.nri.v1.nri']
  socket_path = "{node.run / 'nri.sock'}"
"""
    return f"""\
# containerd for the twotier local cluster: its own socket, root and state, beside Docker's.
version = 3
root = "{node.containerd_root}"
state = "{node.containerd_state}"

[grpc]
  address = "{node.containerd_sock}"

[ttrpc]
  address = "{node.containerd_sock}.ttrpc"
{nri}
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{L.pause_image()}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{node.containerd_root / 'certs.d'}"

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  # This host withholds CAP_SYS_RESOURCE: nobody may lower oom_score_adj below its own (0).
  # Without this, every sandbox (-998) and Guaranteed pod (-997) fails in runc.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{L.CNI_BIN_DIR}"]
    conf_dir = "{node.cni_conf_dir}"
"""


def registry_hosts_toml(node: Node = HOST) -> str:
    # localhost:5000 inside a node's namespace is not the host's: nodes 2..N pull from the host's
    # address on the node bridge, which the host forwards to the registry (nodes.py).
    mirror = L.REGISTRY_HOST if node.is_host else f"{L.NODES_GATEWAY}:{L.REGISTRY_HOST.rsplit(':', 1)[1]}"
    return f"""\
server = "http://{L.REGISTRY_HOST}"

[host."http://{mirror}"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
"""


def cni_conflist(node: Node = HOST) -> str:
    # No ipMasq: the plugin would masquerade traffic to pods on other nodes too, hiding the pod's
    # address from their NetworkPolicies; each node masquerades only what leaves the cluster
    # (netclean.ensure_masquerade).
    return json.dumps({
        "cniVersion": "1.0.0",
        "name": "twotier",
        "plugins": [
            {"type": "bridge", "bridge": L.BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(node.cni_ipam_dir),
                      "ranges": [[{"subnet": node.pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2) + "\n"


def kubelet_config(node: Node = HOST) -> str:
    pki = L.PKI
    # Nodes 2..N share the host's cgroup hierarchies: each keeps its pods under its own root.
    extra = {} if node.is_host else {"cgroupRoot": node.cgroup_root}
    return json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / f"{node.serving_identity}.crt"),
        "tlsPrivateKeyFile": str(pki / f"{node.serving_identity}.key"),
        "cgroupDriver": "cgroupfs",
        # From 1.35 on the kubelet refuses to start on a cgroup v1 host unless this is false; this host
        # is cgroup v1 (hybrid) and cannot be changed from inside. Still accepted by 1.37; upstream
        # plans to remove cgroup v1 support: then the cluster needs a cgroup v2 host (docs/local-cluster.md).
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{node.containerd_sock}",
        "clusterDNS": [L.DNS_IP],
        "clusterDomain": L.DNS_DOMAIN,
        "resolvConf": "/etc/resolv.conf",
        "podLogsDir": str(node.pod_logs),
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 95,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "staticPodPath": "",
        "syncFrequency": "10s",
        "fileCheckFrequency": "5s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "maxPods": 60,
        **extra,
    }, indent=2) + "\n"


def kube_proxy_config(kubeconfig_path: Path, node: Node = HOST) -> str:
    return json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig_path)},
        "hostnameOverride": node.name,
        "mode": "iptables",
        "clusterCIDR": L.CLUSTER_CIDR,
        "conntrack": {"maxPerCore": 0},     # leave the host's nf_conntrack_max alone
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "iptables": {"localhostNodePorts": True},
        "oomScoreAdj": 0,                   # no CAP_SYS_RESOURCE here: -999 cannot be set
    }, indent=2) + "\n"


def registry_config() -> str:
    return f"""\
# Debian's docker-registry (distribution v2), without the packaged htpasswd auth.
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {L.REGISTRY_DATA}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
"""


def local_registry_hosting() -> str:
    """KEP-1755: tells Tilt (and other tools) where the cluster's local registry is."""
    return f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "{L.REGISTRY_HOST}"
    help: "twotier local cluster registry: push to {L.REGISTRY_HOST}/<name>:<tag>"
"""
