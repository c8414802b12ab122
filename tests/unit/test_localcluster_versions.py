"""Which Kubernetes release the local cluster runs (localcluster.versions): the default's pins are
its own build/dependencies.yaml's, another release's are read from its file once, and what the
project does not support is refused with one line before anything is downloaded. No cluster."""
from __future__ import annotations

import re

import pytest

from localcluster import build, versions
from localcluster import layout as L
from localcluster.errors import ClusterError

DEPS_1_35_4 = """\
dependencies:
  - name: "cni"
    version: 1.8.0
  - name: "coredns-kube-up"
    version: 1.13.1
  - name: "coredns-kubeadm"
    version: 1.13.1
  - name: "crictl"
    version: 1.34.0
  - name: "etcd"
    version: 3.6.6
  - name: "registry.k8s.io/pause"
    version: 3.10.1
"""


@pytest.fixture
def cluster_dirs(tmp_path, monkeypatch):
    """The cache and the cluster's state in tmp_path; the versions read afresh, before and after."""
    monkeypatch.setattr(L, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(L, "STATE", tmp_path / "state" / "cluster")
    L.versions.cache_clear()
    yield tmp_path
    L.versions.cache_clear()


@pytest.fixture
def fake_module(tmp_path, monkeypatch):
    """k8s.io/kubernetes@v1.35.4 as the Go proxy would give it: only its dependencies.yaml."""
    calls = []

    def download(version, env=None):
        calls.append(version)
        d = tmp_path / "mod" / version
        (d / "build").mkdir(parents=True, exist_ok=True)
        (d / "build" / "dependencies.yaml").write_text(DEPS_1_35_4)
        return d

    monkeypatch.setattr(versions, "download_module", download)
    return calls


def test_default_pins_are_the_ones_its_release_is_built_and_tested_with():
    """versions.env's etcd, CoreDNS, crictl and pause lines = the default release's own
    build/dependencies.yaml (the module from the Go proxy, cached by Go after the first build)."""
    d = versions.defaults()
    moddir = versions.download_module(d["KUBERNETES_VERSION"], env=build.go_env())
    found = versions.dependencies((moddir / "build" / "dependencies.yaml").read_text())
    assert {k: d[k] for k in found} == found
    assert d["CONTAINERD_VERSION"] == d[f"CONTAINERD_FOR_1_{versions.minor(d['KUBERNETES_VERSION'])}"]


def test_dependencies_yaml_gives_our_keys_with_tags():
    assert versions.dependencies(DEPS_1_35_4) == {"ETCD_VERSION": "v3.6.6", "COREDNS_VERSION": "v1.13.1",
                                                 "CRITOOLS_VERSION": "v1.34.0", "PAUSE_VERSION": "3.10.1"}
    with pytest.raises(ClusterError, match="no version for ETCD_VERSION"):
        versions.dependencies(DEPS_1_35_4.replace('"etcd"', '"etcd-image"'))


@pytest.mark.parametrize("bad, words", [
    ("1.35.4", "not a Kubernetes release: write it as v1.<minor>.<patch>"),
    ("v1.36", "not a Kubernetes release"),
    ("v1.38.0-beta.0", "not a Kubernetes release"),
    ("v1.34.4", "older than 1.35, the oldest minor this project supports"),
    ("v1.99.0", "newer than 1.37"),
])
def test_unsupported_releases_are_refused_in_one_line_before_any_download(bad, words, cluster_dirs, fake_module):
    with pytest.raises(ClusterError) as err:
        versions.select(bad)
    assert words in err.value.message and "\n" not in err.value.message
    assert fake_module == [] and not versions.selection_file().exists()


def test_a_release_the_proxy_does_not_serve_is_one_clear_line(cluster_dirs):
    with pytest.raises(ClusterError) as err:
        versions.download_module("v1.35.99", env=build.go_env())
    assert err.value.message == ("the Go module proxy does not serve k8s.io/kubernetes v1.35.99: "
                                 "choose a release it serves (go list -m -versions k8s.io/kubernetes)")


def test_another_release_brings_its_own_dependencies_read_once_and_kept(cluster_dirs, fake_module):
    default = versions.defaults()
    chosen = versions.select("v1.35.4")
    assert chosen == {"KUBERNETES_VERSION": "v1.35.4", "ETCD_VERSION": "v3.6.6", "COREDNS_VERSION": "v1.13.1",
                      "CRITOOLS_VERSION": "v1.34.0", "PAUSE_VERSION": "3.10.1",
                      "CONTAINERD_VERSION": default["CONTAINERD_FOR_1_35"]}
    # everything that asks for versions (builds, kubectl on PATH, crictl) now gets 1.35.4's
    assert {k: L.versions()[k] for k in chosen} == chosen
    assert L.kubectl_path() == L.CACHE / "bin" / "kubernetes-v1.35.4" / "kubectl"
    assert L.bin_dir("etcd") == L.CACHE / "bin" / "etcd-v3.6.6"
    assert L.pause_image() == "registry.k8s.io/pause:3.10.1"
    assert L.versions()["TILT_VERSION"] == default["TILT_VERSION"]  # not tied to a release
    assert versions.set_file("v1.35.4").read_text().startswith("# Read from k8s.io/kubernetes@v1.35.4")
    # chosen again: from the cache, no second download
    assert versions.select("v1.35.4") == chosen and fake_module == ["v1.35.4"]


def test_no_choice_is_the_default_and_empty_returns_to_it(cluster_dirs, fake_module):
    default = versions.defaults()
    assert L.versions() == default and versions.selected() == default["KUBERNETES_VERSION"]
    versions.select("v1.35.4")
    assert L.versions()["KUBERNETES_VERSION"] == "v1.35.4"
    back = versions.select("")
    assert back["KUBERNETES_VERSION"] == default["KUBERNETES_VERSION"] and L.versions() == default
    assert L.kubectl_path() == L.CACHE / "bin" / f"kubernetes-{default['KUBERNETES_VERSION']}" / "kubectl"


def test_the_choice_outlives_cluster_down_and_the_running_set_does_not(cluster_dirs, fake_module):
    """The choice sits beside the cluster's state (down removes STATE, keeps the registry)."""
    versions.select("v1.35.4")
    L.STATE.mkdir(parents=True)
    versions.record_running()
    assert versions.running()["KUBERNETES_VERSION"] == "v1.35.4"
    assert versions.selection_file().parent == L.STATE.parent  # where the registry's data lives too
    assert not versions.selection_file().is_relative_to(L.STATE)


def test_kubelet_may_run_on_this_cgroup_v1_host():
    from localcluster import configs

    assert '"failCgroupV1": false' in configs.kubelet_config()


def test_version_lines_are_plain_key_value_for_bash_and_the_tiltfile():
    text = L.VERSIONS_FILE.read_text()
    for line in text.splitlines():
        assert not line or line.startswith("#") or re.fullmatch(r"[A-Z0-9_]+=\S+", line), line
    assert text.split("KUBERNETES_VERSION=")[1].split()[0] == versions.defaults()["KUBERNETES_VERSION"]


class Stop(Exception):
    """Raised where up() would start touching the host (preflight): the choice is made by then."""


@pytest.fixture
def up_until_preflight(cluster_dirs, fake_module, monkeypatch):
    import localcluster

    calls = []
    monkeypatch.setattr(localcluster, "is_up", lambda: False)
    monkeypatch.setattr(localcluster, "node_count", lambda: 1)
    monkeypatch.setattr(localcluster, "ensure_binaries", lambda progress=print: calls.append(
        ("build", L.versions()["KUBERNETES_VERSION"])))
    monkeypatch.setattr(localcluster, "_down", lambda progress=print, purge=False: calls.append(("down", purge)))
    monkeypatch.setattr(localcluster, "preflight", lambda: (_ for _ in ()).throw(Stop()))
    monkeypatch.setattr(build, "go_env", lambda environ=None: {})
    return localcluster, calls


def test_up_on_another_release_builds_it_first_then_remakes_the_cluster_keeping_the_registry(up_until_preflight):
    localcluster, calls = up_until_preflight
    default = versions.defaults()["KUBERNETES_VERSION"]
    L.STATE.mkdir(parents=True)
    versions.record_running()  # a cluster made with the default release
    lines = []
    with pytest.raises(Stop):
        localcluster.up(progress=lines.append, kubernetes="v1.35.4")
    assert calls == [("build", "v1.35.4"), ("down", False)]  # built while the old one ran; purge=False
    assert f"switching the local cluster from Kubernetes {default} to v1.35.4: it is made anew " \
           "(the registry's images stay)" in lines
    calls.clear()
    (L.STATE / "versions.env").write_text("KUBERNETES_VERSION=v1.35.4\n" + "".join(
        f"{k}={v}\n" for k, v in versions.resolve("v1.35.4").items()))
    with pytest.raises(Stop):
        localcluster.up(progress=lines.append, kubernetes="v1.35.4")  # the same again: nothing remade
    with pytest.raises(Stop):
        localcluster.up(progress=lines.append)  # no choice (invoke test, e2e): keeps 1.35.4
    assert calls == [("build", "v1.35.4")] and versions.selected() == "v1.35.4"
    with pytest.raises(Stop):
        localcluster.up(progress=lines.append, kubernetes="")  # cluster.up without --kubernetes
    assert calls[-2:] == [("build", default), ("down", False)] and versions.selected() == default


def test_a_failed_build_leaves_the_running_release_chosen(up_until_preflight, monkeypatch):
    localcluster, calls = up_until_preflight

    def fails(progress=print):
        raise ClusterError("building kubernetes v1.35.4 failed")

    monkeypatch.setattr(localcluster, "ensure_binaries", fails)
    with pytest.raises(ClusterError):
        localcluster.up(kubernetes="v1.35.4")
    assert versions.selected() == versions.defaults()["KUBERNETES_VERSION"] and calls == []


def test_one_command_may_use_another_release_without_changing_the_choice(cluster_dirs, fake_module, monkeypatch):
    """TWOTIER_KUBERNETES=v1.35.4 invoke cluster.build: builds it while the cluster runs the default."""
    monkeypatch.setenv("TWOTIER_KUBERNETES", "v1.35.4")
    monkeypatch.setattr(build, "go_env", lambda environ=None: {})
    assert L.versions()["KUBERNETES_VERSION"] == "v1.35.4" and L.versions()["ETCD_VERSION"] == "v3.6.6"
    assert not versions.selection_file().exists()
    monkeypatch.setenv("TWOTIER_KUBERNETES", "v1.34.4")
    L.versions.cache_clear()
    with pytest.raises(ClusterError, match="older than 1.35"):
        L.versions()


def test_every_process_reads_the_chosen_set_whatever_its_cache(cluster_dirs, fake_module, monkeypatch, tmp_path):
    """A test or tool with its own TWOTIER_CACHE still sees the release the cluster runs."""
    chosen = versions.select("v1.35.4")
    monkeypatch.setattr(L, "CACHE", tmp_path / "another-cache")
    L.versions.cache_clear()
    assert {k: L.versions()[k] for k in chosen} == chosen
    assert versions.selection_file().read_text().startswith("KUBERNETES_VERSION=v1.35.4\n")
