"""Running Tilt for the project: `invoke tilt.ci`, `invoke tilt.smoke`, and `tilt up` sessions for
the end-to-end test and the live-update benchmark.

Which Tilt: the pinned build (`localcluster/versions.env` TILT_VERSION, made by
`invoke cluster.build --component tilt` into /var/cache/twotier/bin/tilt-<version>/tilt), else
`tilt` on PATH (users who already have Tilt use theirs).

Which cluster: the same one every other task uses (`twotier.kubeconfig` / `twotier.context`, the
local cluster when it is up, the safety rule applied). The Tiltfile gets the registry and the base
image from the settings as Tiltfile arguments (`tilt up -- --registry=... --base-image=...`).

`tilt down` and the PersistentVolume: the Tiltfile declares local-pv and sto-pvc, so `tilt down`
deletes both, as `invoke clean` does; the PV's reclaim policy is Retain and it is a hostPath, so the
stored items stay on the node's disk (/tmp/data/kubetestpv) and the next `tilt up` or `invoke deploy`
sees them again. `tilt down` only asks for the deletions; `invoke tilt.ci` then waits, with
`invoke clean`'s machinery and order, until those objects are really gone.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from twotier.errors import UserError
from twotier.ops.cluster import connect
from twotier.shape import BUILD, ROOT

TILTFILE = ROOT / "Tiltfile"
DEFAULT_PORT = 10350
#: Tilt resource names the Tiltfile defines (k8s_resource new_name / local_resource)
SERVICE_RESOURCES = ("storage", "app")


# ------------------------------------------------------------------------------------ the binary

def pinned_tilt() -> Path:
    """Where `invoke cluster.build --component tilt` puts the pinned Tilt."""
    from localcluster import layout

    return layout.binary("tilt")


def tilt_binary() -> str:
    """The pinned build if it is complete, else `tilt` on PATH, else a clear error."""
    pinned = pinned_tilt()
    if (pinned.parent / ".complete").exists() and os.access(pinned, os.X_OK):
        return str(pinned)
    found = shutil.which("tilt")
    if found:
        return found
    raise UserError(
        "Tilt is not installed: neither the project's build nor `tilt` on PATH was found",
        f"`invoke cluster.build --component tilt` builds the pinned Tilt from source into {pinned.parent} "
        "(cold: about 10 minutes on 2 cores; needs Go, gcc and Node.js), or install Tilt yourself")


def tilt_version(tilt: str) -> str:
    proc = subprocess.run([tilt, "version"], capture_output=True, text=True, timeout=30)
    return proc.stdout.strip() or proc.stderr.strip()


# ------------------------------------------------------------------------------- the command line

def tiltfile_args(settings) -> list[str]:
    """Tiltfile arguments (after `--`) that carry the project's settings into the Tiltfile."""
    from twotier.images import build as images

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
    env = dict(os.environ)
    env["KUBECONFIG"] = kubeconfig
    if port is not None:
        env["TILT_PORT"] = str(port)  # `tilt get/wait/trigger` find this session's API server
    from twotier.ops.cluster import kubectl

    try:
        kubectl_dir = str(Path(kubectl()).parent)
        env["PATH"] = kubectl_dir + os.pathsep + env.get("PATH", "")
    except UserError:
        pass  # kustomize() then fails with Tilt's own message about kubectl
    return env


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pick_port(preferred: int = DEFAULT_PORT) -> int:
    """Tilt's usual port when free (its UI stays where users expect it), else any free one."""
    return preferred if port_free(preferred) else free_port()


# --------------------------------------------------------------------------------- preparations

def prepare(settings, progress=print):
    """Check Tilt, the cluster (safety rule) and the base image before minutes of building."""
    from twotier.images import build as images

    tilt = tilt_binary()
    cluster = connect(settings)
    if not TILTFILE.exists():
        raise UserError(f"no Tiltfile at {TILTFILE}", "run from a checkout of the project")
    if settings.base_image == images.LOCAL_BASE_SETTING:
        images.ensure_local_base(progress=progress)
    return tilt, cluster


def tilt_targets(settings, namespace: str):
    """What the Tiltfile deploys (k8s/dev = the full stage + the dev component, and the loader)
    as `invoke clean` targets."""
    from twotier.kube.cleanup import targets_from
    from twotier.ops import render as manifests

    objs = manifests.render_stage(settings, "full", images={}, overlay=["dev"])
    objs.append(manifests.loader_pod(settings, ref=""))
    return targets_from(objs, namespace)


# ------------------------------------------------------------------------------------- tilt ci

def run_ci(settings, timeout: float, progress=print) -> float:
    """`tilt ci` (build, deploy, wait for every resource, run the smoke checks), then `tilt down`
    and wait until its objects are gone. Returns the seconds `tilt ci` took; raises on failure."""
    from twotier.kube import cleanup

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
        down = subprocess.run(tilt_argv(tilt, "down", cluster, tilt_args=args), cwd=ROOT, env=env)
        cleanup.clean(cluster, tilt_targets(settings, cluster.namespace),
                      timeout=settings.timeouts.delete, out=progress)
    if ci.returncode != 0:
        raise UserError(f"tilt ci failed (exit {ci.returncode}) after {took:.0f}s",
                        "the resource logs above say why; `tilt up` shows them in the UI",
                        code=ci.returncode)
    if down.returncode != 0:
        raise UserError(f"tilt down failed (exit {down.returncode})",
                        "`invoke clean` removes what is left", code=down.returncode)
    return took


# ---------------------------------------------------------------------------------- tilt-smoke

def smoke_in_tilt_loader(settings, progress=print) -> None:
    """The seed's smoke checks (stage full) through the loader pod Tilt runs."""
    from twotier.ops import (
        loader,
        smoke,
    )

    cluster = connect(settings)
    pod = cluster.get("v1", "Pod", loader.LOADER_NAME)
    if pod is None or (pod.get("status") or {}).get("phase") != "Running":
        raise UserError("the loader pod is not running",
                        "start the dev loop with `tilt up` (it runs the loader pod), or use `invoke smoke`")
    from twotier.kube.portforward import access_mode

    smoke.run_smoke(cluster, "full", lambda argv: loader.exec_in_loader(cluster, argv), out=progress,
                    access=access_mode(settings))


# ------------------------------------------------------------------- tilt up, for tests and bench

class TiltSession:
    """`tilt up` in the background on its own port, with helpers to read its state.

    Used as a context manager: ``with TiltSession(settings) as tilt: tilt.wait_ready()``; on exit
    Tilt is stopped and, unless ``keep=True``, `tilt down` removes what it deployed."""

    def __init__(self, settings, log_path: Path | None = None, keep: bool = False, progress=print,
                 extra_args: list[str] = ()):
        self.settings = settings
        self.keep = keep
        self.progress = progress
        self.tilt, self.cluster = prepare(settings, progress)
        self.port = free_port()
        self.env = tilt_env(self.cluster.kubeconfig, self.port)
        self.args = tiltfile_args(settings) + list(extra_args)  # e.g. --debug=app, --access=port-forward
        self.log_path = log_path or BUILD / "logs" / f"tilt-up-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    # -- lifecycle
    def __enter__(self) -> TiltSession:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        argv = tilt_argv(self.tilt, "up", self.cluster, self.port,
                         ["--stream=false", "--legacy=false"], self.args)
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_api()
        except BaseException:
            self.__exit__(None, None, None)  # never leave a tilt process or its objects behind
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.proc and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._log.close()
        if not self.keep:
            self.down()

    def down(self) -> None:
        from twotier.kube import cleanup

        subprocess.run(tilt_argv(self.tilt, "down", self.cluster, tilt_args=self.args),
                       cwd=ROOT, env=self.env, capture_output=True)
        cleanup.clean(self.cluster, tilt_targets(self.settings, self.cluster.namespace),
                      timeout=self.settings.timeouts.delete, out=lambda _line: None)

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise UserError(f"tilt up exited with {self.proc.returncode}:\n{self.log_tail()}",
                            f"full log: {self.log_path}")

    def _wait_api(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                self.get("session", "Tiltfile")
                return
            except UserError:
                time.sleep(0.5)
        raise UserError(f"tilt up did not answer on port {self.port} within {timeout:.0f}s:\n"
                        f"{self.log_tail()}", f"full log: {self.log_path}")

    # -- state, through Tilt's own API server (`tilt get ... -o json`)
    def get(self, kind: str, name: str | None = None) -> dict:
        argv = [self.tilt, "get", kind, *([name] if name else []), "-o", "json", "--port", str(self.port)]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=30)
        if proc.returncode != 0:
            raise UserError(f"`tilt get {kind} {name or ''}` failed: {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def set_args(self, args: list[str]) -> None:
        """New Tiltfile arguments for the running session (`tilt args`): Tilt re-runs the Tiltfile."""
        subprocess.run([self.tilt, "args", "--port", str(self.port), "--", *args],
                       check=True, capture_output=True, env=self.env, timeout=30)
        self.args = list(args)

    def trigger(self, resource: str) -> None:
        subprocess.run([self.tilt, "trigger", resource, "--port", str(self.port)],
                       check=True, capture_output=True, env=self.env, timeout=30)

    def resource_status(self, name: str) -> dict:
        return self.get("uiresource", name).get("status") or {}

    def image_refs(self) -> dict[str, str]:
        """{image name: the ref Tilt deployed} (a new image build changes the ref's tag)."""
        refs = {}
        for item in self.get("imagemap").get("items") or []:
            status = item.get("status") or {}
            refs[item["metadata"]["name"]] = status.get("image", "")
        return refs

    def wait_ready(self, resources=SERVICE_RESOURCES, timeout: float = 600, poll: float = 2.0) -> float:
        """Wait until RESOURCES are built, deployed and ready; raise on a build error or timeout."""
        start = time.monotonic()
        last = ""
        while True:
            self._check_alive()
            states = []
            for name in resources:
                try:
                    st = self.resource_status(name)
                except UserError:
                    st = {}
                history = st.get("buildHistory") or []
                if history and history[0].get("error") and not st.get("currentBuild", {}).get("startTime"):
                    raise UserError(f"Tilt resource {name!r} failed to build: {history[0]['error']}",
                                    f"tilt log: {self.log_path}")
                states.append((name, st.get("updateStatus", "?"), st.get("runtimeStatus", "?")))
            line = ", ".join(f"{n}: update {u}, runtime {r}" for n, u, r in states)
            if all(u == "ok" and r == "ok" for _n, u, r in states):
                return time.monotonic() - start
            elapsed = time.monotonic() - start
            if line != last:
                self.progress(f"[{elapsed:4.0f}s] {line}")
                last = line
            if elapsed > timeout:
                raise UserError(f"Tilt resources not ready after {timeout:.0f}s: {line}\n{self.log_tail()}",
                                f"tilt log: {self.log_path}")
            time.sleep(poll)


# ------------------------------------------------------------------------------ HTTP through Services

def node_url(cluster, node_port: int, path: str) -> str:
    """URL of a NodePort Service on the node (the seed's `curl <node IP>:31001/...`)."""
    ips = cluster.node_ips()
    if not ips:
        raise UserError("no node has an InternalIP", "check `kubectl get nodes -o wide`")
    return f"http://{ips[0]}:{node_port}{path}"


def get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


