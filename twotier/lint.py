"""`invoke lint`: the code (ruff) and every manifest the project can render.

Manifests: every stage alone and with all components, and the loader pod, are validated strictly
against the Kubernetes schemas of the version the local cluster runs, then checked by checkov
(a manifest security linter). A checkov finding is either fixed or suppressed on the object with
a ``checkov.io/skipN: CHECK_ID=reason`` annotation; a suppression without a reason, or one that
suppresses nothing any more, is a finding too. checkov lives in its own virtualenv (its pinned
dependencies clash with the project's), installed from PyPI on first use.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twotier import shape
from twotier.errors import UserError
from twotier.ops import render as manifests
from twotier.settings import Settings
from twotier.shape import ROOT

K8S_SCHEMA_VERSION = "1.34"
CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = Path(os.environ.get("TWOTIER_CHECKOV_VENV", "/var/cache/twotier/checkov-venv"))
#: what the renders use for images: any full reference (the tags don't matter to the checks)
REFS = {name: f"localhost:5000/{name}:0123456789ab" for name in shape.load().image_names.values()}


def renders(settings: Settings | None = None) -> dict[str, list[dict]]:
    """{file name: objects} for every stage alone, every stage with all components, the loader."""
    settings = settings or Settings()
    every = ",".join(manifests.available_components())
    out = {}
    for stage in shape.load().stages:
        out[f"{stage}.yaml"] = manifests.render_stage(settings, stage, images=REFS, overlay="")
        out[f"{stage}-all-components.yaml"] = manifests.render_stage(settings, stage, images=REFS, overlay=every)
    out["loader.yaml"] = manifests.render_loader(settings, REFS[shape.load().loader.image])
    return out


def schema_problems(objs: list[dict], version: str = K8S_SCHEMA_VERSION) -> list[str]:
    """One line per object that does not validate strictly (unknown fields are errors)."""
    import kubernetes_validate

    problems = []
    for obj in objs:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {obj.get('apiVersion')} {obj.get('kind')} in {version}")
        except kubernetes_validate.ValidationError as err:
            path = "/".join(str(p) for p in err.path)
            problems.append(f"{where}: {path}: {err.message}")
    return problems


def checkov_binary(progress=print) -> Path:
    exe = CHECKOV_VENV / "bin" / "checkov"
    if _checkov_version(exe) == CHECKOV_VERSION:
        return exe
    progress(f"installing checkov {CHECKOV_VERSION} into {CHECKOV_VENV} (once, about a minute)")
    for step in ([sys.executable, "-m", "venv", str(CHECKOV_VENV)],
                 [str(CHECKOV_VENV / "bin" / "pip"), "install", "--quiet", f"checkov=={CHECKOV_VERSION}"]):
        proc = subprocess.run(step, capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise UserError(f"could not install checkov {CHECKOV_VERSION} (`{' '.join(step)}` failed):\n{tail}",
                            "PyPI must be reachable, or set TWOTIER_CHECKOV_VENV to a venv holding it")
    return exe


def _checkov_version(exe: Path) -> str | None:
    if not exe.exists():
        return None
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=300)
    return proc.stdout.strip() if proc.returncode == 0 else None


def checkov_report(objects: dict[str, list[dict]], progress=print) -> dict:
    exe = checkov_binary(progress)
    with tempfile.TemporaryDirectory(prefix="twotier-lint-") as folder:
        for name, objs in objects.items():
            Path(folder, name).write_text(manifests.to_yaml(objs))
        env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"}
        proc = subprocess.run([str(exe), "--directory", folder, "--framework", "kubernetes",
                               "--output", "json", "--skip-download"],
                              capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode not in (0, 1):
        raise UserError(f"checkov crashed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def checkov_problems(report: dict, objects: dict[str, list[dict]]) -> list[str]:
    """Failed checks, suppressions without a reason, and suppressions that suppress nothing."""
    def where(check):
        return f"{check['check_id']} ({check['check_name']}) on {check['resource']} in {check['file_path']}"

    problems = []
    if report["summary"]["parsing_errors"]:
        problems.append(f"checkov could not parse {report['summary']['parsing_errors']} file(s)")
    problems += [f"finding: {where(c)}" for c in report["results"]["failed_checks"]]
    skipped = report["results"]["skipped_checks"]
    problems += [f"suppression without a reason (>= 20 characters): {where(c)}" for c in skipped
                 if len(c["check_result"].get("suppress_comment", "").strip()) < 20]
    used = {(c["file_path"].lstrip("/"), c["check_id"], c["resource"].split(".")[2]) for c in skipped}
    for file, objs in objects.items():
        for obj in objs:
            for key, value in (obj["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    check_id = value.split("=", 1)[0]
                    if (file, check_id, obj["metadata"]["name"]) not in used:
                        problems.append(f"stale suppression: {file}: {obj['kind']}/{obj['metadata']['name']} "
                                        f"{key}: {check_id}")
    return problems


def ruff(fix: bool = False) -> int:
    exe = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(exe).exists():
        raise UserError("ruff is not installed", "install the dev requirements: ./bootstrap.sh")
    return subprocess.run([exe, "check", *(["--fix"] if fix else []), "."], cwd=ROOT).returncode


def run(fix: bool = False, progress=print) -> int:
    """ruff, then the manifest checks; the number of problem groups found (0 = clean)."""
    failures = 0
    progress("== ruff")
    if ruff(fix):
        failures += 1
    progress(f"== manifests: strict schema validation (Kubernetes {K8S_SCHEMA_VERSION})")
    objects = renders()
    problems = [f"{file}: {p}" for file, objs in objects.items() for p in schema_problems(objs)]
    progress("== manifests: checkov")
    problems += checkov_problems(checkov_report(objects, progress), objects)
    for line in problems:
        progress(f"  {line}")
    if problems:
        failures += 1
    return failures
