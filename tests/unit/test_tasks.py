"""The tasks as a user runs them, with one seam: the cluster is an in-memory fake (kubefake).

Rendering (real kustomize), settings, apply, cleanup and the error handling are the real ones;
the e2e tier runs the same tasks against the real local cluster.
"""

import pytest
from invoke import Result
from invoke.exceptions import Exit
from kubefake import FakeCluster, FakeTTY, deployment, project_context, service

import tasks
from twotier.errors import UserError
from twotier.ops import cluster as opscluster
from twotier.ops import loader

KUBECTL = "/opt/k/kubectl"


@pytest.fixture
def cluster(monkeypatch):
    fake = FakeCluster()
    seen = []

    def connect(settings, allow_context):
        seen.append((settings, allow_context))
        return fake

    monkeypatch.setattr(tasks, "_connect", connect)
    monkeypatch.setattr(opscluster, "kubectl", lambda: KUBECTL)
    fake.connects = seen
    return fake


def ctx(monkeypatch, env=None, run=None):
    return project_context(monkeypatch, env, run)


# --- deploy ----------------------------------------------------------------------------------
def test_dry_run_deploy_changes_nothing_and_says_what_would(cluster, monkeypatch, capsys):
    tasks.deploy(ctx(monkeypatch), stage="storage", dry_run=True)
    out = capsys.readouterr().out
    assert "server dry run: nothing is changed" in out
    assert "dry run: 5 of 5 objects would change" in out
    assert cluster.objects == {}


def test_flags_reach_the_cluster_connection(cluster, monkeypatch):
    tasks.deploy(ctx(monkeypatch, {"INVOKE_TWOTIER_STAGE": "storage"}), stage="hello", dry_run=True,
                 context="kind-dev", namespace="ns1", allow_context="lab")
    settings, allow = cluster.connects[0]
    assert (settings.stage, settings.context, settings.namespace, allow) == ("hello", "kind-dev", "ns1", "lab")


def test_bad_stage_exits_cleanly_before_touching_the_cluster(cluster, monkeypatch):
    with pytest.raises(Exit) as info:
        tasks.deploy(ctx(monkeypatch), stage="prod")
    assert info.value.code == 1
    assert "error: unknown stage 'prod'" in str(info.value.message)
    assert "hello, storage, full" in str(info.value.message)
    assert cluster.connects == []


def test_an_unreachable_cluster_is_an_error_and_a_hint(monkeypatch):
    def unreachable(settings, allow_context):
        raise UserError("the API server is unreachable", "invoke cluster.up")

    monkeypatch.setattr(tasks, "_connect", unreachable)
    for task in (tasks.deploy, tasks.status, tasks.clean, tasks.smoke, tasks.up):
        with pytest.raises(Exit) as info:
            task(ctx(monkeypatch))
        assert info.value.code == 1
        assert info.value.message == "error: the API server is unreachable\nhint: invoke cluster.up"


def test_deploy_nodeport_conflict_is_a_clear_error(cluster, monkeypatch):
    cluster.put(service("s-f-webapp", 5000, 31000, run="f-webapp"))
    with pytest.raises(Exit) as info:
        tasks.deploy(ctx(monkeypatch), stage="full")
    text = str(info.value.message)
    assert "NodePort 31000 wanted by Service in-svc is already used by Service default/s-f-webapp" in text
    assert "invoke clean" in text and "Traceback" not in text
    assert cluster.count("apply") == 0


# --- status, clean ---------------------------------------------------------------------------
def test_status_on_an_empty_namespace_says_what_to_do(cluster, monkeypatch, capsys):
    tasks.status(ctx(monkeypatch), namespace="ns2")
    assert "nothing of the project is deployed here: run `invoke deploy` or `invoke up`" in capsys.readouterr().out
    assert cluster.connects[0][0].namespace == "ns2"


def test_status_lists_what_is_deployed(cluster, monkeypatch, capsys):
    cluster.put(service("in-svc", 5000, 31000, run="sto-app"))
    cluster.put(deployment("sto-dep", 2))
    tasks.status(ctx(monkeypatch))
    out = capsys.readouterr().out
    assert "in-svc" in out and "sto-dep" in out


def test_clean_deletes_only_the_projects_objects(cluster, monkeypatch):
    cluster.put(service("in-svc", 5000, 31000, run="sto-app"))
    stranger = service("out-svc", 5001, 31001, run="api-app")
    stranger["metadata"]["labels"] = {}
    cluster.put(stranger)
    tasks.clean(ctx(monkeypatch), timeout="9")
    assert not cluster.exists("Service", "in-svc")
    assert cluster.exists("Service", "out-svc")  # same name, not ours: left alone


# --- logs ------------------------------------------------------------------------------------
BASE = (f"{KUBECTL} --kubeconfig /tmp/kubeconfig --context twotier-local --namespace default logs "
        "--selector {sel} --prefix --all-containers --ignore-errors --tail {tail} --max-log-requests 20")


@pytest.mark.parametrize("kwargs, sel, tail, follow", [
    ({}, "app.kubernetes.io/part-of=twotier", 50, False),
    ({"tier": "storage", "follow": True}, "run=sto-app", 50, True),
    ({"tier": "app", "tail": "5"}, "run=api-app", 5, False),
    ({"tier": "loader"}, "app.kubernetes.io/name=loader", 50, False),
])
def test_logs_runs_kubectl_logs(cluster, monkeypatch, kwargs, sel, tail, follow):
    cluster.put(deployment("sto-dep", 2))
    cluster.put(deployment("api-dep"))
    cmd = BASE.format(sel=sel, tail=tail) + (" --follow" if follow else "")
    c = ctx(monkeypatch, run={cmd: Result("ok")})
    tasks.logs(c, **kwargs)
    c.run.assert_called_once()
    assert c.run.call_args.kwargs["env"] == {"KUBECONFIG": "/tmp/kubeconfig"}


def test_logs_unknown_and_undeployed_tiers(cluster, monkeypatch):
    with pytest.raises(Exit, match="unknown tier 'db'"):
        tasks.logs(ctx(monkeypatch), tier="db")
    with pytest.raises(Exit, match="deployment api-dep .tier app. is not deployed"):
        tasks.logs(ctx(monkeypatch), tier="app")


def test_logs_kubectl_failure_exits_with_its_code(cluster, monkeypatch):
    cmd = BASE.format(sel="app.kubernetes.io/part-of=twotier", tail=50)
    with pytest.raises(Exit) as info:
        tasks.logs(ctx(monkeypatch, run={cmd: Result(exited=3)}))
    assert info.value.code == 3


def test_without_kubectl_the_tasks_that_need_it_say_so(monkeypatch):
    from localcluster import layout

    monkeypatch.setattr(layout, "kubectl_path", lambda: "/nonexistent/kubectl")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(Exit, match="kubectl was not found"):
        tasks.logs(ctx(monkeypatch))


# --- loader-shell ----------------------------------------------------------------------------
def test_loader_shell_without_terminal_fails_clearly(cluster, monkeypatch):
    monkeypatch.setattr("sys.stdin", FakeTTY(False))
    with pytest.raises(Exit) as info:
        tasks.loader_shell(ctx(monkeypatch))
    assert info.value.code == 1
    assert "needs an interactive terminal" in str(info.value.message)
    assert cluster.connects == []  # no pod created, no cluster contacted


def test_loader_shell_reuses_a_running_loader_and_hands_the_terminal_to_kubectl(cluster, monkeypatch):
    from kubefake import pod

    running = pod("loader", "loader")
    cluster.put(running)
    monkeypatch.setattr("sys.stdin", FakeTTY(True))
    monkeypatch.setattr("sys.stdout", FakeTTY(True))
    handed = []
    monkeypatch.setattr(loader, "hand_over", lambda argv, env: handed.append((argv, env)) or 7)
    with pytest.raises(Exit) as info:  # the shell's exit code is the task's
        tasks.loader_shell(ctx(monkeypatch))
    assert info.value.code == 7
    assert handed == [([KUBECTL, "--kubeconfig", "/tmp/kubeconfig", "--context", "twotier-local",
                        "--namespace", "default", "exec", "-it", "loader", "--", "sh"],
                       {"KUBECONFIG": "/tmp/kubeconfig"})]
    assert cluster.count("create") == 0  # the running pod was reused, whatever its image


# --- the task list ---------------------------------------------------------------------------
def test_every_task_has_a_summary_and_help_for_every_argument():
    def walk(coll, prefix=""):
        for name, task in coll.tasks.items():
            yield prefix + name, task
        for name, sub in coll.collections.items():
            yield from walk(sub, prefix + name + ".")

    names = []
    for name, task in walk(tasks.ns):
        names.append(name)
        assert task.__doc__ and len(task.__doc__.strip().splitlines()[0]) <= 110, name
        helps = dict(task.help)  # get_arguments() consumes task.help
        for arg in task.get_arguments():
            if arg.name != "c":
                assert arg.name.replace("-", "_") in helps or arg.name in helps, f"{name} --{arg.name}"
    for tutorial_command in ("deploy", "loader-shell", "clean", "status", "smoke", "up", "serve"):
        assert tutorial_command in names


@pytest.mark.parametrize(("flag", "setting", "expected"), [
    ("", "", "local"), ("kind", "", "kind"), ("", "kind", "kind"), ("local", "kind", "local")])
def test_the_cluster_provider_comes_from_the_flag_else_the_setting(monkeypatch, capsys, flag, setting, expected):
    from localcluster.kind import provider as kind

    env = {"INVOKE_TWOTIER_CLUSTER_PROVIDER": setting} if setting else None
    tasks.cluster_kubeconfig(ctx(monkeypatch, env), provider=flag)
    printed = capsys.readouterr().out.strip()
    assert (printed == str(kind.KUBECONFIG)) == (expected == "kind")


def test_an_unknown_provider_flag_is_an_error_with_the_choices(monkeypatch):
    with pytest.raises(Exit):
        tasks.cluster_kubeconfig(ctx(monkeypatch), provider="minikube")
