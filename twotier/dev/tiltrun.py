"""Running Tilt for the project: `invoke tilt.ci` and `invoke tilt.smoke` (the `tilt up` session
the tests and benchmarks drive is tests/support/tilt.py, built on these parts).

Tilt is the pinned build (localcluster/versions.env's TILT_VERSION, built on first use), else
`tilt` on PATH; it acts on the cluster every other task uses (the safety rule applied), with the
settings' registry and base image as Tiltfile arguments. `tilt down` only asks for the deletions
(docs/dev-loop.md: what it removes and keeps); `invoke tilt.ci` then waits for them with `invoke
clean`'s machinery and order.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from localcluster import layout
from twotier.errors import UserError
from twotier.images import build as images
from twotier.kube.objects import dig
from twotier.ops import loader, render
from twotier.ops import stage as ops
from twotier.ops.cluster import connect, kubectl
from twotier.ports import free_port, port_in_use
from twotier.shape import ROOT

TILTFILE = ROOT / "Tiltfile"
DEFAULT_PORT = 10350


# ------------------------------------------------------------------------------------ the binary

def pinned_tilt() -> Path:
    """Where `invoke cluster.build --component tilt` puts the pinned Tilt."""
    return layout.binary("tilt")


def tilt_binary() -> str:
    """The pinned build if it is complete, else `tilt` on PATH, else a clear error."""
    pinned = pinned_tilt()
    if (pinned.parent / ".complete").exists() and os.access(pinned, os.X_OK):
        return str(pinned)
    found = shutil.which("tilt")
    if found and Path(found).parent != pinned_shim_dir():
        return found
    from localcluster import build  # first use: build it, with the cluster builds' progress lines

    build.ensure(["tilt"])
    return str(pinned)


def pinned_shim_dir() -> Path:
    """localcluster/bin: its `tilt` builds the pinned Tilt on first use (cluster.env's PATH)."""
    return layout.HERE / "bin"


def tilt_version(tilt: str) -> str:
    proc = subprocess.run([tilt, "version"], capture_output=True, text=True, timeout=30)
    return proc.stdout.strip() or proc.stderr.strip()


# ------------------------------------------------------------------------------- the command line

def tiltfile_args(settings) -> list[str]:
    """Tiltfile arguments (after `--`) that carry the project's settings into the Tiltfile."""
    args = [f"--registry={settings.registry}"]
    base = images.resolve_base_image(settings)
    if base:
        args.append(f"--base-image={base}")
    return args


def tilt_argv(tilt: str, subcommand: str, cluster, port: int | None = None,
              extra: list[str] = (), tilt_args: list[str] = ()) -> list[str]:
    """The full argv of `tilt SUBCOMMAND` acting on exactly CLUSTER's context and namespace."""
    argv = [tilt, subcommand, "--file", str(TILTFILE), "--context", cluster.context,
            "--namespace", cluster.namespace]
    if port is not None:
        argv += ["--port", str(port)]
    argv += list(extra)
    if tilt_args:
        argv += ["--", *tilt_args]
    return argv


def tilt_env(kubeconfig: str, port: int | None = None) -> dict:
    """Environment for Tilt: the cluster's kubeconfig, the pinned kubectl first on PATH."""
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    if port is not None:
        env["TILT_PORT"] = str(port)  # `tilt get/wait/trigger` find this session's API server
    try:
        kubectl_dir = str(Path(kubectl()).parent)
        env["PATH"] = kubectl_dir + os.pathsep + env.get("PATH", "")
    except UserError:
        pass  # kustomize() then fails with Tilt's own message about kubectl
    return env


def pick_port(preferred: int = DEFAULT_PORT) -> int:
    """Tilt's usual port when free (its UI stays where users expect it), else any free one."""
    return free_port() if port_in_use(preferred) else preferred


# --------------------------------------------------------------------------------- preparations

def prepare(settings, progress=print):
    """Check Tilt, the cluster (safety rule) and the base image before minutes of building."""
    tilt = tilt_binary()
    cluster = connect(settings)
    if not TILTFILE.exists():
        raise UserError(f"no Tiltfile at {TILTFILE}", "run from a checkout of the project")
    if settings.base_image == images.LOCAL_BASE_SETTING:
        images.ensure_local_base(progress=progress)
    return tilt, cluster


def tilt_objects(settings) -> list[dict]:
    """What the Tiltfile deploys: k8s/dev (the full stage + the dev component) and the loader."""
    return [*render.render_stage(settings, "full", images={}, overlay=["dev"]), render.loader_pod(settings, ref="")]


# ------------------------------------------------------------------------------------- tilt ci

def run_ci(settings, timeout: float, progress=print) -> float:
    """`tilt ci` (build, deploy, wait for every resource, run the smoke checks), then `tilt down`
    and wait until its objects are gone. Returns the seconds `tilt ci` took; raises on failure."""
    tilt, cluster = prepare(settings, progress)
    port = pick_port()
    env = tilt_env(cluster.kubeconfig, port)
    args = tiltfile_args(settings)
    progress(f"== tilt ci ({tilt_version(tilt)}; context {cluster.context}, namespace "
             f"{cluster.namespace}; UI http://localhost:{port}/ while it runs)")
    start = time.monotonic()
    ci = None
    try:
        ci = subprocess.run(tilt_argv(tilt, "ci", cluster, port, ["--timeout", f"{int(timeout)}s"], args),
                            cwd=ROOT, env=env)
    finally:  # also after Ctrl-C: tilt down, then wait (and delete leftovers) like `invoke clean`
        took = time.monotonic() - start
        verdict = "interrupted" if ci is None else "passed" if ci.returncode == 0 else f"FAILED (exit {ci.returncode})"
        progress(f"== tilt ci: {verdict} in {took:.0f}s; tilt down")
        down = tilt_down(tilt, cluster, settings, args, env, out=progress)
    if ci.returncode != 0:
        raise UserError(f"tilt ci failed (exit {ci.returncode}) after {took:.0f}s",
                        "the resource logs above say why; `tilt up` shows them in the UI",
                        code=ci.returncode)
    if down.returncode != 0:
        raise UserError(f"tilt down failed (exit {down.returncode})",
                        "`invoke clean` removes what is left", code=down.returncode)
    return took


def tilt_down(tilt: str, cluster, settings, args: list[str], env: dict, out=print,
              capture: bool = False) -> subprocess.CompletedProcess:
    """`tilt down`, then wait (and delete leftovers) like `invoke clean` for what the Tiltfile deploys."""
    down = subprocess.run(tilt_argv(tilt, "down", cluster, tilt_args=args), cwd=ROOT, env=env,
                          capture_output=capture)
    ops.clean(cluster, settings, tilt_objects(settings), out=out)
    return down


# ---------------------------------------------------------------------------------- tilt-smoke

def smoke_in_tilt_loader(settings, progress=print) -> None:
    """The seed's smoke checks (stage full) through the loader pod Tilt runs."""
    cluster = connect(settings)
    pod = cluster.get("v1", "Pod", loader.LOADER_NAME)
    if dig(pod, "status.phase") != "Running":
        raise UserError("the loader pod is not running",
                        "start the dev loop with `tilt up` (it runs the loader pod), or use `invoke smoke`")
    ops.smoke(cluster, settings, "full", start_loader=False, out=progress)
