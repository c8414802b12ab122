"""The services' shared plumbing (twotier_service.serving in services/common): settings parsing
and the ``python -m <package>`` entry point's error handling."""
from __future__ import annotations

import pytest
from twotier_service import serving


@pytest.mark.parametrize("raw, expected", [(None, 7), ("", 7), (" 12 ", 12), ("0", 0)])
def test_env_int(raw, expected):
    env = {} if raw is None else {"X": raw}
    assert serving.env_int(env, "X", 7) == expected


@pytest.mark.parametrize("raw, message", [("abc", "must be an integer"), ("1.5", "must be an integer"),
                                          ("-1", ">= 0"), ("70000", "<= 65535")])
def test_env_int_errors_name_the_setting(raw, message):
    with pytest.raises(serving.ConfigError, match=f"X {message}|X must"):
        serving.env_int({"X": raw}, "X", 1, 0, 65535)


def test_env_float():
    assert serving.env_float({"T": "0.25"}, "T", 1.0) == 0.25
    assert serving.env_float({}, "T", 1.0) == 1.0
    for bad in ("0", "-1", "soon"):
        with pytest.raises(serving.ConfigError, match="T must"):
            serving.env_float({"T": bad}, "T", 1.0)


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("on", True),
                                             ("0", False), ("", False), (None, False), ("no", False)])
def test_truthy(value, expected):
    assert serving.truthy(value) is expected


def test_main_reports_config_errors_without_traceback(monkeypatch, capsys):
    monkeypatch.delenv("STO_STORAGE", raising=False)
    from storage_api import create_app

    code = serving.main(package="storage_api", title="storage API", prefix="STO", default_port=5000,
                        factory=create_app, argv=[])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: storage API: STO_STORAGE is not set")
    assert "Traceback" not in err


def test_main_rejects_a_bad_port_setting(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("STO_STORAGE", str(tmp_path))
    monkeypatch.setenv("STO_PORT", "http")
    from storage_api import create_app

    assert serving.main(package="storage_api", title="storage API", prefix="STO", default_port=5000,
                        factory=create_app, argv=[]) == 2
    assert "STO_PORT must be an integer" in capsys.readouterr().err


def test_gunicorn_options(monkeypatch, tmp_path):
    """The production server's settings, captured instead of starting gunicorn."""
    from gunicorn.app.base import BaseApplication

    captured = {}

    def fake_run(self):
        captured.update({k: self.cfg.settings[k].get() for k in (
            "bind", "workers", "threads", "worker_class", "accesslog", "graceful_timeout", "timeout")})
        captured["app"] = self.load()

    monkeypatch.setattr(BaseApplication, "run", fake_run)
    monkeypatch.setenv("STO_STORAGE", str(tmp_path))
    monkeypatch.setenv("STO_WORKERS", "3")
    monkeypatch.delenv("TWOTIER_DEV", raising=False)
    from storage_api import create_app

    assert serving.main(package="storage_api", title="storage API", prefix="STO", default_port=5000,
                        factory=create_app, argv=["--port", "5050"]) == 0
    assert captured["bind"] == ["0.0.0.0:5050"]
    assert captured["workers"] == 3 and captured["threads"] == 4
    assert captured["worker_class"] == "gthread" and captured["accesslog"] == "-"
    assert captured["graceful_timeout"] == 10 and captured["timeout"] == 30
    assert captured["app"].name == "storage_api"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_dev_mode_runs_the_reloading_supervisor_without_watching_python_itself(
        monkeypatch, tmp_path, how):
    import sys

    from twotier_service import devserver

    captured = {}
    monkeypatch.setattr(devserver, "run",
                        lambda app, host, port, exclude: captured.update(host=host, port=port, exclude=exclude) or 0)
    monkeypatch.setenv("STO_STORAGE", str(tmp_path))
    monkeypatch.setenv("TWOTIER_DEV", "1" if how == "env" else "0")
    from storage_api import create_app

    argv = ["--dev"] if how == "flag" else []
    assert serving.main(package="storage_api", title="storage API", prefix="STO", default_port=5000,
                        factory=create_app, argv=argv) == 0
    assert captured["port"] == 5000 and captured["host"] == "0.0.0.0"
    assert sys.prefix in captured["exclude"]
    assert str(tmp_path) in captured["exclude"]  # items are data, not code
