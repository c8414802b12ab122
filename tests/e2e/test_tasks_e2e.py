"""The deploy / inspect / debug / clean tasks, run for real against the local cluster.

Each task runs as a user runs it (`python -m invoke ...` in the repository), and the cluster is
checked with kubectl. Each test asks for the state it needs (nothing deployed, stage hello or full,
the loader pod) from tests/e2e/conftest.py; in file order those fixtures find it already so, and a
test picked alone (`-k`) or run in another order gets it made: faults (nothing deployed), stage
hello (idempotence, dry run, the NodePort clash with storage, status, logs, the loader shell, the
fail-fast paths), clean, the full stage with smoke, clean again.

The faults are reported at once, without waiting out a retry or a rollout timeout: the proof is
what they say (the fault itself, not "timed out"); FAULT_DEADLINE only bounds a hang.
"""
from __future__ import annotations

import json
import os
import re
import socket
import sys

import pytest

from localcluster import layout as L
from tests.e2e.conftest import REPO, kubectl, kubectl_json, must, run_invoke
from tests.support.e2e_shell import RC_MARK, Terminal

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("clean_slate")]

FAULT_DEADLINE = 120  # seconds: bounds a hang of a task that should fail at once; not a threshold


def fails(*args, **kwargs):
    kwargs.setdefault("timeout", FAULT_DEADLINE)
    res = run_invoke(*args, **kwargs)
    assert res.returncode != 0, f"invoke {' '.join(args)} should have failed:\n{res.stdout[-2000:]}"
    assert "Traceback" not in res.stdout + res.stderr
    assert res.stderr.startswith("error: ") or "\nerror: " in res.stdout + res.stderr
    return res


def resource_versions(*refs):
    return {r: kubectl_json("get", r)["metadata"]["resourceVersion"] for r in refs}


# ------------------------------------------------------------------------------- faults (fast, clear)

def _kubeconfig_copy(tmp_path, replace: dict) -> str:
    text = L.KUBECONFIG.read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    return str(path)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrong_context(cluster):
    res = fails("status", "--context", "no-such-context")
    assert "context 'no-such-context' is not in kubeconfig" in res.stderr


def test_context_that_does_not_look_local_is_refused(cluster, tmp_path):
    path = _kubeconfig_copy(tmp_path, {"twotier-local": "prod-eu"})
    res = fails("deploy", env={"INVOKE_TWOTIER_KUBECONFIG": path})
    assert "refusing to act on kube context 'prod-eu'" in res.stderr
    assert "--allow-context prod-eu" in res.stderr
    # the explicit override works (read-only task, same real cluster behind the renamed context)
    ok = must("status", "--allow-context", "prod-eu", env={"INVOKE_TWOTIER_KUBECONFIG": path})
    assert ok.stdout.startswith("context prod-eu")


def test_missing_namespace(cluster):
    res = fails("deploy", "--namespace", "no-such-ns")
    assert "namespace 'no-such-ns' does not exist" in res.stderr
    assert "kubectl create namespace no-such-ns" in res.stderr


def test_unreachable_api_server(cluster, tmp_path):
    path = _kubeconfig_copy(tmp_path, {"https://127.0.0.1:6443": f"https://127.0.0.1:{_closed_port()}"})
    res = fails("clean", env={"INVOKE_TWOTIER_KUBECONFIG": path})
    assert "is unreachable" in res.stderr and "invoke cluster.up" in res.stderr


def test_no_kubeconfig(cluster, tmp_path):
    res = fails("smoke", env={"INVOKE_TWOTIER_KUBECONFIG": str(tmp_path / "none")})
    assert "no kubeconfig at" in res.stderr


def test_loader_shell_without_a_terminal(cluster, nothing_deployed):
    res = fails("loader-shell")  # stdin is /dev/null
    assert "needs an interactive terminal" in res.stderr
    assert kubectl("get", "pod", "loader", "--ignore-not-found", "-o", "name") == ""


# ------------------------------------------------------------------------------------ stage hello

def test_up_hello(node_ip, nothing_deployed):
    res = must("up", "--stage", "hello")
    assert "service/s-f-webapp created" in res.stdout
    assert "deployment.apps/f-webapp created" in res.stdout
    assert 'deployment "f-webapp" successfully rolled out' in res.stdout
    assert "smoke (hello): 6 passed, 0 failed" in res.stdout
    assert f"PASS  host -> node {node_ip}:31000/info (first app)" in res.stdout


def test_second_deploy_changes_nothing(hello_stage):
    refs = ("service/s-f-webapp", "deployment/f-webapp")
    before = resource_versions(*refs)
    res = must("deploy", "--stage", "hello")
    assert "service/s-f-webapp unchanged" in res.stdout
    assert "deployment.apps/f-webapp unchanged" in res.stdout
    assert "deployed: 0 changed, 2 unchanged" in res.stdout
    assert resource_versions(*refs) == before


def test_dry_run_shows_the_change_and_changes_nothing(hello_stage):
    before = kubectl_json("get", "deployment", "f-webapp")
    res = must("deploy", "--stage", "hello", "--dry-run",
               env={"INVOKE_TWOTIER_REGISTRY": "localhost:5000/dry-run-only"})
    assert "deployment.apps/f-webapp would change (spec.template.spec.containers[f-webapp].image)" \
        " (server dry run)" in res.stdout
    assert "service/s-f-webapp unchanged (server dry run)" in res.stdout
    assert "dry run: 1 of 2 objects would change" in res.stdout
    assert "note: not in the registry (yet): localhost:5000/dry-run-only/first-app:" in res.stdout
    after = kubectl_json("get", "deployment", "f-webapp")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == \
        before["spec"]["template"]["spec"]["containers"][0]["image"]


def test_storage_stage_clashes_on_node_port_31000(hello_stage):
    res = fails("deploy", "--stage", "storage")
    assert ("NodePort 31000 wanted by Service in-svc is already used by Service default/s-f-webapp"
            in res.stderr)
    assert "invoke clean" in res.stderr
    assert kubectl("get", "deploy,svc,pvc", "-o", "name", "--ignore-not-found").split() == [
        "deployment.apps/f-webapp", "service/kubernetes", "service/s-f-webapp"]
    assert kubectl("get", "pv", "local-pv", "--ignore-not-found", "-o", "name") == ""


def test_status_table(node_ip, hello_stage, loader_pod):
    out = must("status").stdout
    lines = out.splitlines()
    assert lines[0].startswith("context twotier-local, namespace default")
    assert lines[1].split() == ["KIND", "NAME", "READY", "AGE", "DETAILS"]
    svc = next(ln for ln in lines if ln.startswith("Service"))
    assert "s-f-webapp" in svc and f"http://{node_ip}:31000" in svc
    dep = next(ln for ln in lines if ln.startswith("Deployment"))
    assert re.search(r"f-webapp\s+1/1", dep)
    assert any(re.match(r"Pod\s+loader\s+1/1", ln) for ln in lines)
    assert any(re.match(r"Pod\s+f-webapp-\S+\s+1/1\s+\S+\s+Running", ln) for ln in lines)


def test_logs_of_a_tier_and_of_everything(node_ip, hello_stage):
    import urllib.request
    urllib.request.urlopen(f"http://{node_ip}:31000/info", timeout=5).read()
    out = must("logs", "--tier", "hello", "--tail", "20").stdout
    assert out.strip(), "no log lines"
    assert all(ln.startswith("[pod/f-webapp-") for ln in out.splitlines() if ln.strip())
    assert "/info" in out
    every = must("logs", "--tail", "5").stdout
    assert "[pod/f-webapp-" in every
    bad = fails("logs", "--tier", "app")
    assert "deployment api-dep (tier app) is not deployed" in bad.stderr


def test_loader_shell_in_a_terminal(hello_stage, loader_pod):
    """The task in a real pseudo-terminal, as a user's terminal gives it: typed into once the pod's
    shell prompts (it reads then), and its exit status comes back."""
    with Terminal(REPO, env={**os.environ, "INVOKE_TWOTIER_BASE_IMAGE": "local"}) as term:
        term.send(f"{sys.executable} -m invoke loader-shell")
        shown, _ = term.read_until(re.compile(r"\$ $"), 120)  # the pod's shell prompt
        term.send("curl -s s-f-webapp:5000/info; echo; id -u")
        answer, _ = term.read_until(re.compile(r"\d+\s*\n\$ $"), 60)  # id -u's line, then the prompt
        term.send("exit 3")
        _rest, mark = term.read_until(RC_MARK, 60)
        out = term.shown(20000)
    print(out)
    assert mark.group(1) == "3", out  # the shell's exit code comes back
    assert "pod/loader reused" in shown
    assert '{"info":true}' in answer
    assert "10001" in out  # non-root
    assert "Traceback" not in out


def test_loader_shell_makes_the_loader_pod_when_none_runs(hello_stage):
    """`invoke loader-shell` with no loader pod (a user deleted it, or `invoke clean` ran) makes it
    from the image `invoke push` pushed, as its help says ("created if missing")."""
    kubectl("delete", "pod", "loader", "--ignore-not-found", "--wait=true")
    must("push", "--stage", "hello")  # what the "not in the registry" hint asks for
    with Terminal(REPO, env={**os.environ, "INVOKE_TWOTIER_BASE_IMAGE": "local"}) as term:
        term.send(f"{sys.executable} -m invoke loader-shell")
        shown, end = term.read_until(re.compile(r"\$ $|__RC_(\d+)__"), 180)  # the pod's prompt, or the task ended
        if end.group(1) is None:
            term.send("exit 0")
            term.read_until(RC_MARK, 60)
        out = term.shown(20000)
    print(out)
    assert end.group(1) is None, f"invoke loader-shell ended instead of opening the pod's shell:\n{out}"
    assert "pod/loader reused" not in shown and "Traceback" not in out
    pod = kubectl_json("get", "pod", "loader")
    pushed = must("push", "--stage", "hello").stdout
    assert pod["spec"]["containers"][0]["image"] in pushed, (pod["spec"]["containers"][0]["image"], pushed)


def test_deploy_of_images_never_pushed_stops_before_any_change(hello_stage):
    before = resource_versions("deployment/f-webapp")
    res = fails("deploy", "--stage", "hello", env={"INVOKE_TWOTIER_REGISTRY": "localhost:5000/never-pushed"})
    assert "not in the registry: localhost:5000/never-pushed/first-app:" in res.stderr
    assert "(nothing was changed)" in res.stderr and "invoke up" in res.stderr
    assert resource_versions("deployment/f-webapp") == before


def _probe_deployment(name, spec_extra, command):
    from twotier.kube.client import PROJECT_LABEL
    image = kubectl_json("get", "pod", "loader")["spec"]["containers"][0]["image"]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {PROJECT_LABEL[0]: PROJECT_LABEL[1]}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"run": name}},
                 "template": {"metadata": {"labels": {"run": name}},
                              "spec": {"terminationGracePeriodSeconds": 1,
                                       "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                                       "containers": [{"name": name, "image": image, "command": command,
                                                       **spec_extra}]}}},
    }


@pytest.fixture
def connected(loader_pod):
    """The project's cluster client; the loader pod runs (its image is the probes' image)."""

    from twotier import settings as settingsmod
    from twotier.ops.cluster import connect

    return connect(settingsmod.load())


def test_image_pull_failure_fails_fast_with_events(connected):
    """Past the registry preflight (a registry that can't be asked, a tag deleted meanwhile):
    the waiter stops at the first pull error instead of waiting out the timeout."""
    from twotier.kube.rollout import RolloutFailed
    from twotier.ops.deploy import deploy_objects
    dep = _probe_deployment("twotier-pull-probe", {}, ["sh", "-c", "sleep 600"])
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "localhost:5000/never-pushed/x:1"
    try:
        with pytest.raises(RolloutFailed) as info:
            deploy_objects(connected, [dep], dry_run=False, timeout=150, check_images=False)
        msg = info.value.message
        print(msg)
        assert not msg.startswith("timed out"), "the pull error, not the timeout, must end the wait"
        assert re.search(r"container twotier-pull-probe is in (ErrImagePull|ImagePullBackOff)", msg)
        assert "event: Warning Failed" in msg
        assert "invoke build push" in info.value.hint
    finally:
        kubectl("delete", "deployment", "twotier-pull-probe", "--wait=false", "--ignore-not-found")


def test_crash_loop_fails_fast_with_its_last_log_lines(connected):
    from twotier.kube.rollout import RolloutFailed
    from twotier.ops.deploy import deploy_objects
    # A readiness probe, as every tier of the project has: without one, Kubernetes counts the pod
    # available in the instant between its start and its exit, and so would `kubectl rollout
    # status` (a race seen once in CI). The probe's delay outlasts the container's life.
    ready_later = {"readinessProbe": {"exec": {"command": ["true"]}, "initialDelaySeconds": 30}}
    dep = _probe_deployment("twotier-crash-probe", ready_later,
                            ["sh", "-c", "echo probe-says-goodbye; echo KeyError: STO_STORAGE; exit 3"])
    try:
        with pytest.raises(RolloutFailed) as info:
            deploy_objects(connected, [dep], dry_run=False, timeout=150)
        print(info.value.message)
        assert not info.value.message.startswith("timed out"), "the crash loop, not the timeout, must end the wait"
        assert "CrashLoopBackOff" in info.value.message
        assert "KeyError: STO_STORAGE" in info.value.message  # the container's last log lines
        assert "exit 3" in info.value.message
    finally:
        kubectl("delete", "deployment", "twotier-crash-probe", "--wait=false", "--ignore-not-found")


def test_pod_never_ready_times_out_with_the_reason(connected):
    from twotier.kube.rollout import RolloutFailed
    from twotier.ops.deploy import deploy_objects
    dep = _probe_deployment("twotier-unready-probe",
                            {"readinessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1}},
                            ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"])
    try:
        with pytest.raises(RolloutFailed) as info:
            deploy_objects(connected, [dep], dry_run=False, timeout=12)
        msg = info.value.message
        print(msg)
        assert msg.startswith("timed out after 12s waiting for twotier-unready-probe")
        assert "running, not ready" in msg
        assert "Readiness probe failed" in msg  # the pod's events say why
    finally:
        kubectl("delete", "deployment", "twotier-unready-probe", "--wait=false", "--ignore-not-found")


def test_clean_removes_only_the_projects_objects_and_is_idempotent(hello_stage, loader_pod):
    foreign = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "out-svc", "labels": {"owner": "someone-else"}},
               "spec": {"selector": {"x": "y"}, "ports": [{"port": 80}]}}
    kubectl("apply", "-f", "-", input=json.dumps(foreign))
    try:
        res = must("clean")
        assert "deployment/f-webapp deleted" in res.stdout and "service/s-f-webapp deleted" in res.stdout
        assert "pod/loader deleted" in res.stdout
        assert "skip service/out-svc: it exists but is not labelled app.kubernetes.io/part-of=twotier" \
            in res.stdout
        assert kubectl("get", "svc", "out-svc", "-o", "name") == "service/out-svc\n"
        again = must("clean")
        assert "nothing to clean: none of the project's objects exist (left alone: service/out-svc)" \
            in again.stdout
    finally:
        kubectl("delete", "service", "out-svc", "--ignore-not-found")
    left = kubectl("get", "deploy,svc,pods", "-o", "name").split()
    assert [x for x in left if "twotier-" not in x] == ["service/kubernetes"]


# ------------------------------------------------------------------------------------- stage full

def test_up_full_then_smoke_keeps_existing_items(node_ip, nothing_deployed):
    res = must("up")
    assert "smoke (full): " in res.stdout and ", 0 failed" in res.stdout
    assert "persistentvolume/local-pv created" in res.stdout
    import urllib.request
    put = urllib.request.Request(f"http://{node_ip}:31000/items/keep-me", method="PUT")
    urllib.request.urlopen(put, timeout=5).read()
    try:
        out = must("smoke").stdout
        assert "note: the storage holds 1 items" in out
        assert "PASS  restore the 1 items stored before smoke" in out
        items = json.loads(urllib.request.urlopen(f"http://{node_ip}:31000/items", timeout=5).read())
        assert items == {"items": ["keep-me"]}
    finally:
        urllib.request.urlopen(urllib.request.Request(f"http://{node_ip}:31000/items/keep-me",
                                                      method="DELETE"), timeout=5).read()


def test_clean_full_stage_in_finalizer_order(full_stage):
    res = must("clean")
    out = res.stdout
    order = [out.index(s) for s in ("deployment/sto-dep deleted", "service/in-svc deleted",
                                    "persistentvolumeclaim/sto-pvc deleted",
                                    "persistentvolume/local-pv deleted")]
    assert order == sorted(order)
    assert "volumes: gone" in out
    assert kubectl("get", "pv,pvc,deploy,svc,pods", "-o", "name").split() == ["service/kubernetes"]
    assert "nothing to clean" in must("clean").stdout
