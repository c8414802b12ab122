"""kind load instead of docker push on a kind cluster that advertises no registry (twotier.images.kindload).

The proof on a real cluster made with `kind create cluster` is tests/e2e/test_kind_by_hand.py."""
from __future__ import annotations

import stat
import subprocess

import pytest

from tests.unit.kubefake import FakeCluster, deployment
from twotier.errors import UserError
from twotier.images import build as images
from twotier.images import kindload
from twotier.ops import deploy as deploy_mod
from twotier.ops import hostvolume, render
from twotier.settings import Settings


class KindFake(FakeCluster):
    """A FakeCluster whose nodes are kind's (providerID kind://docker/<cluster>/<node>)."""

    def __init__(self, nodes=("mine-control-plane",), cluster="mine", context="kind-mine", provider=True):
        super().__init__(context=context)
        self.node_names, self.kind_cluster, self.provider = nodes, cluster, provider

    def list(self, api_version, kind, namespace=None, **kw):
        if kind != "Node":
            return super().list(api_version, kind, namespace, **kw)
        return [{"metadata": {"name": n},
                 "spec": {"providerID": f"kind://docker/{self.kind_cluster}/{n}"} if self.provider else {},
                 "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}],
                            "conditions": [{"type": "Ready", "status": "True"}]}}
                for n in self.node_names]


def registry_configmap(host="localhost:5010"):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "local-registry-hosting", "namespace": "kube-public"},
            "data": {"localRegistryHosting.v1": f'host: "{host}"\nhelp: "https://kind.sigs.k8s.io/"\n'}}


@pytest.mark.parametrize(("context", "provider_id", "expected"), [
    ("kind-mine", "kind://docker/mine/mine-control-plane", "mine"),
    ("renamed", "kind://docker/mine/mine-worker", "mine"),       # the nodes say so, whatever the context
    ("kind-mine", "", "mine"),                                    # kind's context name
    ("kind-mine", "kind://podman/other/other-control-plane", "other"),
    ("twotier-local", "", None),
    ("minikube", "", None),
    ("kind-", "", None),
    ("gke_x", "gce://project/zone/node", None),
])
def test_a_kind_cluster_is_known_by_its_nodes_provider_id_or_its_context(context, provider_id, expected):
    nodes = [{"metadata": {"name": "n"}, "spec": {"providerID": provider_id} if provider_id else {}}]
    assert kindload.cluster_name(context, nodes) == expected


def test_the_advertised_registry_is_kep_1755s_host():
    assert kindload.advertised_registry(registry_configmap()) == "localhost:5010"
    assert kindload.advertised_registry(None) == ""
    assert kindload.advertised_registry({"data": {"localRegistryHosting.v1": "[unclosed"}}) == ""
    assert kindload.advertised_registry({"data": {"localRegistryHosting.v1": "just text"}}) == ""


def test_detect_loads_only_when_no_registry_is_advertised():
    cluster = KindFake(nodes=("mine-worker", "mine-control-plane"))
    found = kindload.detect(cluster)
    assert found == kindload.KindCluster("mine", ("mine-control-plane", "mine-worker"), "")
    assert found.loads
    cluster.put(registry_configmap())
    assert kindload.detect(cluster).registry == "localhost:5010"
    assert not kindload.detect(cluster).loads
    assert kindload.detect(FakeCluster()) is None  # the local cluster: the registry, as before


@pytest.mark.parametrize(("ref", "containerd"), [
    ("localhost:5000/sto-img:abc", "localhost:5000/sto-img:abc"),
    ("ghcr.io/me/sto-img:abc", "ghcr.io/me/sto-img:abc"),
    ("me/sto-img:abc", "docker.io/me/sto-img:abc"),
    ("sto-img:abc", "docker.io/library/sto-img:abc"),
])
def test_refs_are_compared_as_containerd_names_them(ref, containerd):
    assert kindload.normalize(ref) == containerd


def test_an_image_is_missing_when_any_node_lacks_it():
    target = kindload.KindCluster("mine", ("cp", "w1", "w2"))
    have = {"cp": {"localhost:5000/a:1", "localhost:5000/b:1"}, "w1": {"localhost:5000/a:1"}, "w2": None}
    refs = ["localhost:5000/a:1", "localhost:5000/b:1", "localhost:5000/c:1"]
    assert kindload.missing_in_nodes(target, refs, read=have.get) == refs[1:]


def test_deploy_on_kind_without_registry_looks_in_the_nodes_not_the_registry(monkeypatch):
    monkeypatch.setattr(kindload, "node_images", lambda node: {"localhost:5000/api-img:1"})
    monkeypatch.setattr("twotier.images.registry.image_present", lambda ref: pytest.fail("asked the registry"))
    objs = [deployment("api-dep", image="localhost:5000/api-img:1"), deployment("sto-dep", image="localhost:5000/sto-img:2")]
    with pytest.raises(UserError) as info:
        deploy_mod.deploy_objects(KindFake(), objs, dry_run=False, timeout=5, out=lambda line: None)
    assert info.value.message == ("not in kind cluster mine's nodes: localhost:5000/sto-img:2 "
                                  "(nothing was changed)")
    assert "invoke push" in info.value.hint


def test_the_loader_image_is_looked_for_in_the_kind_nodes(monkeypatch):
    monkeypatch.setattr(kindload, "node_images", lambda node: set())
    settings = Settings.from_mapping({"registry": "localhost:5000"})
    with pytest.raises(UserError) as info:
        from twotier.ops import loader

        loader.start_loader(KindFake(), settings, ref="localhost:5000/loader-img:3")
    assert info.value.message == "the loader image is not in kind cluster mine's nodes: localhost:5000/loader-img:3"


def fake_kind(tmp_path, rc=0, stderr=""):
    """A `kind` executable that records its arguments (the real one: tests/e2e/test_kind_by_hand.py)."""
    log = tmp_path / "argv"
    exe = tmp_path / "kind"
    exe.write_text(f'#!/bin/sh\necho "$@" >>{log}\necho "{stderr}" >&2\nexit {rc}\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe, log


def test_load_runs_kind_load_docker_image_with_kinds_cluster_name(tmp_path):
    exe, log = fake_kind(tmp_path)
    lines = []
    kindload.load(kindload.KindCluster("mine", ("mine-control-plane",)), ["r/a:1", "r/b:2"], progress=lines.append,
                  kind=str(exe))
    assert log.read_text().split() == ["load", "docker-image", "--name", "mine", "r/a:1", "r/b:2"]
    assert lines[0] == "r/a:1: loaded into kind cluster mine (mine-control-plane)"


def test_a_failed_kind_load_says_what_kind_said(tmp_path):
    exe, _ = fake_kind(tmp_path, rc=1, stderr="ERROR: no nodes found for cluster \\\"mine\\\"")
    with pytest.raises(UserError) as info:
        kindload.load(kindload.KindCluster("mine", ()), ["r/a:1"], kind=str(exe))
    assert 'no nodes found for cluster "mine"' in info.value.message
    assert "kind get clusters" in info.value.hint


def test_a_missing_kind_cli_is_a_clear_error(monkeypatch, tmp_path):
    from localcluster.kind import provider

    monkeypatch.setattr(provider, "kind_cli", lambda: tmp_path / "absent" / "kind")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as info:
        kindload.kind_binary()
    assert "`kind` is not on PATH" in info.value.message
    assert "go install sigs.k8s.io/kind@v0.33.0" in info.value.hint


def test_push_loads_into_kind_instead_of_pushing(monkeypatch):
    planned = [images.Image("storage", "sto-img", "sto-img", images.SERVICES, "t", "localhost:5000/sto-img:t")]
    monkeypatch.setattr(images, "build", lambda *a, **k: planned)
    monkeypatch.setattr(images, "docker", lambda args, **k: pytest.fail(f"docker {args} run"))
    loaded = []
    monkeypatch.setattr(kindload, "load", lambda target, refs, progress: loaded.append((target.name, refs)))
    lines = []
    assert images.push(Settings.from_mapping({}), "storage", progress=lines.append, cluster=KindFake()) == planned
    assert loaded == [("mine", ["localhost:5000/sto-img:t"])]
    assert lines == ["kind cluster mine advertises no registry: kind load instead of docker push"]


def test_push_to_a_kind_cluster_with_a_registry_pushes(monkeypatch):
    planned = [images.Image("storage", "sto-img", "sto-img", images.SERVICES, "t", "localhost:5010/sto-img:t")]
    monkeypatch.setattr(images, "build", lambda *a, **k: planned)
    pushed = []
    monkeypatch.setattr(images, "docker", lambda args, **k: pushed.append(args) or subprocess.CompletedProcess(args, 0))
    monkeypatch.setattr(kindload, "load", lambda *a, **k: pytest.fail("kind load"))
    cluster = KindFake()
    cluster.put(registry_configmap())
    images.push(Settings.from_mapping({}), "storage", progress=lambda line: None, cluster=cluster)
    assert pushed == [["push", "localhost:5010/sto-img:t"]]


def test_every_image_of_the_manifests_is_pulled_only_if_not_present():
    """kind load puts the images in the nodes: a pod must not try to pull them (content tags,
    never latest; IfNotPresent on every container)."""
    settings = Settings.from_mapping({})
    for stage in ("hello", "storage", "full"):
        objs = render.render_stage(settings, stage) + [render.loader_pod(settings)]
        for obj in objs:
            spec = obj.get("spec", {}).get("template", {}).get("spec") or obj.get("spec", {})
            for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
                assert c.get("imagePullPolicy") == "IfNotPresent", (stage, c["name"])
                assert not c["image"].endswith(":latest"), (stage, c["image"])


def test_the_directory_is_made_in_the_kind_node_with_owner_and_mode(tmp_path):
    """The script docker exec runs in the node, run here on a temporary directory."""
    path = tmp_path / "var/lib/twotier/kubetestpv"
    objs = render.render_stage(Settings.from_mapping({}), "storage")
    for obj in objs:
        if obj["kind"] == "PersistentVolume":
            obj["spec"]["hostPath"]["path"] = str(path)
    calls, lines = [], []

    def run_here(argv, **kw):
        calls.append(argv[:3])
        return subprocess.run(argv[3:], **kw)  # without `docker exec NODE`

    hostvolume.prepare_in_node("mine-control-plane", objs, out=lines.append, run=run_here)
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (10001, 10001, 0o770)
    assert calls[0][1:] == ["exec", "mine-control-plane"]
    assert lines == [f"made {path} in kind node mine-control-plane for the storage tier (owner 10001:10001, mode 0770)"]
    hostvolume.prepare_in_node("mine-control-plane", objs, out=lines.append, run=run_here)
    assert len(lines) == 1  # nothing to change the second time
    (tmp_path / "link").symlink_to(tmp_path)
    for obj in objs:
        if obj["kind"] == "PersistentVolume":
            obj["spec"]["hostPath"]["path"] = str(tmp_path / "link" / "pv")
    with pytest.raises(UserError) as info:
        hostvolume.prepare_in_node("mine-control-plane", objs, out=lines.append, run=run_here)
    assert "is a symbolic link" in info.value.message


def test_for_tilt_local_pv_is_pinned_to_the_kind_node_and_made_there(monkeypatch, capsys):
    """`python -m twotier.ops.hostvolume --for-context CONTEXT`: what the Tiltfile would run (docs/kind.md)."""
    import io

    import yaml

    import twotier.ops.cluster

    monkeypatch.setattr(twotier.ops.cluster, "connect", lambda settings, **kw: KindFake(context=settings.context))
    made = []
    monkeypatch.setattr(hostvolume, "prepare_in_node", lambda node, objs, out: made.append(node))
    objs = render.render_stage(Settings.from_mapping({}), "storage")
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump_all(objs)))
    assert hostvolume.main(["--for-context", "kind-mine"]) == 0
    pv = next(o for o in yaml.safe_load_all(capsys.readouterr().out) if o and o["kind"] == "PersistentVolume")
    assert pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == [
        "mine-control-plane"]
    assert made == ["mine-control-plane"]
