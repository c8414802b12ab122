"""twotier.dev.tiltrun, tests.support.tilt and bench.tilt: which Tilt runs, with which arguments, and the
source edit the e2e test and the benchmark make (pure parts; the real runs are in tests/e2e/test_tilt.py)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bench import tilt as tiltbench
from tests.support import tilt as live
from twotier.dev import tiltrun
from twotier.errors import UserError
from twotier.ports import port_in_use
from twotier.settings import Settings


class FakeCluster:
    context = "twotier-local"
    namespace = "default"
    kubeconfig = "/tmp/kubeconfig"


def test_the_pinned_build_wins_over_path(tmp_path, monkeypatch):
    pinned = tmp_path / "tilt-v0.37.5" / "tilt"
    pinned.parent.mkdir()
    pinned.write_text("#!/bin/sh\n")
    pinned.chmod(0o755)
    (pinned.parent / ".complete").touch()
    monkeypatch.setattr(tiltrun, "pinned_tilt", lambda: pinned)
    monkeypatch.setattr(tiltrun.shutil, "which", lambda name: "/usr/local/bin/tilt")
    assert tiltrun.tilt_binary() == str(pinned)


def test_an_unfinished_build_is_not_used(tmp_path, monkeypatch):
    pinned = tmp_path / "tilt-v0.37.5" / "tilt"
    pinned.parent.mkdir()
    pinned.write_text("partial")
    monkeypatch.setattr(tiltrun, "pinned_tilt", lambda: pinned)
    monkeypatch.setattr(tiltrun.shutil, "which", lambda name: "/usr/local/bin/tilt")
    assert tiltrun.tilt_binary() == "/usr/local/bin/tilt"


@pytest.mark.parametrize("on_path", [None, "first-use shim"])
def test_no_tilt_yet_builds_the_pinned_one_on_first_use(on_path, tmp_path, monkeypatch):
    from localcluster import build

    pinned = tmp_path / "tilt-v0.37.5" / "tilt"
    built = []
    monkeypatch.setattr(tiltrun, "pinned_tilt", lambda: pinned)
    shim = str(tiltrun.pinned_shim_dir() / "tilt")  # localcluster/bin/tilt, on cluster.env's PATH
    monkeypatch.setattr(tiltrun.shutil, "which", lambda name: shim if on_path else None)
    monkeypatch.setattr(build, "ensure", lambda comps: built.append(comps))
    assert tiltrun.tilt_binary() == str(pinned) and built == [["tilt"]]


@pytest.mark.parametrize("base, expected", [
    ("", ["--registry=localhost:5000"]),
    ("local", ["--registry=localhost:5000", "--base-image=twotier-base:bookworm"]),
    ("python:3.12-slim", ["--registry=localhost:5000", "--base-image=python:3.12-slim"]),
])
def test_settings_reach_the_tiltfile_as_arguments(base, expected):
    assert tiltrun.tiltfile_args(Settings.from_mapping({"registry": "localhost:5000/", "base_image": base})) == expected


def test_tilt_acts_on_exactly_the_configured_context_and_namespace():
    argv = tiltrun.tilt_argv("tilt", "ci", FakeCluster(), 10351, ["--timeout", "900s"], ["--registry=r"])
    assert argv[:2] == ["tilt", "ci"]
    assert argv[argv.index("--context") + 1] == "twotier-local"
    assert argv[argv.index("--namespace") + 1] == "default"
    assert argv[argv.index("--port") + 1] == "10351"
    assert argv[argv.index("--file") + 1] == str(tiltrun.TILTFILE)
    assert argv[-2:] == ["--", "--registry=r"]  # Tiltfile arguments come last, after --


def test_tilt_gets_the_kubeconfig_and_its_port(monkeypatch):
    monkeypatch.setattr(tiltrun, "kubectl", lambda: "/opt/k8s/bin/kubectl")
    env = tiltrun.tilt_env("/tmp/kubeconfig", 12345)
    assert env["KUBECONFIG"] == "/tmp/kubeconfig"
    assert env["TILT_PORT"] == "12345"
    assert env["PATH"].startswith("/opt/k8s/bin" + ":")  # kustomize() falls back to this kubectl


def test_a_busy_default_port_is_replaced_by_a_free_one():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert port_in_use(port)
        chosen = tiltrun.pick_port(port)
    assert chosen != port and not port_in_use(chosen)


VIEW = '''\
@bp.route("/items")
def list_items():
    return jsonify(items=sorted(x))


def other():
    return jsonify(a=1)
'''


def _tier(path: Path) -> live.Tier:
    return live.Tier("storage", path, "list_items", 31000, "/items", 5000, "run=sto-app", "sto-dep")


def test_the_edit_adds_one_field_to_the_view_and_restores_the_file(tmp_path):
    src = tmp_path / "routes.py"
    src.write_text(VIEW)
    with live.SourceEdit(_tier(src)) as edit:
        edit.apply("m1")
        edit.apply("m2")  # each edit starts from the original: one field, the latest value
        text = src.read_text()
        assert 'return jsonify(tilt_probe="m2", items=sorted(x))' in text
        assert text.count("tilt_probe") == 1
        assert "return jsonify(a=1)" in text
    assert src.read_text() == VIEW


def test_restoring_keeps_somebody_elses_later_edit(tmp_path):
    src = tmp_path / "routes.py"
    src.write_text(VIEW)
    edit = live.SourceEdit(_tier(src))
    edit.apply("m1")
    src.write_text(src.read_text() + "\n# added meanwhile\n")
    edit.restore()
    assert src.read_text() == VIEW + "\n# added meanwhile\n"


def test_a_view_that_moved_is_a_clear_error(tmp_path):
    src = tmp_path / "routes.py"
    src.write_text("def something_else():\n    return 1\n")
    with pytest.raises(UserError, match="list_items"):
        live.SourceEdit(_tier(src))


def test_the_benchmark_edits_real_views_of_both_services():
    for tier in live.TIERS.values():
        edit = live.SourceEdit(tier)
        assert 'tilt_probe="x", ' in edit.text_with("x")


def test_the_table_shows_medians_and_rebuild_times():
    result = {"live_update": {"storage": {"service_median_s": 1.234, "all_replicas_median_s": 1.5},
                              "app": {"service_median_s": 0.9, "all_replicas_median_s": 0.9}},
              "rebuild": {"storage": {"tilt_build_median_s": 6.04, "service_median_s": 21.0,
                                      "all_replicas_median_s": 30.2}}}
    table = tiltbench.format_table(result)
    assert "| storage | 1.23 s | 1.50 s | 6.0 s | 21.0 s | 30.2 s |" in table
    assert "| app | 0.90 s | 0.90 s | - | - | - |" in table


class _Proc:
    def __init__(self, returncode):
        self.returncode = returncode


@pytest.mark.parametrize("ci_code", [0, 1])
def test_tilt_ci_always_ends_with_tilt_down_and_the_clean_wait(monkeypatch, ci_code):
    calls = []
    monkeypatch.setattr(tiltrun, "prepare", lambda settings, progress: ("tilt", FakeCluster()))
    monkeypatch.setattr(tiltrun, "tilt_version", lambda tilt: "v0.37.5")
    monkeypatch.setattr(tiltrun, "tilt_objects", lambda settings: ["objects"])
    monkeypatch.setattr(tiltrun, "kubectl", lambda: "/opt/k8s/bin/kubectl")
    monkeypatch.setattr(tiltrun.subprocess, "run",
                        lambda argv, **kw: calls.append(argv[1]) or _Proc(ci_code if argv[1] == "ci" else 0))
    monkeypatch.setattr(tiltrun.ops, "clean", lambda cluster, settings, objs, out: calls.append(("clean", objs)))
    settings = Settings.from_mapping({"timeouts": {"delete": 5}})
    if ci_code:
        with pytest.raises(UserError, match="tilt ci failed") as err:
            tiltrun.run_ci(settings, timeout=60, progress=lambda _line: None)
        assert err.value.code == ci_code
    else:
        tiltrun.run_ci(settings, timeout=60, progress=lambda _line: None)
    assert calls == ["ci", "down", ("clean", ["objects"])]
