"""Cluster addons built from source (localcluster.addons): each declaration is complete, its
manifest is what cluster.up applies, the API server has the aggregation layer metrics-server
needs, and the front-proxy certificates chain to their own CA. No cluster, no build."""
from __future__ import annotations

import subprocess

import pytest
import yaml

import localcluster
from localcluster import addons, pki
from localcluster import layout as L


@pytest.mark.parametrize("addon", addons.BUILT_ADDONS, ids=lambda a: a.name)
def test_each_addon_is_pinned_built_per_version_and_pulled_from_the_local_registry(addon):
    assert addon.version == L.versions()[addon.version_key] and addon.version.startswith("v")
    assert addon.bin_dir == L.CACHE / "bin" / f"{addon.name}-{addon.version}"
    assert addon.image == f"localhost:5000/twotier-addons/{addon.name}:{addon.version}"
    docs = [d for d in yaml.safe_load_all(addon.manifest()) if d]
    kind, name = addon.workload
    workload = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
    assert workload["metadata"]["namespace"] == "kube-system"
    images = [c["image"] for c in workload["spec"]["template"]["spec"]["containers"]]
    assert images == [addon.image]
    assert "__" not in addon.manifest()


def test_metrics_server_verifies_kubelets_with_the_cluster_ca():
    ms = next(a for a in addons.BUILT_ADDONS if a.name == "metrics-server")
    docs = [d for d in yaml.safe_load_all(ms.manifest()) if d]
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--kubelet-insecure-tls" not in args
    assert "--kubelet-certificate-authority=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt" in args
    assert {d["kind"] for d in docs} >= {"APIService", "Service", "Deployment", "ServiceAccount", "ClusterRole"}


def test_the_api_server_runs_the_aggregation_layer():
    argv = localcluster.argv("kube-apiserver", "192.0.2.2")
    flags = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--") and "=" not in a}
    assert flags["--requestheader-client-ca-file"].endswith("/front-proxy-ca.crt")
    assert flags["--requestheader-allowed-names"] == pki.FRONT_PROXY_CLIENT
    assert flags["--proxy-client-cert-file"].endswith("/front-proxy-client.crt")
    assert flags["--requestheader-username-headers"] == "X-Remote-User"


def test_front_proxy_client_is_signed_by_its_own_ca(tmp_path):
    pki.ensure_ca(tmp_path)
    pki.ensure_front_proxy(tmp_path)
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "front-proxy-ca.crt"),
                             str(tmp_path / "front-proxy-client.crt")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    other = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"),
                            str(tmp_path / "front-proxy-client.crt")], capture_output=True, text=True)
    assert other.returncode != 0  # not the cluster CA: a client cert of the cluster CA can't pose as the proxy
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(tmp_path / "front-proxy-client.crt")],
                             capture_output=True, text=True).stdout
    assert "CN = front-proxy-client" in subject or "CN=front-proxy-client" in subject


def test_the_build_script_refuses_an_incomplete_go_tool_request():
    res = subprocess.run(["bash", str(L.BUILD_SCRIPT), "go-tool", "x", "v1"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "TWOTIER_CACHE": "/tmp/twotier-test-cache-unused"})
    assert res.returncode == 2 and "usage:" in res.stderr and "go-tool NAME VERSION MODULE PACKAGE" in res.stderr


def test_an_addon_already_built_is_not_built_again(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "CACHE", tmp_path)
    for addon in addons.BUILT_ADDONS:
        addon.bin_dir.mkdir(parents=True)
        (addon.bin_dir / ".complete").touch()
    lines = []
    addons.ensure_addon_binaries(progress=lines.append, script=tmp_path / "no-such-script.sh")
    assert lines == []


def test_an_addon_image_carries_the_host_tools_it_runs_with_their_libraries(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "CACHE", tmp_path / "cache")
    addon = addons.Addon("tool", "METRICS_SERVER_VERSION", "example.com/m", "example.com/m/cmd/tool",
                         ("DaemonSet", "tool"), host_tools=(("/bin/ls", "coreutils"),),
                         host_dirs=(str(tmp_path / "plugins"),), links=(("/usr/sbin/list", "/bin/ls"),))
    addon.bin_dir.mkdir(parents=True)
    addon.binary.write_text("binary")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "libxt_set.so").write_text("plugin")
    root = tmp_path / "root"
    root.mkdir()
    addons.image_root(addon, root)
    assert (root / "tool").read_text() == "binary" and (root / "bin" / "ls").is_file()
    libc = [p for p in root.rglob("libc.so.6")]
    assert libc and libc[0].is_file() and not libc[0].is_symlink()
    assert any(root.rglob("ld-linux-x86-64.so.2"))
    assert (root / str(tmp_path / "plugins" / "libxt_set.so").lstrip("/")).read_text() == "plugin"
    assert (root / "usr" / "sbin" / "list").readlink().as_posix() == "/bin/ls"
    assert "USER" not in addons.dockerfile(addon) and 'ENTRYPOINT ["/tool"]' in addons.dockerfile(addon)


def test_an_addon_whose_host_tool_is_missing_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "CACHE", tmp_path)
    addon = addons.Addon("tool", "METRICS_SERVER_VERSION", "example.com/m", "example.com/m/cmd/tool",
                         ("DaemonSet", "tool"), host_tools=(("/usr/sbin/no-such-tool", "some-package"),))
    addon.bin_dir.mkdir(parents=True)
    addon.binary.write_text("binary")
    with pytest.raises(addons.UserError) as err:
        addons.image_root(addon, tmp_path)
    assert "apt-get install -y some-package" in err.value.hint


def test_an_addon_image_and_manifest_name_the_registry_they_are_pushed_to():
    kr = next(a for a in addons.BUILT_ADDONS if a.name == "kube-router")
    assert kr.image_at("localhost:5010") == f"localhost:5010/twotier-addons/kube-router:{kr.version}"
    assert f"image: localhost:5010/twotier-addons/kube-router:{kr.version}" in kr.manifest("localhost:5010")
    assert "localhost:5000" not in kr.manifest("localhost:5010")


@pytest.mark.parametrize("kind,obj,available", [
    ("DaemonSet", {"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "desiredNumberScheduled": 3,
                                                             "numberReady": 3, "updatedNumberScheduled": 3}}, True),
    ("DaemonSet", {"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "desiredNumberScheduled": 3,
                                                             "numberReady": 2, "updatedNumberScheduled": 3}}, False),
    ("DaemonSet", {"metadata": {"generation": 3}, "status": {"observedGeneration": 2, "desiredNumberScheduled": 3,
                                                             "numberReady": 3, "updatedNumberScheduled": 3}}, False),
    ("DaemonSet", {"metadata": {"generation": 1}, "status": {"observedGeneration": 1}}, False),
    ("Deployment", {"metadata": {"generation": 1}, "spec": {"replicas": 1},
                    "status": {"observedGeneration": 1, "updatedReplicas": 1, "availableReplicas": 1}}, True),
    ("Deployment", {"metadata": {"generation": 1}, "spec": {"replicas": 1},
                    "status": {"observedGeneration": 1, "updatedReplicas": 1, "availableReplicas": 0}}, False),
    ("Deployment", {"metadata": {"generation": 1}, "spec": {"replicas": 1}, "status": {}}, False),
])
def test_workload_available_only_when_its_current_spec_is_ready_everywhere(kind, obj, available):
    assert addons.workload_available(kind, obj) is available
