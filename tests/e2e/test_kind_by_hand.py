"""A kind cluster made by hand (docs/kind.md, "A kind cluster made by hand"): `kind create cluster`
with the project's node image and the provider's config, but no registry and no containerd certs.d
entry. On it `invoke up` loads the images with `kind load` (no registry is advertised) and prints
its 17 PASS lines with the host's checks through the node container's IP; `invoke deploy`, `invoke
smoke` and `invoke loader-shell` (on a pseudo-terminal) work; `tilt ci` loads the images with kind
itself and passes; `invoke clean` leaves none of the project's objects; without a kind CLI, `invoke
push` says what to install.

One cluster of one node, created and deleted by the module fixture. Its kubeconfig is a copy of the
local cluster's, to which kind adds its context and makes it current, as it does to a user's
~/.kube/config; the fixture deletes the cluster and makes the local cluster's context current again.
Nothing else changes: the process's own KUBECONFIG is untouched, so later tests use the local
cluster. Self-contained: `pytest --noconftest tests/e2e/test_kind_by_hand.py` runs it alone.
"""
from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localcluster import layout as L
from localcluster.kind import provider
from twotier.images import kindload
from twotier.kube import client as kube
from twotier.poll import poll

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]
REPO = Path(__file__).resolve().parents[2]
TRIAL = REPO / "localcluster" / "kind" / "trial.sh"
NAME = "twotier-hand"
NODE = f"{NAME}-control-plane"
PASS = re.compile(r"^PASS ", re.MULTILINE)
FAIL = re.compile(r"^FAIL ", re.MULTILINE)


def run(argv: list[str], env: dict, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    start = time.monotonic()
    res = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    res.seconds = time.monotonic() - start
    print(f"$ {' '.join(argv)}  ({res.seconds:.1f}s, rc={res.returncode})\n{res.stdout[-4000:]}{res.stderr[-3000:]}")
    assert res.returncode == 0 or not check, f"{argv} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def invoke(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "invoke", *args], env, timeout=900, check=check)


class Hand:
    """The cluster made by hand: its kubeconfig and the environment a user's shell would have."""

    def __init__(self, kubeconfig: Path):
        self.kubeconfig = kubeconfig
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "INVOKE_TWOTIER_BASE_IMAGE": "local"}
        for key in [k for k in self.env if k.startswith("INVOKE_TWOTIER_") and k != "INVOKE_TWOTIER_BASE_IMAGE"]:
            del self.env[key]  # the defaults: nothing says "kind" or names a registry for it

    def kubectl(self, *args: str) -> str:
        return run([str(L.kubectl_path()), *args], self.env, timeout=120).stdout

    def objects(self) -> list[str]:
        return self.kubectl("get", "deployments,services,pods,pvc,pv", "-l", "app.kubernetes.io/part-of=twotier",
                            "-o", "name").split()


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    kubeconfig = tmp_path_factory.mktemp("kind-by-hand") / "config"
    shutil.copyfile(L.KUBECONFIG, kubeconfig)  # the user's kubeconfig, with the local cluster in it
    cluster = Hand(kubeconfig)
    made_lib_modules = not os.path.exists("/lib/modules")  # dockerd makes it for kind's mount (docs/kind.md)
    image = run(["bash", str(TRIAL), "image"], cluster.env).stdout.split()[-1]  # built once, cached
    config = kubeconfig.parent / "kind.yaml"
    config.write_text(run(["bash", str(TRIAL), "config"], cluster.env).stdout)
    assert "registry" not in config.read_text() and "certs.d" not in config.read_text()
    kind = str(provider.kind_cli())
    try:
        created = run([kind, "create", "cluster", "--name", NAME, "--image", image, "--config", str(config)],
                      cluster.env)
        print(f"kind create cluster by hand: {created.seconds:.1f}s")
        cni = run(["bash", str(TRIAL), "cni"], {**cluster.env, "KIND_CLUSTER": NAME})
        print(f"trial.sh cni (conflist, node Ready, CoreDNS, a pod resolves a name): {cni.seconds:.1f}s")
        yield cluster
    finally:
        run([kind, "delete", "cluster", "--name", NAME], cluster.env, check=False)
        run([str(L.kubectl_path()), "config", "use-context", L.CONTEXT], cluster.env, check=False)
        if made_lib_modules and not subprocess.run(["docker", "ps", "-aq", "--filter", "label=io.x-k8s.kind.cluster"],
                                                   capture_output=True, text=True).stdout.strip():
            try:
                os.rmdir("/lib/modules")
            except OSError:
                pass
    contexts = run([str(L.kubectl_path()), "config", "get-contexts", "-o", "name"], cluster.env).stdout.split()
    current = run([str(L.kubectl_path()), "config", "current-context"], cluster.env).stdout.strip()
    assert f"kind-{NAME}" not in contexts and current == L.CONTEXT, (contexts, current)
    assert NODE not in subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True,
                                      text=True).stdout.split()


def test_it_is_a_kind_cluster_without_a_registry(hand):
    assert hand.kubectl("config", "current-context").strip() == f"kind-{NAME}"
    cluster = kube.connect(kube.Target(kubeconfig=str(hand.kubeconfig)))
    found = kindload.detect(cluster)
    assert found == kindload.KindCluster(NAME, (NODE,), ""), found
    provider_id = json.loads(hand.kubectl("get", "node", NODE, "-o", "json"))["spec"]["providerID"]
    assert provider_id == f"kind://docker/{NAME}/{NODE}"
    certs = subprocess.run(["docker", "exec", NODE, "ls", "/etc/containerd/certs.d"], capture_output=True, text=True)
    assert certs.stdout.strip() == "", certs.stdout  # no registry mirror configured in the node


def test_invoke_up_loads_the_images_with_kind_and_passes_every_check(hand):
    res = invoke("up", env=hand.env)
    print(f"invoke up on the cluster made by hand: {res.seconds:.1f}s")
    assert f"kind cluster {NAME} advertises no registry: kind load instead of docker push" in res.stdout
    assert "pushed in" not in res.stdout
    assert len(PASS.findall(res.stdout)) == 17 and not FAIL.findall(res.stdout), res.stdout[-3000:]
    node_ip = json.loads(hand.kubectl("get", "node", NODE, "-o", "json"))["status"]["addresses"][0]["address"]
    assert f"host -> node {node_ip}:" in res.stdout  # the host's checks reach the node container's IP
    pods = json.loads(hand.kubectl("get", "pods", "-l", "app.kubernetes.io/part-of=twotier", "-o", "json"))["items"]
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    in_node = kindload.node_images(NODE)
    assert images and images <= in_node, (images, in_node)
    volume = subprocess.run(["docker", "exec", NODE, "stat", "-c", "%u:%g %a", "/var/lib/twotier/kubetestpv"],
                            capture_output=True, text=True)
    assert volume.stdout.strip() == "10001:10001 770", volume  # made in the node, owned by the storage server


def test_deploy_and_smoke_again(hand):
    deployed = invoke("deploy", env=hand.env)
    assert "deployed: 0 changed" in deployed.stdout
    smoke = invoke("smoke", env=hand.env)
    assert len(PASS.findall(smoke.stdout)) == 17 and not FAIL.findall(smoke.stdout), smoke.stdout[-3000:]


def test_loader_shell_on_a_terminal(hand):
    """`invoke loader-shell` hands a terminal to `kubectl exec -it`: a command typed there runs in the pod."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.chdir(REPO)
            os.execve(sys.executable, [sys.executable, "-m", "invoke", "loader-shell"], hand.env)
        finally:
            os._exit(127)
    seen = ""
    try:
        os.write(fd, b"curl -s in-svc:5000/items; echo; echo marker-$((40 + 2)); exit\n")
        deadline = time.monotonic() + 120
        while "marker-42" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(fd, 65536).decode(errors="replace")
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
        _, status = os.waitpid(pid, 0) if "marker-42" in seen else (pid, -1)
    finally:
        if "marker-42" not in seen:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    print(seen[-2000:])
    assert "marker-42" in seen, seen[-2000:]
    assert re.search(r"\[.*\]|\{.*\}", seen), seen[-2000:]  # in-svc answered with JSON
    assert os.waitstatus_to_exitcode(status) == 0


def test_tilt_ci_loads_the_images_with_kind_itself(hand):
    """Plain `tilt ci` (the Tiltfile, no --registry): Tilt sees a kind cluster without a registry and
    runs `kind load` (PATH's kind: the shimmed one); the Tiltfile pins local-pv and makes its directory
    in the node. `tilt down` then deletes what it made."""
    from twotier.dev.tiltrun import tilt_binary
    from twotier.ports import free_port

    tilt = tilt_binary()
    env = {**hand.env, "PATH": os.pathsep.join([str(provider.kind_cli().parent), str(L.kubectl_path().parent),
                                                 os.environ.get("PATH", "")])}
    port = str(free_port())
    try:
        res = run([tilt, "ci", "--file", str(REPO / "Tiltfile"), "--port", port, "--timeout", "600s"], env,
                  timeout=700, check=False)
        print(f"tilt ci on the cluster made by hand: {res.seconds:.1f}s")
    finally:
        run([tilt, "down", "--file", str(REPO / "Tiltfile")], env, timeout=300, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert out.count("Loading image to KIND") == 3, out[-3000:]
    assert len(re.findall(r"│ PASS ", out)) == 17 and "│ FAIL " not in out, out[-3000:]
    # tilt down asks for the deletions and returns: the pods and the claim go a few seconds later
    poll(lambda: hand.objects() == [], timeout=120, what="tilt down's deletions")


def test_without_a_kind_cli_push_says_what_to_install(hand, tmp_path):
    env = {**hand.env, "TWOTIER_CACHE": str(tmp_path), "PATH": "/usr/local/bin:/usr/bin:/bin"}
    assert shutil.which("kind", path=env["PATH"]) is None
    res = invoke("push", env=env, check=False)
    assert res.returncode == 1
    assert "error: the kind CLI is needed to load the images into the kind cluster's nodes" in res.stderr
    assert "go install sigs.k8s.io/kind@" in res.stderr and "Traceback" not in res.stderr


def test_invoke_clean_leaves_nothing(hand):
    invoke("clean", env=hand.env)
    assert hand.objects() == []
