"""What each deploy/inspect/debug/clean task runs, with the cluster parts replaced by recorders.

Tasks are called as Invoke calls them (a Context carrying the project's invoke.yaml); the machinery
they call is monkeypatched so each test sees the exact calls and arguments, in order.
"""
import io
from types import SimpleNamespace

import pytest
from invoke import Result
from invoke.exceptions import Exit

import tasks
from kubefake import FakeCluster, project_context
from twotier import cleanup, images, kube, loader, project, smoke, status
from twotier.errors import UserError


class Recorder:
    """Stands in for the machinery; records (name, args, kwargs) in one shared list."""

    def __init__(self, monkeypatch):
        self.calls = []
        self.cluster = FakeCluster()
        self.mp = monkeypatch
        self.objs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "in-svc"}}]

    def patch(self, target, name, result=None, raises=None):
        def fake(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if raises:
                raise raises
            return result(*args, **kwargs) if callable(result) else result
        self.mp.setattr(target, name.split(".")[-1], fake)

    def names(self):
        return [c[0] for c in self.calls]

    def call(self, name):
        return next(c for c in self.calls if c[0] == name)


@pytest.fixture
def rec(monkeypatch):
    r = Recorder(monkeypatch)
    r.patch(project, "connect", result=r.cluster)
    r.patch(project, "render", result=r.objs)
    r.patch(project, "deploy_objects", result=[])
    r.patch(project, "project_targets", result=["T"])
    r.patch(project, "loader_manifest", result={"kind": "Pod", "metadata": {"name": "loader"}})
    r.patch(loader, "ensure_loader", result={})
    r.patch(smoke, "run_smoke", result=None)
    r.patch(cleanup, "clean", result={})
    return r


def ctx(monkeypatch, env=None, run=None):
    return project_context(monkeypatch, env, run)


# --- deploy ----------------------------------------------------------------------------------
def test_deploy_defaults_from_invoke_yaml(rec, monkeypatch):
    tasks.deploy(ctx(monkeypatch))
    assert rec.names() == ["connect", "render", "deploy_objects"]
    settings, allow = rec.call("connect")[1]
    assert settings["stage"] == "full" and allow is None
    assert rec.call("render")[1][1] == "full"
    _, args, kwargs = rec.call("deploy_objects")
    assert args == (rec.cluster, rec.objs)
    assert kwargs == {"dry_run": False, "timeout": 180.0}


def test_deploy_flags(rec, monkeypatch):
    tasks.deploy(ctx(monkeypatch, {"INVOKE_TWOTIER_STAGE": "storage"}), stage="hello", dry_run=True,
                 timeout="42", context="kind-dev", namespace="ns1", allow_context="lab")
    settings, allow = rec.call("connect")[1]
    assert (settings["stage"], settings["context"], settings["namespace"]) == ("hello", "kind-dev", "ns1")
    assert allow == "lab"
    assert rec.call("render")[1][1] == "hello"
    assert rec.call("deploy_objects")[2] == {"dry_run": True, "timeout": 42.0}


def test_deploy_stage_from_environment(rec, monkeypatch):
    tasks.deploy(ctx(monkeypatch, {"INVOKE_TWOTIER_STAGE": "storage"}))
    assert rec.call("render")[1][1] == "storage"


def test_deploy_bad_stage_exits_cleanly(rec, monkeypatch):
    with pytest.raises(Exit) as info:
        tasks.deploy(ctx(monkeypatch), stage="prod")
    assert info.value.code == 1
    assert "error: unknown stage 'prod'" in str(info.value.message)
    assert rec.calls == []  # nothing touched the cluster


def test_deploy_user_error_becomes_error_and_hint(rec, monkeypatch):
    rec.patch(project, "connect", raises=UserError("the API server is unreachable", "invoke cluster.up"))
    with pytest.raises(Exit) as info:
        tasks.deploy(ctx(monkeypatch))
    assert info.value.code == 1
    assert info.value.message == "error: the API server is unreachable\nhint: invoke cluster.up"
    assert "render" not in rec.names()


def test_deploy_nodeport_conflict_is_a_clear_error(monkeypatch):
    """The real apply path on a fake cluster that still runs the hello stage."""
    from kubefake import seed_full_objects, service

    cluster = FakeCluster()
    cluster.put(service("s-f-webapp", 5000, 31000, run="f-webapp"))
    monkeypatch.setattr(project, "connect", lambda s, a: cluster)
    monkeypatch.setattr(project, "render", lambda s, st, refs=None: seed_full_objects())
    with pytest.raises(Exit) as info:
        tasks.deploy(ctx(monkeypatch), stage="full")
    text = str(info.value.message)
    assert "NodePort 31000 wanted by Service in-svc is already used by Service default/s-f-webapp" in text
    assert "invoke clean" in text
    assert "Traceback" not in text


# --- status ----------------------------------------------------------------------------------
def test_status_prints_the_report(rec, monkeypatch, capsys):
    rec.patch(status, "status_report", result="TABLE")
    tasks.status(ctx(monkeypatch), namespace="ns2")
    assert capsys.readouterr().out == "TABLE\n"
    assert rec.call("connect")[1][0]["namespace"] == "ns2"
    assert rec.call("status_report")[1] == (rec.cluster, ["T"])


# --- logs ------------------------------------------------------------------------------------
KUBECTL = "/opt/k/kubectl"
BASE = (f"{KUBECTL} --kubeconfig /tmp/kubeconfig --context twotier-local --namespace default logs "
        "--selector {sel} --prefix --all-containers --ignore-errors --tail {tail} --max-log-requests 20")


@pytest.mark.parametrize("kwargs, sel, tail, follow", [
    ({}, "app.kubernetes.io/part-of=twotier", 50, False),
    ({"tier": "storage", "follow": True}, "run=sto-app", 50, True),
    ({"tier": "app", "tail": "5"}, "run=api-app", 5, False),
    ({"tier": "loader"}, "app.kubernetes.io/name=loader", 50, False),
])
def test_logs_runs_kubectl_logs(rec, monkeypatch, kwargs, sel, tail, follow):
    from kubefake import deployment

    rec.cluster.put(deployment("sto-dep", 2))
    rec.cluster.put(deployment("api-dep"))
    monkeypatch.setattr(kube, "kubectl_binary", lambda: KUBECTL)
    cmd = BASE.format(sel=sel, tail=tail) + (" --follow" if follow else "")
    c = ctx(monkeypatch, run={cmd: Result("ok")})
    tasks.logs(c, **kwargs)
    c.run.assert_called_once()
    assert c.run.call_args.kwargs["env"] == {"KUBECONFIG": "/tmp/kubeconfig"}


def test_logs_unknown_tier(rec, monkeypatch):
    monkeypatch.setattr(kube, "kubectl_binary", lambda: KUBECTL)
    with pytest.raises(Exit, match="unknown tier 'db'"):
        tasks.logs(ctx(monkeypatch), tier="db")


def test_logs_tier_not_deployed(rec, monkeypatch):
    monkeypatch.setattr(kube, "kubectl_binary", lambda: KUBECTL)
    with pytest.raises(Exit, match="deployment api-dep .tier app. is not deployed"):
        tasks.logs(ctx(monkeypatch), tier="app")


def test_logs_kubectl_failure_exits_with_its_code(rec, monkeypatch):
    monkeypatch.setattr(kube, "kubectl_binary", lambda: KUBECTL)
    cmd = BASE.format(sel="app.kubernetes.io/part-of=twotier", tail=50)
    with pytest.raises(Exit) as info:
        tasks.logs(ctx(monkeypatch, run={cmd: Result(exited=3)}))
    assert info.value.code == 3


def test_logs_without_kubectl(rec, monkeypatch):
    monkeypatch.setattr(kube, "_local_cluster_file", lambda name: None)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(Exit, match="kubectl was not found"):
        tasks.logs(ctx(monkeypatch))


# --- loader-shell ----------------------------------------------------------------------------
class FakeTTY(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_loader_shell_without_terminal_fails_clearly(rec, monkeypatch):
    monkeypatch.setattr("sys.stdin", FakeTTY(False))
    with pytest.raises(Exit) as info:
        tasks.loader_shell(ctx(monkeypatch))
    assert info.value.code == 1
    assert "needs an interactive terminal" in str(info.value.message)
    assert rec.calls == []  # no pod created, no cluster contacted


def test_loader_shell_hands_the_terminal_to_kubectl(rec, monkeypatch):
    monkeypatch.setattr("sys.stdin", FakeTTY(True))
    monkeypatch.setattr("sys.stdout", FakeTTY(True))
    monkeypatch.setattr(kube, "kubectl_binary", lambda: KUBECTL)
    rec.patch(loader, "hand_over", result=0)
    tasks.loader_shell(ctx(monkeypatch))
    assert rec.names() == ["connect", "loader_manifest", "ensure_loader", "hand_over"]
    assert rec.call("ensure_loader")[1][1] == {"kind": "Pod", "metadata": {"name": "loader"}}
    argv, env = rec.call("hand_over")[1]
    assert argv == [KUBECTL, "--kubeconfig", "/tmp/kubeconfig", "--context", "twotier-local",
                    "--namespace", "default", "exec", "-it", "loader", "--", "sh"]
    assert env == {"KUBECONFIG": "/tmp/kubeconfig"}


def test_loader_shell_passes_the_shells_exit_code(rec, monkeypatch):
    monkeypatch.setattr("sys.stdin", FakeTTY(True))
    monkeypatch.setattr("sys.stdout", FakeTTY(True))
    monkeypatch.setattr(kube, "kubectl_binary", lambda: KUBECTL)
    rec.patch(loader, "hand_over", result=7)
    with pytest.raises(Exit) as info:
        tasks.loader_shell(ctx(monkeypatch))
    assert info.value.code == 7


def test_loader_shell_without_kubectl(rec, monkeypatch):
    monkeypatch.setattr("sys.stdin", FakeTTY(True))
    monkeypatch.setattr("sys.stdout", FakeTTY(True))
    monkeypatch.setattr(kube, "_local_cluster_file", lambda name: None)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(Exit, match="kubectl was not found"):
        tasks.loader_shell(ctx(monkeypatch))
    assert rec.calls == []


# --- smoke, clean ----------------------------------------------------------------------------
def test_smoke_starts_the_loader_then_checks_the_stage(rec, monkeypatch):
    tasks.smoke(ctx(monkeypatch), stage="storage")
    assert rec.names() == ["connect", "loader_manifest", "ensure_loader", "run_smoke"]
    cluster, stage, execute = rec.call("run_smoke")[1]
    assert (cluster, stage) == (rec.cluster, "storage")
    assert callable(execute)
    assert rec.call("ensure_loader")[2] == {"timeout": 180.0}


def test_smoke_failure_exits_non_zero(rec, monkeypatch):
    rec.patch(smoke, "run_smoke", raises=UserError("2 smoke check(s) failed (stage full)", "see above"))
    with pytest.raises(Exit) as info:
        tasks.smoke(ctx(monkeypatch))
    assert info.value.code == 1 and "2 smoke check(s) failed" in str(info.value.message)


def test_clean_deletes_the_project_targets(rec, monkeypatch):
    tasks.clean(ctx(monkeypatch, {"INVOKE_TWOTIER_TIMEOUTS_DELETE": "30"}))
    assert rec.names() == ["connect", "project_targets", "clean"]
    assert rec.call("project_targets")[1][1] == "default"
    assert rec.call("clean")[1] == (rec.cluster, ["T"])
    assert rec.call("clean")[2] == {"timeout": 30.0}
    tasks.clean(ctx(monkeypatch), timeout="9")
    assert rec.calls[-1][2] == {"timeout": 9.0}


# --- up --------------------------------------------------------------------------------------
def built_images():
    return [SimpleNamespace(role="storage", seed_name="sto-img", ref="localhost:5000/sto-img:1"),
            SimpleNamespace(role="app", seed_name="api-img", ref="localhost:5000/api-img:2"),
            SimpleNamespace(role="loader", seed_name="loader", ref="localhost:5000/loader:3")]


def test_up_builds_pushes_deploys_and_smokes_in_order(rec, monkeypatch):
    rec.patch(images, "push", result=built_images())
    tasks.up(ctx(monkeypatch))
    assert rec.names() == ["connect", "push", "render", "deploy_objects", "loader_manifest",
                           "ensure_loader", "run_smoke"]
    assert rec.call("push")[1][1] == "full"
    assert rec.call("render")[1][2] == {"sto-img": "localhost:5000/sto-img:1",
                                        "api-img": "localhost:5000/api-img:2",
                                        "loader": "localhost:5000/loader:3"}
    assert rec.call("deploy_objects")[2] == {"dry_run": False, "timeout": 180.0}
    assert rec.call("loader_manifest")[1][1] == "localhost:5000/loader:3"
    assert rec.call("run_smoke")[1][1] == "full"


def test_up_checks_the_cluster_before_building(rec, monkeypatch):
    rec.patch(project, "connect", raises=UserError("no kubeconfig at /x", "invoke cluster.up"))
    rec.patch(images, "push", result=built_images())
    with pytest.raises(Exit, match="no kubeconfig"):
        tasks.up(ctx(monkeypatch))
    assert rec.names() == ["connect"]


def test_up_stops_when_the_push_is_refused(rec, monkeypatch):
    rec.patch(images, "push", raises=UserError("pushing localhost:5000/sto-img:1 was refused", "registry?"))
    with pytest.raises(Exit, match="was refused"):
        tasks.up(ctx(monkeypatch), stage="storage")
    assert rec.names() == ["connect", "push"]


def test_every_task_has_help_for_every_argument():
    for name in ("deploy", "status", "logs", "loader-shell", "smoke", "clean", "up"):
        task = tasks.ns[name]
        assert task.__doc__ and task.__doc__.strip().splitlines()[0]
        helps = dict(task.help)  # get_arguments() consumes task.help
        args = [a.name for a in task.get_arguments()]
        assert set(args) <= set(helps), (name, set(args) - set(helps))
        assert all(helps[a].strip() for a in args)
