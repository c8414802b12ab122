"""checkov (a manifest linter from PyPI) finds nothing unexplained in any rendered stage.

Each suppression is a ``checkov.io/skipN: CHECK_ID=reason`` annotation on the object it
concerns; this test also fails on a suppression without a reason and on one that no longer
suppresses anything (stale). checkov lives in its own virtualenv (its pinned dependencies clash
with the project's); the test installs it there from PyPI when it is missing and fails with the
pip output if that is impossible.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twotier import manifests

CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = Path(os.environ.get("TWOTIER_CHECKOV_VENV", "/var/cache/twotier/checkov-venv"))
SETTINGS = {"registry": "localhost:5000", "namespace": "default", "overlay": ""}
REFS = {name: f"localhost:5000/{name}:0123456789ab" for name in ("first-app", "sto-img", "api-img", "loader")}
RENDERS = {  # file name -> objects
    **{f"{stage}.yaml": (stage, "") for stage in manifests.STAGES},
    **{f"{stage}-all-components.yaml": (stage, ",".join(manifests.available_components()))
       for stage in manifests.STAGES},
}


def _installed_version(exe: Path) -> str | None:
    if not exe.exists():
        return None
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=300)
    return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.fixture(scope="module")
def checkov() -> Path:
    exe = CHECKOV_VENV / "bin" / "checkov"
    if _installed_version(exe) == CHECKOV_VERSION:
        return exe
    steps = [[sys.executable, "-m", "venv", str(CHECKOV_VENV)],
             [str(CHECKOV_VENV / "bin" / "pip"), "install", "--quiet", f"checkov=={CHECKOV_VERSION}"]]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            pytest.fail(f"could not install checkov {CHECKOV_VERSION} into {CHECKOV_VENV} "
                        f"(`{' '.join(step)}` failed):\n{tail}\n"
                        "PyPI must be reachable, or set TWOTIER_CHECKOV_VENV to a venv holding it")
    assert _installed_version(exe) == CHECKOV_VERSION
    return exe


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    folder = tmp_path_factory.mktemp("rendered")
    objects = {name: manifests.render_stage(SETTINGS, stage, images=REFS, overlay=overlay)
               for name, (stage, overlay) in RENDERS.items()}
    objects["loader.yaml"] = manifests.render_loader(SETTINGS, images=REFS)
    for name, objs in objects.items():
        (folder / name).write_text(manifests.to_yaml(objs))
    return folder, objects


@pytest.fixture(scope="module")
def report(checkov, rendered) -> dict:
    folder, _ = rendered
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"}
    proc = subprocess.run([str(checkov), "--directory", str(folder), "--framework", "kubernetes",
                           "--output", "json", "--skip-download"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode in (0, 1), f"checkov crashed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    data = json.loads(proc.stdout)
    assert data["summary"]["parsing_errors"] == 0
    assert data["summary"]["resource_count"] > 0
    return data


def _where(check: dict) -> str:
    return f"{check['check_id']} ({check['check_name']}) on {check['resource']} in {check['file_path']}"


def test_checkov_reports_no_failed_check(report):
    failed = [_where(c) for c in report["results"]["failed_checks"]]
    assert failed == [], "unexplained checkov findings:\n" + "\n".join(failed)


def test_every_suppression_carries_a_reason(report):
    assert report["results"]["skipped_checks"], "expected the documented suppressions to be exercised"
    for check in report["results"]["skipped_checks"]:
        assert len(check["check_result"].get("suppress_comment", "").strip()) >= 20, _where(check)


def test_no_suppression_is_stale(report, rendered):
    _, objects = rendered
    skipped = {(c["file_path"].lstrip("/"), c["check_id"], c["resource"].split(".")[2])
               for c in report["results"]["skipped_checks"]}
    stale = []
    for file, objs in objects.items():
        for obj in objs:
            for key, value in (obj["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    check_id = value.split("=", 1)[0]
                    if (file, check_id, obj["metadata"]["name"]) not in skipped:
                        stale.append(f"{file}: {obj['kind']}/{obj['metadata']['name']} {key}: {check_id}")
    assert stale == [], "suppressions that suppress nothing:\n" + "\n".join(stale)
