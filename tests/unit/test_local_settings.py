"""twotier.local.yaml: the bootstrap's decisions reach every later `invoke`, under the environment."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Config, MockContext

import tasks
from twotier import images, localsettings
from twotier.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def local_file(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("INVOKE_")]:
        monkeypatch.delenv(key)
    path = tmp_path / "twotier.local.yaml"
    monkeypatch.setenv("TWOTIER_LOCAL_SETTINGS", str(path))
    return path


def task_settings(**flags) -> dict:
    cfg = Config(project_location=str(ROOT))
    cfg.load_project()
    cfg.load_shell_env()
    return tasks._settings(MockContext(config=cfg), **flags)


def test_the_file_overrides_invoke_yaml(local_file):
    local_file.write_text("base_image: local\nregistry: reg.example:5000\ntimeouts:\n  rollout: 30\n")
    s = task_settings()
    assert s["base_image"] == "local"
    assert s["registry"] == "reg.example:5000"
    assert s["timeouts"]["rollout"] == 30
    assert s["timeouts"]["delete"] == 120  # siblings keep invoke.yaml's value


def test_the_environment_overrides_the_file_even_when_empty(local_file, monkeypatch):
    local_file.write_text("base_image: local\ntimeouts:\n  rollout: 30\n")
    monkeypatch.setenv("INVOKE_TWOTIER_BASE_IMAGE", "")
    monkeypatch.setenv("INVOKE_TWOTIER_TIMEOUTS_ROLLOUT", "60")
    s = task_settings()
    assert s["base_image"] == ""
    assert s["timeouts"]["rollout"] == 60


def test_flags_override_the_file(local_file):
    local_file.write_text("stage: storage\n")
    assert task_settings()["stage"] == "storage"
    assert task_settings(stage="hello")["stage"] == "hello"


def test_no_file_means_invoke_yaml(local_file):
    assert task_settings()["base_image"] == ""


def test_a_new_shell_computes_the_bootstraps_image_tags(local_file, monkeypatch):
    """The bug this file fixes: the bootstrap's INVOKE_TWOTIER_BASE_IMAGE=local died with it."""
    monkeypatch.setenv("INVOKE_TWOTIER_BASE_IMAGE", "local")
    bootstrap_tags = [i.ref for i in images.plan(task_settings(), "full", inspect_base=False)]
    localsettings.record(localsettings.bootstrap_decisions(), local_file)
    monkeypatch.delenv("INVOKE_TWOTIER_BASE_IMAGE")  # a new shell
    assert [i.ref for i in images.plan(task_settings(), "full", inspect_base=False)] == bootstrap_tags


def test_bootstrap_records_its_environment_else_keeps_the_file_else_defaults(local_file):
    assert localsettings.bootstrap_decisions({}) == {"base_image": "local", "registry": "localhost:5000"}
    assert localsettings.bootstrap_decisions({"INVOKE_TWOTIER_BASE_IMAGE": ""})["base_image"] == ""
    assert localsettings.bootstrap_decisions({}, {"base_image": ""})["base_image"] == ""
    given = localsettings.bootstrap_decisions({"INVOKE_TWOTIER_KUBECONFIG": "/k/config"})
    assert given["kubeconfig"] == "/k/config"
    assert "kubeconfig" not in localsettings.bootstrap_decisions({})


def test_record_keeps_other_keys_and_says_where_it_comes_from(local_file):
    local_file.write_text("namespace: mine\nbase_image: ''\n")
    localsettings.record({"base_image": "local"}, local_file)
    text = local_file.read_text()
    assert text.startswith("# This machine's twotier settings, written by ./bootstrap.sh")
    assert localsettings.load(local_file) == {"namespace": "mine", "base_image": "local"}


def test_the_record_command_is_what_the_bootstrap_runs(local_file):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    res = subprocess.run([sys.executable, "-m", "twotier.localsettings", "record"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "recorded this machine's settings in twotier.local.yaml" in res.stdout
    assert localsettings.load(local_file) == {"base_image": "local", "registry": "localhost:5000"}
    assert "bootstrap.sh" in (ROOT / "bootstrap.sh").read_text() and \
        "twotier.localsettings record" in (ROOT / "bootstrap.sh").read_text()


def test_a_broken_file_is_a_clear_error(local_file):
    local_file.write_text("- just\n- a list\n")
    with pytest.raises(UserError) as info:
        task_settings()
    assert str(local_file) in info.value.message and "bootstrap.sh" in info.value.hint


def test_the_file_is_git_ignored():
    assert "twotier.local.yaml" in (ROOT / ".gitignore").read_text().split()
