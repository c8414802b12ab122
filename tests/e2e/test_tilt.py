"""The Tilt dev loop on the real local cluster: the Tiltfile as Tilt reads it, and `tilt up` live
updates of both tiers (a new response field through the Service, on every replica, no image
rebuilt, no pod replaced). The edited source files are restored and checked against git.

Needs the local cluster (`invoke cluster.up`) and the pinned Tilt (`invoke cluster.build
--component tilt`); `invoke test` provides both. A missing one is a failure, not a skip.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support import tilt as live
from twotier.dev import tiltrun
from twotier.errors import UserError

pytestmark = [pytest.mark.tilt, pytest.mark.usefixtures("clean_slate")]


@pytest.fixture(scope="module")
def settings(cluster):
    from twotier import settings as settingsmod

    return settingsmod.load()


@pytest.fixture(scope="module")
def tilt(cluster):
    try:
        return tiltrun.tilt_binary()
    except UserError as err:
        pytest.fail(f"{err.message}\nhint: {err.hint}", pytrace=False)


def test_tiltfile_declares_the_dev_loop(cluster, tilt, settings):
    """What Tilt itself reads from the Tiltfile: resources, labels, deps, live update steps."""
    argv = [tilt, "alpha", "tiltfile-result", "--file", str(tiltrun.TILTFILE), "--context", "twotier-local",
            "--", *tiltrun.tiltfile_args(settings)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tiltrun.ROOT, timeout=120,
                          env=tiltrun.tilt_env(str(cluster.kubeconfig_path())))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["Error"] is None
    manifests = {m["Name"]: m for m in result["Manifests"]}
    assert set(manifests) == {"storage", "app", "loader", "unit-tests", "smoke"}
    assert manifests["app"]["ResourceDependencies"] == ["storage"]
    assert manifests["storage"]["Labels"] == {"storage": "storage"}
    assert manifests["app"]["Labels"] == {"app": "app"}
    for name, folder in (("storage", "services/storage"), ("app", "services/app")):
        (image,) = manifests[name]["ImageTargets"]
        assert image["BuildDetails"]["target"] == "dev"
        spec = image["LiveUpdateSpec"]
        assert spec["syncs"] == [{"localPath": folder, "containerPath": "/app"},
                                 {"localPath": "services/common/twotier_service",
                                  "containerPath": "/app/twotier_service"}]
        assert spec["execs"][0]["args"] == ["sh", "-c", "pip install -r requirements.txt"]
        assert spec["execs"][0]["triggerPaths"] == [f"{folder}/requirements.txt"]
        assert f"{folder}/Dockerfile" in spec["stopPaths"]
    storage_objects = json.dumps(manifests["storage"])
    for name in ("local-pv", "sto-pvc", "sto-dep", "in-svc"):
        assert name in storage_objects
    assert result["AnalyticsOpt"] == 1  # opted out: no usage-data prompt over the UI, nothing sent
    for name in ("storage", "app"):
        deploy = manifests[name]["DeployTarget"]
        assert not (deploy.get("portForwardTemplateSpec") or {}).get("forwards")  # nodeport: links only
        assert "TWOTIER_DEBUG_PORT" not in json.dumps(deploy)


def tiltfile_result(cluster, tilt, settings, *args: str) -> dict:
    argv = [tilt, "alpha", "tiltfile-result", "--file", str(tiltrun.TILTFILE), "--context", "twotier-local",
            "--", *tiltrun.tiltfile_args(settings), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tiltrun.ROOT, timeout=120,
                          env=tiltrun.tilt_env(str(cluster.kubeconfig_path())))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["Error"] is None
    return {m["Name"]: m for m in result["Manifests"]}


def test_tiltfile_debug_and_port_forward_access(cluster, tilt, settings):
    """--debug=app: debugpy's port in the app container, forwarded to 127.0.0.1:5678 by Tilt (one pod:
    the one the debugger attaches to), no liveness probe; --access=port-forward: each Service on
    127.0.0.1 through a resource running twotier.kube.portforward (it follows the Service's ready
    pods, where Tilt's port_forward would stay on one pod), ready when /healthz answers through it."""
    manifests = tiltfile_result(cluster, tilt, settings, "--debug=app", "--access=port-forward")
    ports = settings.forward_ports
    app, storage = manifests["app"]["DeployTarget"], manifests["storage"]["DeployTarget"]
    assert app["portForwardTemplateSpec"]["forwards"] == [
        {"localPort": 5678, "containerPort": 5678, "host": "localhost", "name": "debugpy app"}]
    assert not (storage.get("portForwardTemplateSpec") or {}).get("forwards")
    for tier, service, port in (("storage", "in-svc", 5000), ("app", "out-svc", 5001)):
        forward = manifests[f"{tier}-port-forward"]
        assert forward["ResourceDependencies"] == [tier] and forward["Labels"] == {tier: tier}
        argv = forward["DeployTarget"]["ServeCmd"]["Argv"]
        assert argv[1:6] == ["-m", "twotier.kube.portforward", service, str(port), "--local-port"]
        assert argv[6] == str(ports[tier]) and argv[argv.index("--context") + 1] == "twotier-local"
        assert forward["DeployTarget"]["ReadinessProbe"]["httpGet"] == {"path": "/healthz", "port": ports[tier]}
    app_yaml = json.dumps(app)
    assert "TWOTIER_DEBUG_PORT" in app_yaml and "livenessProbe" not in app_yaml
    assert "livenessProbe" in json.dumps(storage) and "TWOTIER_DEBUG_PORT" not in json.dumps(storage)
    proc = subprocess.run([tilt, "alpha", "tiltfile-result", "--file", str(tiltrun.TILTFILE), "--context",
                           "twotier-local", "--", "--debug=db"], capture_output=True, text=True,
                          cwd=tiltrun.ROOT, timeout=120, env=tiltrun.tilt_env(str(cluster.kubeconfig_path())))
    assert proc.returncode != 0 and "--debug=db: unknown tier" in proc.stderr + proc.stdout


def test_tilt_up_live_updates_both_tiers_without_a_rebuild(cluster, settings):
    """Edit each tier's source (a new field in a seed response): the Service answers with it, every
    replica has it, no image was built and no pod replaced; the file is restored. Then `tilt down`
    removes the PV and PVC objects while the stored items stay on the node's disk."""
    with live.TiltSession(settings) as session:
        session.wait_ready()
        images_before = session.image_refs()
        assert {"sto-img", "api-img"} <= set(images_before), images_before
        for name in ("storage", "app"):
            tier = live.TIERS[name]
            pods_before = live.pod_identity(live.tier_pods(session.cluster, tier))
            assert len(pods_before) == (2 if name == "storage" else 1)
            service, urls = live.tier_urls(session, tier)
            assert live.probe_value(service) is None  # the field is new
            marker = uuid.uuid4().hex[:10]
            try:
                with live.SourceEdit(tier) as edit:
                    edit.apply(marker)
                    first, everywhere = live.wait_for_marker(urls, marker, timeout=60, first_url=service)
                live.wait_for_marker(urls, None, timeout=60, first_url=service)
            finally:
                assert live.git_unchanged(tier.source), f"{tier.source} was not restored"
            pods_after = live.pod_identity(live.tier_pods(session.cluster, tier))
            assert pods_after == pods_before, "a live update must not replace or restart pods"
        assert session.image_refs() == images_before, "no image may be rebuilt for a source change"
        kept = f"tilt-e2e-{uuid.uuid4().hex[:8]}"
        req = urllib.request.Request(live.node_url(session.cluster, 31000, f"/items/{kept}"), method="PUT")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 201
    # tilt down (on leaving the session) deletes the PV and PVC objects, like `invoke clean`, and
    # the items stay on the node's disk (hostPath, reclaim policy Retain).
    cluster_api = session.cluster
    assert cluster_api.get("v1", "PersistentVolume", "local-pv") is None
    assert cluster_api.get("v1", "PersistentVolumeClaim", "sto-pvc") is None
    assert cluster_api.get("apps/v1", "Deployment", "sto-dep") is None
    stored = Path(host_path(settings)) / kept
    assert stored.exists(), f"{stored} should survive tilt down"
    stored.unlink()


def host_path(settings) -> str:
    from twotier.ops import render as manifests

    (pv,) = [o for o in manifests.render_stage(settings, "full", images={}, overlay=["dev"])
             if o["kind"] == "PersistentVolume"]
    return pv["spec"]["hostPath"]["path"]


def test_invoke_tilt_ci_passes_and_leaves_nothing_behind(cluster, settings):
    """`invoke tilt.ci`: tilt ci (builds, rollout, unit tests, smoke) passes, then tilt down and the
    wait leave none of the Tiltfile's objects in the cluster."""
    proc = subprocess.run([sys.executable, "-m", "invoke", "tilt.ci"], cwd=tiltrun.ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "SUCCESS. All workloads are healthy." in proc.stdout
    assert re.search(r"smoke \(full\): \d+ passed, 0 failed", proc.stdout), "the smoke resource must run and pass"
    from twotier.kube.cleanup import targets_from
    from twotier.ops.cluster import connect

    api = connect(settings)
    for target in targets_from(tiltrun.tilt_objects(settings), api.namespace):
        assert api.get(target.api_version, target.kind, target.name, target.namespace) is None, target.ref
