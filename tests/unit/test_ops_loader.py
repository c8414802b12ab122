"""The loader pod: manifest, create/reuse/replace, fail fast, exit codes, TTY rule."""
import copy

import pytest
from kubefake import Clock, FakeCluster, FakeTTY

from twotier.errors import UserError
from twotier.ops.loader import _returncode, ensure_loader, require_tty, shell_argv, start_loader
from twotier.ops.render import loader_pod
from twotier.settings import Settings

IMG = "localhost:5000/loader:abc"


MANIFEST = loader_pod(Settings(namespace="default"), IMG)  # the real k8s/loader render


def running(image=IMG, ready=True, phase="Running", waiting=None):
    p = copy.deepcopy(MANIFEST)
    p["spec"]["containers"][0]["image"] = image
    state = {"waiting": waiting} if waiting else {"running": {}}
    p["status"] = {"phase": phase, "containerStatuses": [{"name": "loader", "ready": ready, "state": state,
                                                          "restartCount": 0}]}
    return p


def comes_up_running(cluster):
    """Make the fake create the loader already running (as the kubelet would, later)."""
    original_create = cluster.create

    def create(obj):
        out = original_create(obj)
        cluster.objects[("Pod", "default", "loader")] = running(obj["spec"]["containers"][0]["image"])
        return out

    cluster.create = create


def test_manifest_is_restricted():
    pod = loader_pod(Settings(namespace="ns1"), IMG)
    assert pod["metadata"]["name"] == "loader" and pod["metadata"]["namespace"] == "ns1"
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] >= 10000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    c = spec["containers"][0]
    assert c["image"] == IMG
    assert {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}.items() <= c["securityContext"].items()
    assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "twotier"
    assert c["resources"]["limits"] and c["resources"]["requests"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert spec["terminationGracePeriodSeconds"] <= 5


def test_creates_and_waits_until_running():
    cluster, clock, lines = FakeCluster(), Clock(), []
    pending = running(phase="Pending", ready=False, waiting={"reason": "ContainerCreating"})
    cluster.script("Pod", "loader", [None, pending, pending, running()])
    ensure_loader(cluster, MANIFEST, timeout=30, out=lines.append, clock=clock, sleep=clock.sleep)
    assert cluster.count("create", "Pod") == 1
    assert lines[0] == f"pod/loader created ({IMG})"
    assert "ContainerCreating" in lines[1]
    assert lines[-1].endswith("pod/loader running")


def test_reuses_a_running_loader_with_the_same_image():
    cluster, lines = FakeCluster(), []
    cluster.put(running())
    ensure_loader(cluster, MANIFEST, timeout=30, out=lines.append)
    assert cluster.count("create") == 0 and cluster.count("delete") == 0
    assert lines == [f"pod/loader reused ({IMG})"]


def test_replaces_a_loader_from_another_image():
    cluster, clock, lines = FakeCluster(), Clock(), []
    cluster.put(running(image="localhost:5000/loader:old"))
    comes_up_running(cluster)
    ensure_loader(cluster, MANIFEST, timeout=30, out=lines.append, clock=clock, sleep=clock.sleep)
    assert lines[0] == "pod/loader replaced (a different image)"
    assert cluster.count("delete", "Pod") == 1 and cluster.count("create", "Pod") == 1
    assert cluster.get("v1", "Pod", "loader")["spec"]["containers"][0]["image"] == IMG


def test_replaces_a_finished_loader():
    cluster, clock, lines = FakeCluster(), Clock(), []
    cluster.put(running(phase="Failed", ready=False))
    cluster.linger[("Pod", "default", "loader")] = 2
    comes_up_running(cluster)
    ensure_loader(cluster, MANIFEST, timeout=30, out=lines.append, clock=clock, sleep=clock.sleep)
    assert lines[0] == "pod/loader replaced (Failed)"


def test_refuses_a_foreign_pod_named_loader():
    cluster = FakeCluster()
    foreign = running()
    foreign["metadata"]["labels"] = {"run": "loader"}  # e.g. the seed's `kubectl run loader`
    cluster.put(foreign)
    with pytest.raises(UserError, match="not the project's") as info:
        ensure_loader(cluster, MANIFEST, timeout=30, out=lambda s: None)
    assert "kubectl delete pod loader" in info.value.hint
    assert cluster.count("delete") == 0


def test_image_pull_failure_is_fast_and_explained():
    cluster, clock = FakeCluster(), Clock()
    bad = running(phase="Pending", ready=False,
                  waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image"})
    cluster.script("Pod", "loader", [None, bad])
    cluster.events.append({"involvedObject": {"kind": "Pod", "name": "loader"}, "type": "Warning",
                           "reason": "Failed", "message": "failed to pull: not found"})
    with pytest.raises(UserError) as info:
        ensure_loader(cluster, MANIFEST, timeout=120, out=lambda s: None, clock=clock, sleep=clock.sleep)
    assert clock.t == 0
    assert "ImagePullBackOff" in info.value.message
    assert "failed to pull: not found" in info.value.message
    assert "invoke build push" in info.value.hint


def test_never_running_times_out_with_status():
    cluster, clock = FakeCluster(), Clock()
    stuck = running(phase="Pending", ready=False, waiting={"reason": "ContainerCreating"})
    cluster.script("Pod", "loader", [None, stuck])
    with pytest.raises(UserError) as info:
        ensure_loader(cluster, MANIFEST, timeout=10, out=lambda s: None, clock=clock, sleep=clock.sleep)
    assert "not running after 10s" in info.value.message
    assert "ContainerCreating" in info.value.message


class Resp:
    """The client's WSClient with a scripted status channel: its own returncode is what is read."""
    from kubernetes.stream.ws_client import WSClient

    returncode = WSClient.returncode
    _returncode = None

    def __init__(self, raw):
        self.raw = raw

    def is_open(self):
        return False

    def read_channel(self, channel):
        assert channel == 3
        return self.raw


@pytest.mark.parametrize("raw, code", [
    ('{"metadata":{},"status":"Success"}', 0),
    ('{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code",'
     '"reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"6"}]}}', 6),
    ('{"status":"Failure","message":"container not found","reason":"InternalError"}', 1),
    ("", 1),
])
def test_exit_code_from_the_status_channel(raw, code):
    assert _returncode(Resp(raw)) == code


def test_require_tty():
    require_tty(FakeTTY(True), FakeTTY(True))
    for stdin, stdout in ((FakeTTY(False), FakeTTY(True)), (FakeTTY(True), FakeTTY(False))):
        with pytest.raises(UserError, match="needs an interactive terminal") as info:
            require_tty(stdin, stdout)
        assert "invoke smoke" in info.value.hint


def test_shell_argv():
    assert shell_argv("kubectl", FakeCluster(), "bash")[-5:] == ["exec", "-it", "loader", "--", "bash"]


# --- start_loader: a running loader needs no image ---------------------------------------------
OLD = "localhost:5000/loader:fc9395a6a4b2"  # pushed by a bootstrap whose settings this shell lacks


def live_loader(image=OLD, phase="Running", ready=True, owned=True):
    p = running(image=image, ready=ready, phase=phase)
    if not owned:
        p["metadata"]["labels"] = {}
    return p


def test_a_running_project_loader_is_reused_whatever_its_image_without_images_or_registry(monkeypatch, capsys):
    from twotier.images import build as images
    from twotier.images import registry

    def forbidden(*args, **kwargs):
        raise AssertionError("start_loader computed image tags or asked the registry")

    monkeypatch.setattr(images, "plan", forbidden)
    monkeypatch.setattr(registry, "missing_images", forbidden)
    cluster = FakeCluster()
    cluster.put(live_loader())
    assert start_loader(cluster, Settings())["spec"]["containers"][0]["image"] == OLD
    assert f"pod/loader reused ({OLD})" in capsys.readouterr().out
    assert not [c for c in cluster.calls if c[0] in ("create", "delete")]


@pytest.mark.parametrize("live", [None, live_loader(phase="Pending", ready=False), live_loader(ready=False),
                                  live_loader(owned=False)], ids=["absent", "pending", "not-ready", "not-ours"])
def test_no_reuse_unless_running_ready_and_the_projects(live, monkeypatch):
    from twotier.ops import loader as loadermod
    from twotier.ops import render

    cluster, made = FakeCluster(), []
    if live is not None:
        cluster.put(live)
    monkeypatch.setattr(render, "loader_pod", lambda s, ref=None: made.append(ref) or MANIFEST)
    monkeypatch.setattr(loadermod.kindload, "missing_images", lambda cluster, objs: ("the registry", []))
    monkeypatch.setattr(loadermod, "ensure_loader", lambda c, m, timeout: "ensured")
    assert start_loader(cluster, Settings()) == "ensured"
    assert made == [None]  # the manifest with `invoke build`'s tag
