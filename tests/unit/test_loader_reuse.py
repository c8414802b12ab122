"""`invoke loader-shell` reuses a running loader pod without needing (or computing) its image."""
import copy
import io

import pytest

import tasks
from kubefake import FakeCluster, project_context
from twotier import images, kube, loader, project, registrycheck
from twotier.loader import loader_pod, running_loader

OLD = "localhost:5000/loader:fc9395a6a4b2"  # pushed by a bootstrap whose settings this shell lacks


def pod(image=OLD, phase="Running", ready=True, owned=True):
    p = copy.deepcopy(loader_pod(image, "default"))
    if not owned:
        p["metadata"]["labels"] = {}
    p["status"] = {"phase": phase, "containerStatuses": [{"name": "loader", "ready": ready,
                                                          "state": {"running": {}}}]}
    return p


class TTY(io.StringIO):
    def isatty(self):
        return True


def test_a_running_project_loader_is_reused_whatever_its_image():
    cluster, lines = FakeCluster(), []
    cluster.put(pod())
    assert running_loader(cluster, out=lines.append)["spec"]["containers"][0]["image"] == OLD
    assert lines == [f"pod/loader reused ({OLD})"]


@pytest.mark.parametrize("live", [None, pod(phase="Pending", ready=False), pod(ready=False),
                                  pod(owned=False)], ids=["absent", "pending", "not-ready", "not-ours"])
def test_no_reuse_unless_running_ready_and_the_projects(live):
    cluster = FakeCluster()
    if live is not None:
        cluster.put(live)
    assert running_loader(cluster, out=lambda m: None) is None


def test_loader_shell_reuses_the_running_pod_without_touching_images_or_the_registry(monkeypatch):
    cluster = FakeCluster()
    cluster.put(pod())
    calls = []

    def forbidden(*args, **kwargs):
        raise AssertionError("loader-shell computed image tags or asked the registry")

    monkeypatch.setattr("sys.stdin", TTY())
    monkeypatch.setattr("sys.stdout", TTY())
    monkeypatch.setattr(project, "connect", lambda s, allow=None: cluster)
    monkeypatch.setattr(kube, "kubectl_binary", lambda: "/usr/bin/kubectl")
    monkeypatch.setattr(images, "plan", forbidden)
    monkeypatch.setattr(registrycheck, "missing_images", forbidden)
    monkeypatch.setattr(loader, "hand_over", lambda argv, env: calls.append(argv) or 0)
    tasks.loader_shell(project_context(monkeypatch))
    assert calls and calls[0][-4:] == ["-it", "loader", "--", "sh"]
    assert not [c for c in cluster.calls if c[0] in ("create", "delete")]


def test_loader_shell_starts_the_loader_when_none_runs(monkeypatch):
    cluster, started = FakeCluster(), []
    monkeypatch.setattr("sys.stdin", TTY())
    monkeypatch.setattr("sys.stdout", TTY())
    monkeypatch.setattr(project, "connect", lambda s, allow=None: cluster)
    monkeypatch.setattr(kube, "kubectl_binary", lambda: "/usr/bin/kubectl")
    monkeypatch.setattr(project, "start_loader", lambda c, s, ref=None: started.append(c))
    monkeypatch.setattr(loader, "hand_over", lambda argv, env: 0)
    tasks.loader_shell(project_context(monkeypatch))
    assert started == [cluster]
