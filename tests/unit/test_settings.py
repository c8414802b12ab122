"""twotier.settings: invoke.yaml < twotier.local.yaml < INVOKE_TWOTIER_* < task flags, typed."""
import pytest
from invoke.exceptions import UncastableEnvVar
from kubefake import project_context

import tasks
from twotier.errors import UserError
from twotier.settings import Settings, Timeouts, read_local, write_local


def settings_of(monkeypatch, env=None, local=None, tmp_path=None, **flags):
    c = project_context(monkeypatch, env)
    if local is not None:
        path = tmp_path / "twotier.local.yaml"
        write_local(local, path)
        return Settings.from_invoke(c.config, local_file=path).with_flags(**flags)
    return tasks._settings(c, **flags)


def test_defaults(monkeypatch):
    s = settings_of(monkeypatch)
    assert (s.stage, s.namespace, s.field_manager, s.registry) == ("full", "default", "twotier", "localhost:5000")
    assert s.timeouts == Timeouts(rollout=180, delete=120, api=5, tilt_ci=900)
    assert "twotier-local" in s.allowed_contexts


def test_environment_overrides_the_defaults_with_their_types(monkeypatch):
    s = settings_of(monkeypatch, {"INVOKE_TWOTIER_STAGE": "storage", "INVOKE_TWOTIER_NAMESPACE": "ns-env",
                                  "INVOKE_TWOTIER_TIMEOUTS_ROLLOUT": "60"})
    assert (s.stage, s.namespace) == ("storage", "ns-env")
    assert s.timeouts.rollout == 60.0 and isinstance(s.timeouts.rollout, float)
    assert s.timeouts.delete == 120  # untouched siblings keep their default


def test_flags_override_environment_and_none_means_not_given(monkeypatch):
    s = settings_of(monkeypatch, {"INVOKE_TWOTIER_STAGE": "storage", "INVOKE_TWOTIER_CONTEXT": "kind-env",
                                  "INVOKE_TWOTIER_TIMEOUTS_ROLLOUT": "60"},
                    stage="hello", timeouts__rollout=15.0, context="kind-flag", namespace=None)
    assert (s.stage, s.context, s.namespace, s.timeouts.rollout) == ("hello", "kind-flag", "default", 15.0)


def test_the_machines_file_sits_between_invoke_yaml_and_the_environment(monkeypatch, tmp_path):
    local = {"base_image": "local", "registry": "registry.lan:5000/", "timeouts": {"rollout": 30}}
    s = settings_of(monkeypatch, local=local, tmp_path=tmp_path)
    assert (s.base_image, s.registry, s.timeouts.rollout) == ("local", "registry.lan:5000", 30.0)
    s = settings_of(monkeypatch, {"INVOKE_TWOTIER_BASE_IMAGE": "", "INVOKE_TWOTIER_TIMEOUTS_ROLLOUT": "9"},
                    local=local, tmp_path=tmp_path)
    assert (s.base_image, s.timeouts.rollout) == ("", 9.0)  # an explicit variable wins, even empty


def test_write_local_merges_and_read_local_tolerates_absence(tmp_path):
    path = tmp_path / "twotier.local.yaml"
    assert read_local(path) == {}
    write_local({"base_image": "local"}, path)
    write_local({"registry": "r:1"}, path)
    assert read_local(path) == {"base_image": "local", "registry": "r:1"}
    path.write_text("- not\n- a mapping\n")
    with pytest.raises(UserError, match="must hold a mapping of settings"):
        read_local(path)


@pytest.mark.parametrize("data, message", [
    ({"timeouts": {"rollout": "soon"}}, "twotier.timeouts.rollout must be a float"),
    ({"timeouts": {"rolout": 5}}, "unknown setting twotier.timeouts.rolout"),
    ({"timeouts": {"delete": -1}}, "must not be negative"),
    ({"serve": {"app_port": "x"}}, "twotier.serve.app_port must be a int"),
    ({"images": ["sto-img"]}, "twotier.images must be a mapping"),
])
def test_bad_values_name_the_setting(data, message):
    with pytest.raises(UserError, match=message):
        Settings.from_mapping(data)


def test_flags_do_not_leak_into_the_config(monkeypatch):
    c = project_context(monkeypatch)
    tasks._settings(c, stage="hello", timeouts__rollout=1.0)
    assert tasks._settings(c).stage == "full"
    assert c.config.twotier.timeouts.rollout == 180


def test_lists_cannot_come_from_the_environment(monkeypatch):
    # Invoke refuses to cast a string onto a list setting; --allow-context is the per-run way.
    with pytest.raises(UncastableEnvVar):
        project_context(monkeypatch, {"INVOKE_TWOTIER_ALLOWED_CONTEXTS": "prod"})


def test_bad_stage_from_any_layer_is_a_clear_error(monkeypatch):
    with pytest.raises(UserError, match="unknown stage 'prod'"):
        settings_of(monkeypatch, {"INVOKE_TWOTIER_STAGE": "prod"})
    with pytest.raises(UserError, match="unknown stage 'nope'"):
        settings_of(monkeypatch, stage="nope")


# --- what ./bootstrap.sh records for later shells ---------------------------------------------
@pytest.fixture
def local_path(tmp_path, monkeypatch):
    path = tmp_path / "twotier.local.yaml"
    monkeypatch.setenv("TWOTIER_LOCAL_SETTINGS", str(path))
    return path


def test_a_new_shell_computes_the_bootstraps_image_tags(local_path, monkeypatch):
    """The bootstrap's INVOKE_TWOTIER_BASE_IMAGE=local used to die with its process."""
    from twotier.images import build as images
    from twotier.settings import bootstrap_decisions

    bootstrap = settings_of(monkeypatch, {"INVOKE_TWOTIER_BASE_IMAGE": "local"})
    bootstrap_tags = [i.ref for i in images.plan(bootstrap, "full", inspect_base=False)]
    write_local(bootstrap_decisions({"INVOKE_TWOTIER_BASE_IMAGE": "local"}))
    new_shell = settings_of(monkeypatch)  # no variable: the file says it
    assert [i.ref for i in images.plan(new_shell, "full", inspect_base=False)] == bootstrap_tags


def test_bootstrap_records_its_environment_else_keeps_the_file_else_defaults():
    from twotier.settings import bootstrap_decisions

    assert bootstrap_decisions({}) == {"base_image": "local", "registry": "localhost:5000"}
    assert bootstrap_decisions({"INVOKE_TWOTIER_BASE_IMAGE": ""})["base_image"] == ""
    assert bootstrap_decisions({}, {"base_image": ""})["base_image"] == ""
    assert bootstrap_decisions({"INVOKE_TWOTIER_KUBECONFIG": "/k/config"})["kubeconfig"] == "/k/config"
    assert "kubeconfig" not in bootstrap_decisions({})


def test_the_record_command_is_what_the_bootstrap_runs(local_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    local_path.write_text("namespace: mine\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    res = subprocess.run([sys.executable, "-m", "twotier.settings", "record"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "recorded this machine's settings in twotier.local.yaml" in res.stdout
    assert read_local(local_path) == {"namespace": "mine", "base_image": "local", "registry": "localhost:5000"}
    assert local_path.read_text().startswith("# This machine's twotier settings, written by ./bootstrap.sh")
    assert "python -m twotier.settings record" in (root / "bootstrap.sh").read_text()
    assert "twotier.local.yaml" in (root / ".gitignore").read_text().split()


def test_a_broken_file_is_a_clear_error(local_path, monkeypatch):
    local_path.write_text("- just\n- a list\n")
    with pytest.raises(UserError) as info:
        settings_of(monkeypatch)
    assert str(local_path) in info.value.message and "bootstrap.sh" in info.value.hint


def test_an_unknown_access_mode_says_the_choices():
    with pytest.raises(UserError) as err:
        Settings.from_mapping({"access": "ingress"})
    assert "nodeport, port-forward" in err.value.message
    assert "INVOKE_TWOTIER_ACCESS" in err.value.hint


def test_an_unknown_cluster_provider_says_the_choices():
    assert Settings.from_mapping({}).cluster_provider == "local"
    with pytest.raises(UserError) as err:
        Settings.from_mapping({"cluster_provider": "minikube"})
    assert "local, kind" in err.value.message
    assert "INVOKE_TWOTIER_CLUSTER_PROVIDER" in err.value.hint
