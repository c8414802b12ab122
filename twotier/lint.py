"""`invoke lint`: the code (ruff) and every manifest the project can render: strict schemas, Pod
Security "restricted" (``NOT_RESTRICTED`` says why a component cannot be), checkov and its
suppressions (k8s/README.md says what each check covers). checkov lives in its own virtualenv (its
pinned dependencies clash with the project's), installed from PyPI on first use.
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
from twotier.kube.objects import pod_spec
from twotier.ops import render as manifests
from twotier.settings import Settings
from twotier.shape import ROOT


def schema_versions() -> list[str]:
    """The minors the manifests must validate against: the local cluster's default release and the
    oldest supported one (localcluster/versions.env), the two CI runs the system on."""
    from localcluster import versions

    d = versions.defaults()
    return [f"1.{versions.minor(d['KUBERNETES_VERSION'])}", d["OLDEST_KUBERNETES_MINOR"]]


K8S_SCHEMA_VERSION = schema_versions()[0]
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


#: components that cannot meet Pod Security "restricted", and why (said again in their file)
NOT_RESTRICTED = {
    "volume-owner": "an init container runs as root to chown local-pv's directory, for clusters "
                    "whose nodes the tooling cannot reach",
}
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret"}


def restricted_renders(settings: Settings | None = None) -> dict[str, list[dict]]:
    """{name: objects} for every stage alone and with each component that can be restricted."""
    settings = settings or Settings()
    out = {}
    for stage in shape.load().stages:
        out[stage] = manifests.render_stage(settings, stage, images=REFS, overlay="")
        for component in manifests.available_components():
            if component not in NOT_RESTRICTED:
                out[f"{stage}+{component}"] = manifests.render_stage(settings, stage, images=REFS,
                                                                     overlay=component)
    out["loader"] = manifests.render_loader(settings, REFS[shape.load().loader.image])
    return out


def restricted_problems(objs: list[dict]) -> list[str]:
    """What Pod Security "restricted" (Kubernetes' pod security standards, the "restricted"
    profile, which includes "baseline") refuses in these objects' pods, one line each."""
    problems = []
    for obj in objs:
        spec = pod_spec(obj)
        if spec is not None:
            problems += [f"{obj['kind']}/{obj['metadata']['name']}: {p}" for p in _pod_problems(spec)]
    return problems


def _pod_problems(spec: dict) -> list[str]:
    problems = []
    pod_sc = spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{flag} is set")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            problems.append(f"volume {volume.get('name')}: type {sorted(kinds)} is not allowed")
    if pod_sc.get("runAsUser") == 0:
        problems.append("the pod's runAsUser is 0")
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or []),
                  *(spec.get("ephemeralContainers") or [])]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = f"container {c.get('name')}"
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runs as uid 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp or 'unset'} (RuntimeDefault or Localhost)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            problems.append(f"{name}: adds capabilities {sorted(extra)}")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            problems.append(f"{name}: uses a hostPort")
    return problems


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
    progress(f"== manifests: strict schema validation (Kubernetes {' and '.join(schema_versions())})")
    objects = renders()
    problems = [f"{file}: {v}: {p}" for v in schema_versions() for file, objs in objects.items()
                for p in schema_problems(objs, v)]
    progress('== manifests: Pod Security "restricted" (every stage, alone and with each component)')
    problems += [f"{name}: {p}" for name, objs in restricted_renders().items()
                 for p in restricted_problems(objs)]
    progress("== manifests: checkov")
    problems += checkov_problems(checkov_report(objects, progress), objects)
    for line in problems:
        progress(f"  {line}")
    if problems:
        failures += 1
    return failures
