"""Settings precedence: invoke.yaml < INVOKE_TWOTIER_* environment < task flags."""
from pathlib import Path

import pytest
from invoke import Config, MockContext
from invoke.exceptions import UncastableEnvVar

import tasks
from twotier.errors import UserError
from twotier.project import effective

ROOT = Path(__file__).resolve().parents[2]


def project_config(monkeypatch, env=None):
    for key in [k for k in __import__("os").environ if k.startswith("INVOKE_")]:
        monkeypatch.delenv(key)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    cfg = Config(project_location=str(ROOT))
    cfg.load_project()
    cfg.load_shell_env()
    return cfg


def test_invoke_yaml_gives_the_defaults(monkeypatch):
    s = tasks._settings(MockContext(config=project_config(monkeypatch)))
    assert s["stage"] == "full"
    assert s["namespace"] == "default"
    assert s["timeouts"]["rollout"] == 180
    assert s["field_manager"] == "twotier"
    assert "twotier-local" in s["allowed_contexts"]


def test_environment_overrides_invoke_yaml(monkeypatch):
    cfg = project_config(monkeypatch, {"INVOKE_TWOTIER_STAGE": "storage",
                                       "INVOKE_TWOTIER_NAMESPACE": "ns-from-env",
                                       "INVOKE_TWOTIER_TIMEOUTS_ROLLOUT": "60"})
    s = tasks._settings(MockContext(config=cfg))
    assert s["stage"] == "storage"
    assert s["namespace"] == "ns-from-env"
    assert s["timeouts"]["rollout"] == 60  # cast to the yaml value's type
    assert s["timeouts"]["delete"] == 120  # untouched siblings keep their yaml value


def test_flags_override_environment(monkeypatch):
    cfg = project_config(monkeypatch, {"INVOKE_TWOTIER_STAGE": "storage",
                                       "INVOKE_TWOTIER_TIMEOUTS_ROLLOUT": "60",
                                       "INVOKE_TWOTIER_CONTEXT": "kind-env"})
    s = tasks._settings(MockContext(config=cfg), stage="hello", timeouts__rollout=15.0,
                        context="kind-flag", namespace=None)
    assert s["stage"] == "hello"
    assert s["timeouts"]["rollout"] == 15.0
    assert s["context"] == "kind-flag"
    assert s["namespace"] == "default"  # a flag not given (None) leaves the setting alone


def test_flags_do_not_leak_into_the_config(monkeypatch):
    cfg = project_config(monkeypatch)
    tasks._settings(MockContext(config=cfg), stage="hello", timeouts__rollout=1.0)
    assert cfg.twotier.stage == "full"
    assert cfg.twotier.timeouts.rollout == 180


def test_lists_cannot_come_from_the_environment(monkeypatch):
    # Invoke refuses to cast a string onto a list setting; --allow-context is the per-run way.
    with pytest.raises(UncastableEnvVar):
        project_config(monkeypatch, {"INVOKE_TWOTIER_ALLOWED_CONTEXTS": "prod"})


def test_bad_stage_from_any_layer_is_a_clear_error(monkeypatch):
    cfg = project_config(monkeypatch, {"INVOKE_TWOTIER_STAGE": "prod"})
    with pytest.raises(UserError, match="unknown stage 'prod'"):
        tasks._settings(MockContext(config=cfg))
    with pytest.raises(UserError, match="unknown stage 'nope'"):
        tasks._settings(MockContext(config=project_config(monkeypatch)), stage="nope")


def test_effective_is_pure_and_handles_dotted_keys():
    base = {"stage": "full", "timeouts": {"rollout": 180, "api": 5}}
    out = effective(base, {"stage": "hello", "timeouts.rollout": 9, "timeouts.api": None, "new.key": 1})
    assert out == {"stage": "hello", "timeouts": {"rollout": 9, "api": 5}, "new": {"key": 1}}
    assert base == {"stage": "full", "timeouts": {"rollout": 180, "api": 5}}
