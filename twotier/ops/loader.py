"""The `loader` pod: the seed's alpine probe box, built from the project's loader image.

Its manifest is k8s/loader (rendered by twotier.ops.render.loader_pod: restricted
securityContext, non-root, read-only root filesystem, the project's label). ``ensure_loader``
creates it (or reuses a running one with the same image) and waits until it runs;
``exec_in_loader`` runs a command in it without a terminal and returns (rc, output);
``shell_argv`` is the `kubectl exec -it loader -- sh` that `invoke loader-shell` hands the
terminal to (kubectl handles raw mode and window resizing; the Python client has no TTY helper).
"""
from __future__ import annotations

import copy
import sys
import time
from typing import TYPE_CHECKING

from twotier import shape
from twotier.errors import UserError
from twotier.images import kindload
from twotier.kube.client import PROJECT_LABEL, owned
from twotier.kube.objects import dig, pod_ready, terminating
from twotier.kube.rollout import event_lines, pod_problem, pod_summary
from twotier.ops import render
from twotier.poll import Timeout
from twotier.poll import poll as wait

if TYPE_CHECKING:  # annotations only: the settings are handed in
    from twotier.settings import Settings

LOADER_NAME = shape.load().loader.pod


def start_loader(cluster, settings: Settings, ref: str | None = None, timeout: float | None = None) -> dict:
    """The loader pod, ready: a running one of the project's is reused as it is when no image is
    asked for (REF None); otherwise it is created (or replaced) from REF, default `invoke build`'s
    tag, which must be in the registry."""
    timeout = settings.timeouts.rollout if timeout is None else timeout
    if ref is None:
        live = cluster.get("v1", "Pod", LOADER_NAME)
        if live is not None and owned(live) and pod_ready(live):
            print(f"pod/{LOADER_NAME} reused ({_image_of(live)})")
            return live
    manifest = render.loader_pod(settings, ref)
    where, missing = kindload.missing_images(cluster, [manifest])
    if missing:
        raise UserError(f"the loader image is not in {where}: {', '.join(missing)}",
                        "build and push it: `invoke push` (or `invoke up`)")
    return ensure_loader(cluster, manifest, timeout=timeout)


def _image_of(pod: dict) -> str:
    return dig(pod, "spec.containers", [{}])[0].get("image", "")


def ensure_loader(cluster, manifest: dict, timeout: float, out=print, poll: float = 1.0,
                  clock=time.monotonic, sleep=time.sleep) -> dict:
    """Create the loader pod from its manifest (or reuse a running one from the same image);
    wait until it is ready."""
    start = clock()
    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["namespace"] = cluster.namespace
    image = _image_of(manifest)
    live = cluster.get("v1", "Pod", LOADER_NAME)
    if live is not None:
        reusable = (_image_of(live) == image and not terminating(live)
                    and dig(live, "status.phase") in ("Pending", "Running"))
        if not owned(live):
            raise UserError(
                f"a pod named {LOADER_NAME!r} exists but is not the project's (it lacks the label "
                f"{PROJECT_LABEL[0]}={PROJECT_LABEL[1]})",
                f"delete it yourself (`kubectl delete pod {LOADER_NAME}`) and run the task again")
        if reusable:
            if pod_ready(live):
                out(f"pod/{LOADER_NAME} reused ({image})")
                return live
        else:
            why = "a different image" if _image_of(live) != image else dig(live, "status.phase")
            out(f"pod/{LOADER_NAME} replaced ({why})")
            cluster.delete("v1", "Pod", LOADER_NAME, grace_period=1)
            _wait_deleted(cluster, timeout, clock, sleep, poll, out)
            live = None
    if live is None:
        cluster.create(manifest)
        out(f"pod/{LOADER_NAME} created ({image})")
    seen = {"line": "", "pod": None}

    def running() -> dict | None:
        pod = seen["pod"] = cluster.get("v1", "Pod", LOADER_NAME)
        elapsed = clock() - start
        if pod is None:
            return None
        if pod_ready(pod):
            out(f"[{elapsed:4.0f}s] pod/{LOADER_NAME} running")
            return pod
        problem = pod_problem(pod)
        if problem:
            raise UserError(f"the loader pod cannot start: {problem[1]} {problem[2]}".strip() + "\n"
                            + _describe(cluster, pod),
                            "build and push the loader image (`invoke build push`) and check "
                            "twotier.registry is one the cluster pulls from")
        line = pod_summary(pod)
        if line != seen["line"]:
            out(f"[{elapsed:4.0f}s] {line}")
            seen["line"] = line
        return None

    try:
        return wait(running, timeout=max(0.0, timeout - (clock() - start)), interval=poll,
                    what="the loader pod", clock=clock, sleep=sleep)
    except Timeout:
        raise UserError(f"the loader pod is not running after {timeout:.0f}s\n"
                        + (_describe(cluster, seen["pod"]) if seen["pod"] else "(pod not found)"),
                        "the pod status and events above say why") from None


def _describe(cluster, pod) -> str:
    lines = [pod_summary(pod)] + ["  event: " + e for e in
                                  event_lines(cluster.events_for("Pod", LOADER_NAME))]
    return "\n".join(lines)


def _wait_deleted(cluster, timeout, clock, sleep, poll, out):
    wait(lambda: cluster.get("v1", "Pod", LOADER_NAME) is None, timeout=timeout, interval=poll,
         what="the old loader pod going away", hint="check it with `kubectl describe pod loader`",
         clock=clock, sleep=sleep)


# --------------------------------------------------------------------------------------------
# Running commands in it
# --------------------------------------------------------------------------------------------
def exec_in_loader(cluster, cmd: list[str], timeout: float = 30) -> tuple[int, str]:
    """Run ``cmd`` in the loader pod (no TTY) and return (exit code, stdout+stderr)."""
    from kubernetes.stream import stream

    def run():
        resp = stream(cluster.core.connect_get_namespaced_pod_exec, LOADER_NAME, cluster.namespace,
                      command=list(cmd), stdin=False, stdout=True, stderr=True, tty=False,
                      _preload_content=False)
        try:
            resp.run_forever(timeout=timeout)
            if resp.is_open():
                return 124, resp.read_all() + f"\n(timed out after {timeout}s)"
            code = _returncode(resp)  # before read_all(), which drops the status channel
            return code, resp.read_all()
        finally:
            resp.close()

    return cluster._call(run, f"exec {' '.join(cmd)} in pod {LOADER_NAME}")


def _returncode(resp) -> int:
    """The client's own reading of the exec's status channel; 1 for a failure without an exit code."""
    try:
        return resp.returncode
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):  # e.g. "container not found"
        return 1


def require_tty(stdin=None, stdout=None) -> None:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    if not (_isatty(stdin) and _isatty(stdout)):
        raise UserError(
            "loader-shell needs an interactive terminal, and this one has none",
            "run it from a terminal; for scripts use `invoke smoke`, or "
            "`kubectl exec loader -- <command>` without -it")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def shell_argv(kubectl: str, cluster, shell: str = "sh") -> list[str]:
    return [kubectl, *cluster.kubectl_args(), "exec", "-it", LOADER_NAME, "--", shell]


def hand_over(argv: list[str], env: dict | None = None) -> int:
    """Give the terminal to ``argv`` (kubectl exec -it) and return its exit code.

    kubectl puts the terminal in raw mode, so Ctrl-C goes to the remote shell; we ignore SIGINT
    meanwhile so a stray one doesn't kill us before kubectl restores the terminal."""
    import os
    import signal
    import subprocess

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.call(argv, env={**os.environ, **(env or {})})
    finally:
        signal.signal(signal.SIGINT, previous)
