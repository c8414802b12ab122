"""The services' shared plumbing (twotier_service.serving in services/common): settings parsing
and the ``python -m <package>`` entry point's error handling."""
from __future__ import annotations

import sys

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


def test_main_reports_config_errors_without_traceback(monkeypatch, capfd):
    """(capfd: the app is first built in a forked child, which writes the line.)"""
    monkeypatch.delenv("STO_STORAGE", raising=False)
    from storage_api import create_app

    code = serving.main(package="storage_api", title="storage API", prefix="STO", default_port=5000,
                        factory=create_app, argv=[])
    assert code == 2
    err = capfd.readouterr().err
    assert err.startswith("error: storage API: STO_STORAGE is not set")
    assert "Traceback" not in err


def test_main_rejects_a_bad_port_setting(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("STO_STORAGE", str(tmp_path))
    monkeypatch.setenv("STO_PORT", "http")
    from storage_api import create_app

    assert serving.main(package="storage_api", title="storage API", prefix="STO", default_port=5000,
                        factory=create_app, argv=[]) == 2
    assert "STO_PORT must be an integer" in capsys.readouterr().err


def test_production_server_options(monkeypatch, tmp_path):
    """The production server's settings (granian, the RSGI bridge), captured instead of serving."""
    import granian
    from granian.constants import Interfaces

    captured = {}

    class FakeGranian:
        def __init__(self, **options):
            captured.update(options)

        def serve(self):
            captured["served"] = True

    monkeypatch.setattr(granian, "Granian", FakeGranian)
    monkeypatch.setenv("STO_STORAGE", str(tmp_path))
    monkeypatch.setenv("STO_WORKERS", "3")
    monkeypatch.setenv("STO_TIMEOUT", "7")
    monkeypatch.delenv("TWOTIER_DEV", raising=False)
    monkeypatch.delenv(serving.PACKAGE_ENV, raising=False)
    monkeypatch.delenv(serving.PREFIX_ENV, raising=False)
    from storage_api import create_app

    assert serving.main(package="storage_api", title="storage API", prefix="STO", default_port=5000,
                        factory=create_app, argv=["--port", "5050"]) == 0
    assert captured["served"] and (captured["address"], captured["port"]) == ("0.0.0.0", 5050)
    assert captured["workers"] == 3 and captured["interface"] == Interfaces.RSGI
    assert captured["target"] == "twotier_service.rsgi:app_from_env" and captured["factory"]
    assert captured["respawn_failed_workers"] and not captured["log_access"]  # the bridge logs
    assert captured["workers_kill_timeout"] == 10  # STO_GRACEFUL_TIMEOUT's default
    assert captured["http1_settings"].header_read_timeout == 7000  # STO_TIMEOUT, in ms
    assert captured["backpressure"] == 4096  # connections per worker, idle ones included
    assert captured["loop"] == "uvloop"  # pinned in every service's requirements.txt
    # what each worker's factory reads to build the same app
    import os
    assert (os.environ[serving.PACKAGE_ENV], os.environ[serving.PREFIX_ENV]) == ("storage_api", "STO")


def test_the_workers_app_factory_wraps_the_flask_app(monkeypatch, tmp_path):
    from twotier_service import rsgi

    monkeypatch.setenv(serving.PACKAGE_ENV, "storage_api")
    monkeypatch.setenv(serving.PREFIX_ENV, "STO")
    monkeypatch.setenv("STO_STORAGE", str(tmp_path))
    monkeypatch.setenv("STO_THREADS", "3")
    monkeypatch.setenv("STO_MAX_BODY", "4096")
    bridge = rsgi.app_from_env()
    assert bridge.app.name == "storage_api" and bridge.pool._max_workers == 3
    assert bridge.max_body == 4096 and bridge.body_timeout == 10
    assert isinstance(bridge.access_log, rsgi.AccessLog) and bridge.access_log.stream is sys.stdout


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


@pytest.mark.parametrize("package, prefix, method, path, cheap", [
    ("storage_api", "STO", "PUT", "/items/a", True),
    ("storage_api", "STO", "DELETE", "/items/a", True),
    ("storage_api", "STO", "GET", "/items", False),  # grows with the items: a thread
    ("storage_api", "STO", "POST", "/items:batch", False),
    ("storage_api", "STO", "GET", "/healthz", True),
    ("app_api", "API", "GET", "/createlist/5", False),  # waits on the storage tier
    ("app_api", "API", "GET", "/readyz", True),
    ("hello_app", "HELLO", "GET", "/info", True),
])
def test_only_cheap_requests_run_on_the_event_loop(monkeypatch, tmp_path, package, prefix, method, path, cheap):
    from twotier_service import rsgi

    monkeypatch.setenv("STO_STORAGE", str(tmp_path))
    monkeypatch.setenv("STO_API", "http://127.0.0.1:9")
    monkeypatch.setenv(serving.PACKAGE_ENV, package)
    monkeypatch.setenv(serving.PREFIX_ENV, prefix)
    bridge = rsgi.app_from_env()
    assert bridge._cheap({"REQUEST_METHOD": method, "PATH_INFO": path}) is cheap


def test_the_access_log_writes_a_burst_in_one_write_scheduled_flush_after_later():
    import asyncio
    import io

    from twotier_service.rsgi import AccessLog

    class Stream(io.StringIO):
        writes = 0
        written: asyncio.Event

        def write(self, text):
            Stream.writes += 1
            Stream.written.set()
            return super().write(text)

    stream = Stream()
    log = AccessLog(stream)

    async def burst():
        Stream.written = asyncio.Event()
        loop = asyncio.get_running_loop()
        for i in range(3):
            log.write(f"line {i}")
        assert stream.getvalue() == ""  # not yet: one write for the batch
        # the write is scheduled on the loop FLUSH_AFTER later (loop time, not a measured wait)
        assert log.pending.when() - loop.time() <= AccessLog.FLUSH_AFTER
        await asyncio.wait_for(Stream.written.wait(), timeout=5)  # bounds a hang only

    asyncio.run(burst())
    assert stream.getvalue() == "line 0\nline 1\nline 2\n" and Stream.writes == 1
    log.write("outside a loop")  # written at once
    assert stream.getvalue().endswith("outside a loop\n") and Stream.writes == 2
