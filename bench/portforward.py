"""Port-forward access through a rolling restart of both tiers: the requests that fail through
`kubectl port-forward svc/...` (it picks one pod when it starts) and through twotier's forward
(twotier.kube.portforward: each connection goes to a ready pod of the Service).

`invoke bench --only portforward` deploys the full stage (`invoke up`) and, for each kind of
forward, opens one to every full-stage Service on 127.0.0.1, sends steady load through them (GET
/items to in-svc, createlist/clear to out-svc, one worker each, a new connection per request),
restarts every full-stage Deployment (`kubectl rollout restart`), waits for the rollouts and for
the old pods to be gone, keeps the load on for a few seconds more, and counts the failed requests;
then sends one more request through each forward. ``roll_under_load`` is also the e2e test's measurement.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

from twotier import shape, tables
from twotier.errors import UserError
from twotier.ops.load import ITEMS, one_request
from twotier.poll import poll

PACE = 0.05            # seconds between one worker's requests (a dead forward fails at once)
AFTER = 5.0            # seconds of load after the rollouts
ROLLOUT_TIMEOUT = 240  # seconds per `kubectl rollout status`
MAX_REQUESTS = 50_000  # per worker: a bound on the load whatever happens
REQUEST_TIMEOUT = 10.0
PATHS = {"storage": ("/items",), "app": (f"/createlist/{ITEMS}", "/clear")}


@dataclass
class Run:
    requests: int = 0
    failures: list[str] = field(default_factory=list)  # "<path>: <error>", in order
    answering_after: dict[str, bool] = field(default_factory=dict)  # tier -> its forward answered
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)


def full_tiers() -> list[shape.Tier]:
    return list(shape.load().stage("full").tiers)


def tier_pods(cluster) -> set[str]:
    """The names of the full-stage tiers' pods."""
    return {pod["metadata"]["name"] for t in full_tiers()
            for pod in cluster.list("v1", "Pod", label_selector=",".join(f"{k}={v}" for k, v in t.selector.items()))}


def _worker(port: int, paths: tuple[str, ...], run: Run, lock: threading.Lock, stop: threading.Event) -> None:
    for i in range(MAX_REQUESTS):
        if stop.is_set():
            return
        path = paths[i % len(paths)]
        ok, error = one_request("127.0.0.1", port, path, timeout=REQUEST_TIMEOUT)
        with lock:
            run.requests += 1
            if not ok:
                run.failures.append(f"{path}: {error}")
        stop.wait(PACE)


def kubectl_run(cluster, *args: str, timeout: float = ROLLOUT_TIMEOUT + 30) -> None:
    from twotier.ops.cluster import kubectl

    res = subprocess.run([kubectl(), *cluster.kubectl_args(), *args], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **cluster.kubectl_env()})
    if res.returncode != 0:
        raise UserError(f"`kubectl {' '.join(args)}` failed: {(res.stderr or res.stdout).strip()[-500:]}")


def roll_under_load(cluster, ports: dict[str, int], progress=print) -> Run:
    """Steady load through 127.0.0.1:PORTS[tier] for every full-stage tier while all their
    Deployments roll (`kubectl rollout restart`, then `rollout status`), until the old pods are
    gone and AFTER seconds more; then one more request per forward."""
    tiers = full_tiers()
    run, lock, stop = Run(), threading.Lock(), threading.Event()
    workers = [threading.Thread(target=_worker, args=(ports[t.name], PATHS[t.name], run, lock, stop), daemon=True)
               for t in tiers]
    start, old = time.monotonic(), tier_pods(cluster)
    for w in workers:
        w.start()
    try:
        poll(lambda: run.requests >= 10 * len(tiers), timeout=60, interval=0.1, what="the load under way")
        deployments = [f"deployment/{t.deployment}" for t in tiers]
        progress(f"  kubectl rollout restart {' '.join(deployments)}")
        kubectl_run(cluster, "rollout", "restart", *deployments)
        for dep in deployments:
            kubectl_run(cluster, "rollout", "status", dep, f"--timeout={ROLLOUT_TIMEOUT}s")
        progress(f"  rolled out after {time.monotonic() - start:.0f} s, {run.requests} requests, {run.failed} failed")
        # an old pod still in its preStop pause still serves a forward pinned to it: wait until they are gone
        poll(lambda: not (old & tier_pods(cluster)), timeout=ROLLOUT_TIMEOUT, interval=0.5,
             what="the pods from before the rollout gone")
        stop.wait(AFTER)
    finally:
        stop.set()
        for w in workers:
            w.join(REQUEST_TIMEOUT + 5)
    run.seconds = time.monotonic() - start
    # the last path: the app's /clear leaves the volume as the load found it
    run.answering_after = {t.name: one_request("127.0.0.1", ports[t.name], PATHS[t.name][-1])[0] for t in tiers}
    return run


@contextlib.contextmanager
def kubectl_forwards(cluster, progress=print):
    """`kubectl port-forward svc/SERVICE LOCAL:PORT` per full-stage tier: {tier: local port}."""
    from twotier.ops.cluster import kubectl
    from twotier.ports import free_port
    from twotier.proc import Background

    with contextlib.ExitStack() as stack:
        ports = {}
        for t in full_tiers():
            local = free_port()
            argv = [kubectl(), *cluster.kubectl_args(), "port-forward", f"svc/{t.service}", f"{local}:{t.port}",
                    "--address", "127.0.0.1"]
            proc = stack.enter_context(Background(argv, env={**os.environ, **cluster.kubectl_env()},
                                                  label=f"kubectl-port-forward-{t.service}"))

            def started(local=local, proc=proc) -> bool:
                if not proc.alive():
                    raise UserError(f"kubectl port-forward exited: {proc.tail(5)}")
                return _listening(local)

            poll(started, timeout=30, interval=0.1, what=f"kubectl port-forward svc/{t.service} listening")
            ports[t.name] = local
        yield ports


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def twotier_forwards(cluster, progress=print):
    from twotier.kube.portforward import forwards

    with forwards(cluster, {t.service: t.port for t in full_tiers()}) as fwd:
        yield {t.name: fwd[t.service].local_port for t in full_tiers()}


KINDS = (("`kubectl port-forward svc/...` (one pod, chosen at start)", kubectl_forwards),
         ("`twotier.kube.portforward` (a ready pod of the Service per connection)", twotier_forwards))
SHORT = {KINDS[0][0]: "kubectl's", KINDS[1][0]: "twotier's"}


def measure(settings, progress=print) -> list[tuple[str, Run]]:
    from bench import invoke_task
    from twotier.ops.cluster import connect

    progress("invoke up (the full stage) ...")
    invoke_task("up", "--stage", "full")
    cluster = connect(settings)
    rows = []
    for label, opener in KINDS:
        progress(f"{label} ...")
        with opener(cluster, progress) as ports:
            rows.append((label, roll_under_load(cluster, ports, progress)))
    return rows


def format_table(rows: list[tuple[str, Run]]) -> str:
    body = [(label, str(run.requests), str(run.failed),
             ", ".join(f"{tier} {'yes' if ok else 'no'}" for tier, ok in run.answering_after.items()),
             f"{run.seconds:.0f} s") for label, run in rows]
    first = [f"through {SHORT.get(label, label)}, {run.failures[0][:100]}" for label, run in rows if run.failures]
    return (tables.markdown(["forward to in-svc and out-svc", "requests", "failed", "answers after", "took"], body)
            + "\n\nLoad: one worker per Service, a new connection per request, at most 20 per second each; "
              "both Deployments restarted at once (`kubectl rollout restart`), load until 5 s after the "
              "rollouts ended and the old pods were gone." + ("\n\nFirst failure: " + "; ".join(first) if first else ""))


if __name__ == "__main__":
    from twotier.settings import load

    print(format_table(measure(load())))
