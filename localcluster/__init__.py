"""A real Kubernetes cluster on this machine, the way hack/local-up-cluster.sh does it (what runs
where: docs/local-cluster.md). The host is node 1; ``up(nodes=N)`` adds nodes 2..N in their own
namespaces (nodes.py). ``up()`` is idempotent, ``down()`` leaves the host as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from localcluster import addons, build, configs, netclean, pki, procs
from localcluster import layout as L
from localcluster import nodes as extra_nodes
from localcluster import versions as kubeversions
from localcluster.errors import ClusterError as UserError
from localcluster.layout import kubectl_path  # noqa: F401  (public API)
from localcluster.lock import exclusive
from localcluster.node import Node

COMPONENTS = ["containerd", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
              "kubelet", "kube-proxy"]
CLUSTER_BUILDS = ["etcd", "containerd", "cri-tools", "coredns", "kubernetes"]
APT_PACKAGES = {"runc": "runc", "iptables": "iptables", "openssl": "openssl", "gcc": "gcc", "docker": "docker.io",
                "dockerd": "docker.io", "docker-registry": "docker-registry", "ip": "iproute2",
                "conntrack": "conntrack", "go": "golang (or Go from go.dev)",
                "ipset": "ipset"}  # ipset: packed into the policy addon's image (addons.py)


def kubeconfig_path() -> Path:
    return L.KUBECONFIG


def is_up() -> bool:
    return (L.KUBECONFIG.exists() and all(procs.running(c) for c in COMPONENTS)
            and all(extra_nodes.components_running(n) for n in extra_nodes.existing()))


def node_count() -> int:
    """How many nodes this host runs now (1 when only the host, or nothing, is there)."""
    return 1 + len(extra_nodes.existing())


# ------------------------------------------------------------------------------------------ build

def ensure_binaries(components=CLUSTER_BUILDS, progress=print) -> None:
    """Build what is not cached yet (localcluster/build.py: one build at a time, the log in a file)."""
    build.ensure(list(components), progress=progress)


# ------------------------------------------------------------------------------------------ checks

def preflight() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("the local cluster needs root (containerd, kubelet, iptables)")
    missing = sorted({APT_PACKAGES[c] for c in APT_PACKAGES if not shutil.which(c) and c != "go"})
    if missing:
        problems.append("missing host tools; install: apt-get install -y " + " ".join(missing))
    if not (L.CNI_BIN_DIR / "bridge").exists():
        problems.append("CNI plugins missing; install: apt-get install -y containernetworking-plugins")
    if not Path("/proc/sys/net/bridge").exists():
        problems.append("br_netfilter is not available (modprobe br_netfilter)")
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        problems.append("no memory cgroup controller is mounted")
    if not is_up():
        for comp, ports in L.PORTS.items():
            if procs.running(comp):
                continue
            busy = [p for p in ports if procs.port_in_use(p)]
            if busy:
                problems.append(f"port(s) {busy} needed by {comp} are in use by another process")
    if problems:
        raise UserError("the host is not ready for the local cluster:\n  - " + "\n  - ".join(problems),
                        hint="fix the items above and run `invoke cluster.up` again")


def _sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key.replace(".", "/")
    if path.read_text().strip() != value:
        path.write_text(value)


# ------------------------------------------------------------------------------------------ files

def write_configs(node_ip: str) -> None:
    for d in (L.STATE, L.LOGS, L.PIDS, L.CNI_CONF_DIR, L.CNI_IPAM_DIR, L.KUBELET_ROOT, L.POD_LOGS,
              L.CONTAINERD_ROOT / "certs.d" / L.REGISTRY_HOST, L.REGISTRY_DATA):
        d.mkdir(parents=True, exist_ok=True)
    L.ETCD_DATA.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.ensure_all(L.PKI, L.NODE_NAME, node_ip, L.KUBERNETES_SVC_IP, L.DNS_DOMAIN)
    server = f"https://127.0.0.1:{L.APISERVER_PORT}"
    files = {
        L.KUBECONFIG: configs.kubeconfig("admin", server),
        L.STATE / "controller-manager.kubeconfig": configs.kubeconfig("controller-manager", server),
        L.STATE / "scheduler.kubeconfig": configs.kubeconfig("scheduler", server),
        L.STATE / "kubelet.kubeconfig": configs.kubeconfig("kubelet", server),
        L.STATE / "kube-proxy.kubeconfig": configs.kubeconfig("kube-proxy", server),
        L.STATE / "containerd.toml": configs.containerd_toml(shutil.which("runc") or "runc"),
        L.CONTAINERD_ROOT / "certs.d" / L.REGISTRY_HOST / "hosts.toml": configs.registry_hosts_toml(),
        L.CNI_CONF_DIR / "10-twotier.conflist": configs.cni_conflist(),
        L.STATE / "kubelet.json": configs.kubelet_config(),
        L.STATE / "kube-proxy.json": configs.kube_proxy_config(L.STATE / "kube-proxy.kubeconfig"),
        L.STATE / "registry.yml": configs.registry_config(),
    }
    for path, text in files.items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        if path.suffix == ".kubeconfig" or path == L.KUBECONFIG:
            path.chmod(0o600)


def argv(component: str, node_ip: str) -> list[str]:
    p, s = L.PKI, L.STATE
    k8s = lambda name: str(L.binary("kubernetes", name))

    def control_loop(name: str, kubeconfig: str, *flags: str) -> list[str]:  # controller-manager, scheduler
        kc = str(s / kubeconfig)
        return [k8s(name), "--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
                "--bind-address", "127.0.0.1", "--leader-elect=false", *flags, "--v=1"]

    if component == "containerd":
        return [str(L.binary("containerd")), "--config", str(s / "containerd.toml")]
    if component == "etcd":
        return [str(L.binary("etcd")), "--name", "twotier", "--data-dir", str(L.ETCD_DATA),
                "--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
                "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                "--initial-cluster", "twotier=http://127.0.0.1:2380", "--log-level", "warn",
                "--quota-backend-bytes", str(2 * 1024**3)]
    if component == "kube-apiserver":
        return [k8s("kube-apiserver"), "--etcd-servers", "http://127.0.0.1:2379",
                "--bind-address", "0.0.0.0", "--secure-port", str(L.APISERVER_PORT), "--advertise-address", node_ip,
                "--service-cluster-ip-range", L.SERVICE_CIDR, "--service-node-port-range", "30000-32767",
                "--tls-cert-file", str(p / "apiserver.crt"), "--tls-private-key-file", str(p / "apiserver.key"),
                "--client-ca-file", str(p / "ca.crt"),
                "--kubelet-client-certificate", str(p / "apiserver-kubelet-client.crt"),
                "--kubelet-client-key", str(p / "apiserver-kubelet-client.key"),
                "--kubelet-certificate-authority", str(p / "ca.crt"),
                "--kubelet-preferred-address-types", "InternalIP,Hostname",
                "--service-account-key-file", str(p / "sa.pub"),
                "--service-account-signing-key-file", str(p / "sa.key"),
                "--service-account-issuer", f"https://kubernetes.default.svc.{L.DNS_DOMAIN}",
                "--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
                "--allow-privileged=true", "--profiling=false", "--v=1",
                # the aggregation layer (metrics-server's metrics.k8s.io): front-proxy CA and client
                "--requestheader-client-ca-file", str(p / "front-proxy-ca.crt"),
                "--requestheader-allowed-names", pki.FRONT_PROXY_CLIENT,
                "--requestheader-username-headers", "X-Remote-User",
                "--requestheader-group-headers", "X-Remote-Group",
                "--requestheader-extra-headers-prefix", "X-Remote-Extra-",
                "--proxy-client-cert-file", str(p / "front-proxy-client.crt"),
                "--proxy-client-key-file", str(p / "front-proxy-client.key")]
    if component == "kube-controller-manager":
        return control_loop(component, "controller-manager.kubeconfig",
                            "--service-account-private-key-file", str(p / "sa.key"), "--root-ca-file", str(p / "ca.crt"),
                            "--cluster-signing-cert-file", str(p / "ca.crt"), "--cluster-signing-key-file", str(p / "ca.key"),
                            "--use-service-account-credentials=true", "--service-cluster-ip-range", L.SERVICE_CIDR,
                            "--controllers", "*,bootstrapsigner,tokencleaner")
    if component == "kube-scheduler":
        return control_loop(component, "scheduler.kubeconfig")
    if component == "kubelet":
        return [k8s("kubelet"), "--kubeconfig", str(s / "kubelet.kubeconfig"), "--config", str(s / "kubelet.json"),
                "--hostname-override", L.NODE_NAME, "--node-ip", node_ip, "--root-dir", str(L.KUBELET_ROOT),
                "--oom-score-adj=0", "--v=1"]
    if component == "kube-proxy":
        return [k8s("kube-proxy"), "--config", str(s / "kube-proxy.json"), "--v=1"]
    raise KeyError(component)


# ------------------------------------------------------------------------------------------ health

def _api_client():
    """The Kubernetes Python client on the cluster's own kubeconfig (admin credentials)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(L.KUBECONFIG), context=L.CONTEXT, client_configuration=cfg,
                            persist_config=False)
    cfg.retries = False  # callers poll; a refused connection must fail at once, not retry
    return client.ApiClient(cfg)


def api_get(path: str, timeout: float = 3):
    """GET an API path (JSON as a dict, anything else as text) through the Python client."""
    return raw_get(_api_client(), path, timeout)


def raw_get(api, path: str, timeout: float | tuple = 3):
    """GET a raw API path with the client's credentials; ApiException on an error status.

    kubernetes 37's ApiClient (openapi-generator v7) splits the old call_api(path, "GET", ...) in
    two: param_serialize (URL, auth headers) and call_api(method, url, ...) -> RESTResponse, which
    no longer raises on an error status (response_deserialize does, for typed answers)."""
    from kubernetes.client.exceptions import ApiException

    method, url, headers, _, _ = api.param_serialize("GET", path, auth_settings=["BearerToken"])
    resp = api.call_api(method, url, header_params=headers, _request_timeout=timeout)
    body = resp.read().decode()
    if not 200 <= resp.status <= 299:
        raise ApiException(status=resp.status, reason=resp.reason, body=body)
    return json.loads(body) if body.startswith("{") else body


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


def _ready(obj: dict) -> bool:
    """A node's or a pod's Ready condition is True."""
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj["status"].get("conditions", []))


def node_ready(name: str = L.NODE_NAME) -> bool:
    return _ready(api_get(f"/api/v1/nodes/{name}"))


def deployment_available(ns: str, name: str) -> bool:
    d = api_get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
    return d.get("status", {}).get("availableReplicas", 0) >= d["spec"].get("replicas", 1)


def docker_ok() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def registry_ok() -> bool:
    return _http_ok(f"http://{L.REGISTRY_HOST}/v2/")


# ------------------------------------------------------------------------------------------ up

def _start(name: str, node_ip: str, progress) -> bool:
    if procs.running(name):
        return False
    progress(f"starting {name}")
    env = {"PATH": f"{L.bin_dir('containerd')}:{os.environ.get('PATH', '')}"} if name == "containerd" else None
    procs.start(name, argv(name, node_ip), env=env)
    return True


@exclusive("cluster.up/down")  # two terminals starting or stopping at once take turns
def up(progress=print, nodes: int | None = None, kubernetes: str | None = None) -> float:
    """Bring the cluster up with `nodes` nodes (or repair it); returns the seconds it took.

    nodes=None keeps the number of nodes there is now (1 for a new cluster); a different number
    adds or removes nodes 2..N without touching the others. kubernetes chooses the release
    ("" = versions.env's default, None = the one chosen last): a cluster made with another one
    is taken down first (etcd's data cannot go back a minor), the registry's images stay.
    """
    t0 = time.monotonic()
    wanted = node_count() if nodes is None else int(nodes)
    if not 1 <= wanted <= L.MAX_NODES:
        raise UserError(f"--nodes must be between 1 and {L.MAX_NODES}, not {wanted}")
    if kubernetes is not None:
        before = kubeversions.selected()
        chosen = kubeversions.select(kubernetes, env=build.go_env())
        try:
            ensure_binaries(progress=progress)  # while the cluster there is keeps running
        except BaseException:
            kubeversions.select(before)
            raise
        was = kubeversions.running()
        if was and any(was.get(k) != v for k, v in chosen.items()):
            progress(f"switching the local cluster from Kubernetes {was.get('KUBERNETES_VERSION')} to "
                     f"{chosen['KUBERNETES_VERSION']}: it is made anew (the registry's images stay)")
            _down(progress)
            wanted = 1 if nodes is None else wanted
    if is_up() and node_count() == wanted:
        try:
            if (all(node_ready(Node(i).name) for i in range(1, wanted + 1)) and docker_ok() and registry_ok()
                    and _apiserver_current() and all(_addon_current(a) for a in addons.BUILT_ADDONS)):
                progress(f"the local cluster is already up (context {L.CONTEXT}, {wanted} node{'s' if wanted > 1 else ''}, "
                         f"Kubernetes {L.versions()['KUBERNETES_VERSION']})")
                return time.monotonic() - t0
        except Exception:
            pass
    preflight()
    ensure_binaries(progress=progress)
    addons.ensure_addon_binaries(progress=progress)
    node_ip = L.node_ip()
    _sysctl("net.ipv4.ip_forward", "1")
    _sysctl("net.bridge.bridge-nf-call-iptables", "1")
    write_configs(node_ip)
    netclean.ensure_bridge_and_routes()

    if not docker_ok():
        progress("starting dockerd")
        procs.start("dockerd", ["dockerd"])
        procs.wait_for(docker_ok, "dockerd", 60, progress, name="dockerd")
    # Docker sets the FORWARD policy to DROP, which would cut pod traffic off.
    subprocess.run(["iptables", "-P", "FORWARD", "ACCEPT"], check=False)
    try:
        registry_ok()
    except Exception:
        if procs.port_in_use(5000):
            raise UserError("port 5000 is in use by something that is not a container registry",
                            hint="stop it (e.g. an `invoke serve` storage API) and run `invoke cluster.up` again") from None
        progress(f"starting the local registry on {L.REGISTRY_HOST}")
        procs.start("registry", ["docker-registry", "serve", str(L.STATE / "registry.yml")])
        procs.wait_for(registry_ok, "the registry", 30, progress, name="registry")

    if _start("containerd", node_ip, progress):
        procs.wait_for(lambda: subprocess.run(addons.ctr("version"), capture_output=True).returncode == 0,
                       "containerd", 30, progress, name="containerd")
    addons.ensure_images()
    if _start("etcd", node_ip, progress):
        procs.wait_for(lambda: _http_ok("http://127.0.0.1:2379/health"), "etcd", 30, progress, name="etcd")
    if not _apiserver_current(node_ip):
        progress("restarting kube-apiserver: its flags changed")
        procs.stop("kube-apiserver")
    if _start("kube-apiserver", node_ip, progress):
        procs.wait_for(lambda: api_get("/readyz") == "ok", "kube-apiserver /readyz", 90, progress,
                       name="kube-apiserver")
    for name in ("kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"):
        _start(name, node_ip, progress)
    procs.wait_for(node_ready, f"node {L.NODE_NAME} Ready", 120, progress, name="kubelet")
    progress("applying CoreDNS and the local-registry-hosting ConfigMap")
    _apply(addons.manifests())
    procs.wait_for(lambda: deployment_available("kube-system", "coredns"), "CoreDNS available", 120, progress)
    _ensure_nodes(wanted, progress)
    _ensure_built_addons(progress)
    kubeversions.record_running()
    elapsed = time.monotonic() - t0
    progress(f"the local cluster is up in {elapsed:.0f}s with {wanted} node{'s' if wanted > 1 else ''}, "
             f"Kubernetes {L.versions()['KUBERNETES_VERSION']}: context {L.CONTEXT}, kubeconfig {L.KUBECONFIG}")
    progress(f"  export KUBECONFIG={L.KUBECONFIG}")
    return elapsed


def _apiserver_current(node_ip: str | None = None) -> bool:
    """The running kube-apiserver (if any) was started with today's flags."""
    pid = procs.pid_of("kube-apiserver")
    if pid is None:
        return True
    try:
        import psutil
        return psutil.Process(pid).cmdline() == argv("kube-apiserver", node_ip or L.node_ip())
    except Exception:
        return False


def _addon_current(addon) -> bool:
    """The addon's workload runs the pinned image and is available."""
    kind, name = addon.workload
    obj = api_get(f"/apis/apps/v1/namespaces/kube-system/{kind.lower()}s/{name}")
    images = [c["image"] for c in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])]
    if kind == "DaemonSet":  # a ready pod of the pinned image on every node this host runs now
        # (read from the pods: the DaemonSet's counts lag for a minute after a node is removed)
        from urllib.parse import quote

        sel = ",".join(f"{k}={v}" for k, v in obj["spec"]["selector"]["matchLabels"].items())
        pods = api_get(f"/api/v1/namespaces/kube-system/pods?labelSelector={quote(sel)}")["items"]
        ready = {p["spec"].get("nodeName") for p in pods if not p["metadata"].get("deletionTimestamp")
                 and addon.image in [c["image"] for c in p["spec"]["containers"]] and _ready(p)}
        return addon.image in images and {Node(i).name for i in range(1, node_count() + 1)} <= ready
    return addon.image in images and deployment_available("kube-system", name)


def _ensure_built_addons(progress) -> None:
    """Addons built from source (localcluster/addons.py): image in the registry, applied, available."""
    addons.install(_apply, _addon_current, progress=progress)


def _ensure_nodes(wanted: int, progress) -> None:
    """Nodes 2..wanted exist and are Ready; nodes beyond wanted are deleted and taken apart."""
    for node in extra_nodes.existing():
        if node.index > wanted:
            progress(f"removing node {node.name}")
            _delete_node(node.name)
            extra_nodes.remove(node, progress)
    if wanted == 1:
        _remove_nodes_network()
        return
    extra_nodes.ensure_host_network()
    new = [Node(i) for i in range(2, wanted + 1)]
    for node in new:
        extra_nodes.start(node, progress)
    for node in new:
        procs.wait_for(lambda node=node: node_ready(node.name), f"node {node.name} Ready", 120, progress,
                       name=node.proc("kubelet"))


def _remove_nodes_network() -> None:
    extra_nodes.remove_host_network()
    netclean.iptables_chains_removed(("TWOTIER-",))
    for route in extra_nodes.host_routes():
        subprocess.run(["ip", "route", "del", *route.split()], capture_output=True)


def _apply(manifests: str, api_client=None) -> None:
    """Server-side apply of a multi-document YAML, in its order, through the Python client (on the
    local cluster, or on API_CLIENT's)."""
    import yaml
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic import DynamicClient

    api = DynamicClient(api_client or _api_client())
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        meta = doc["metadata"]
        what = f"{doc['kind']} " + "/".join(filter(None, (meta.get("namespace"), meta["name"])))
        try:
            api.server_side_apply(api.resources.get(api_version=doc["apiVersion"], kind=doc["kind"]),
                                  body=doc, name=meta["name"], namespace=meta.get("namespace"),
                                  field_manager="twotier-cluster", force_conflicts=True, _request_timeout=30)
        except ApiException as err:
            raise UserError(f"applying the cluster addon {what} failed: {err.status} {err.reason}: "
                            f"{(err.body or '')[:400]}") from None


def _delete_node(name: str) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.CoreV1Api(_api_client()).delete_node(name, _request_timeout=30)
    except ApiException as err:
        if err.status != 404:
            raise UserError(f"deleting node {name} failed: {err.status} {err.reason}") from None


# ------------------------------------------------------------------------------------------ down

def crictl(*args: str) -> list[str]:
    ep = f"unix://{L.CONTAINERD_SOCK}"
    return [str(L.binary("cri-tools", "crictl")), "--runtime-endpoint", ep, "--image-endpoint", ep,
            "--timeout", "30s", *args]


@exclusive("cluster.up/down")
def down(progress=print, purge: bool = False) -> None:
    """Stop everything up() started and remove the host state it created."""
    _down(progress, purge)


def _down(progress=print, purge: bool = False) -> None:
    for node in extra_nodes.existing():   # nodes 2..N first: they hang off the host's network
        extra_nodes.remove(node, progress)
    for name in ("kube-proxy", "kubelet", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
        if procs.stop(name):
            progress(f"stopped {name}")
    if procs.running("containerd") and L.binary("cri-tools", "crictl").exists():
        progress("removing pod sandboxes (CNI teardown)")
        subprocess.run(crictl("rmp", "--all", "--force"), capture_output=True)
        procs.stop("containerd", timeout=20)
        progress("stopped containerd")
    for pid in _our_shims():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    for name in ("registry", "dockerd"):
        if procs.stop(name, timeout=20):
            progress(f"stopped {name}")
    kp = L.binary("kubernetes", "kube-proxy")
    if kp.exists():
        subprocess.run([str(kp), "--cleanup", "--v=0"], capture_output=True)
    rules = netclean.iptables_chains_removed(("CNI-", "KUBE-", "TWOTIER-"))
    addons.remove_ipsets()  # kube-router's sets, unreferenced now that its KUBE-* chains are gone
    _remove_nodes_network()
    ns = netclean.remove_cni_netns()
    netclean.remove_routes()
    br = netclean.remove_bridge()
    mounts = netclean.unmount_all(L.STATE, L.RUN)
    cg = netclean.remove_kubepods_cgroups()
    progress(f"network and host state removed: {rules} iptables rules, {ns} netns, bridge {'removed' if br else 'absent'}, "
             f"{mounts} mounts, {cg} cgroups")
    shutil.rmtree(L.STATE, ignore_errors=True)
    shutil.rmtree(L.RUN, ignore_errors=True)
    if purge:
        shutil.rmtree(L.REGISTRY_DATA, ignore_errors=True)
        progress("registry data removed")
    progress("the local cluster is down")


def _our_shims() -> list[int]:
    """Shims outlive containerd by design; these are the ones of our containerd."""
    sock = str(L.CONTAINERD_SOCK)
    return [pid for pid, cmd in procs.find(lambda c: c.split()[0].endswith("containerd-shim-runc-v2") and sock in c)]


# ------------------------------------------------------------------------------------------ status

def status_rows() -> list[tuple[str, str, str]]:
    rows = []
    for name in ["registry", "dockerd", *COMPONENTS]:
        pid = procs.pid_of(name)
        state = "running" if pid else "stopped"
        if name == "dockerd" and not pid and docker_ok():
            state = "running (not ours)"
        if name == "registry" and not pid:
            with contextlib.suppress(Exception):  # nothing answers on its port
                state = "running (not ours)" if registry_ok() else state
        rows.append((name, str(pid or "-"), state))
    for node in extra_nodes.existing():
        for comp in ("namespaces", *extra_nodes.COMPONENTS):
            pid = procs.pid_of(node.proc(comp))
            rows.append((f"{node.name}/{comp}", str(pid or "-"), "running" if pid else "stopped"))
    names = [Node(i).name for i in range(1, node_count() + 1)]
    try:
        listed = api_get("/api/v1/nodes")["items"]
        names += [n["metadata"]["name"] for n in listed if n["metadata"]["name"] not in names]
        ready = {n["metadata"]["name"]: "Ready" if _ready(n) else "NotReady" for n in listed}
    except Exception:
        ready = {}
    for name in names:
        ip = ""
        with contextlib.suppress(KeyError):  # a node this host does not run
            ip = f" ({extra_nodes.by_name(name).ip})"
        rows.append((f"node/{name}{ip}", "-", ready.get(name, "unreachable" if not ready else "absent")))
    return rows
