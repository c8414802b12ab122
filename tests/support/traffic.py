"""What several e2e tests do to a cluster from the host: an image of one Python file pushed to the
local registry, and steady load whose every answer is kept (for "0 failed requests" proofs)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from localcluster import layout as L
from twotier.images import build as images
from twotier.poll import poll


def http(url: str, method: str = "GET", timeout: float = 10) -> tuple[int, object]:
    """(status, JSON body) of one request from the host; a non-JSON error body comes back as text."""
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return err.code, json.loads(body or b"null")
        except ValueError:
            return err.code, body.decode(errors="replace")


def python_image(name: str, source: str, user: str = "") -> str:
    """SOURCE as /probe.py on the local base image, pushed as localhost:5000/NAME:<content tag>."""
    base = images.ensure_local_base()
    ref = f"{L.REGISTRY_HOST}/{name}:{hashlib.sha256((source + base + user).encode()).hexdigest()[:12]}"
    with tempfile.TemporaryDirectory() as ctx:
        Path(ctx, "probe.py").write_text(source)
        Path(ctx, "Dockerfile").write_text(f"FROM {base}\nCOPY probe.py /probe.py\n" + (f"USER {user}\n" if user else ""))
        subprocess.run(["docker", "build", "-q", "-t", ref, ctx], check=True, capture_output=True)
    subprocess.run(["docker", "push", "-q", ref], check=True, capture_output=True)
    return ref


def load(url_for, stop: threading.Event, results: list, limit: int = 20000, timeout: float = 15) -> None:
    """Requests one after the other until STOP (LIMIT bounds it): (start, seconds, status, body or error)."""
    i = 0
    while not stop.is_set() and i < limit:
        t0 = time.monotonic()
        try:
            status, body = http(url_for(i), timeout=timeout)
        except Exception as err:
            status, body = 0, repr(err)
        results.append((t0, time.monotonic() - t0, status, body))
        i += 1


def more_results(results: list, more: int, after: float | None = None, timeout: float = 180) -> None:
    """Until the load has made MORE further requests (started after AFTER, if given)."""
    def counted() -> int:
        return len(results) if after is None else sum(1 for r in results if r[0] >= after)

    target = counted() + more if after is None else more
    poll(lambda: counted() >= target, timeout=timeout, what=f"waiting for {more} more requests from the load",
         interval=0.1)


@contextmanager
def steady_load(url_for, before: int = 20, after: int = 20):
    """Load through URL_FOR(i) while the block runs: BEFORE answers before it starts, AFTER more once
    it is done; yields the results list."""
    results: list = []
    stop = threading.Event()
    worker = threading.Thread(target=load, args=(url_for, stop, results), daemon=True)
    worker.start()
    try:
        more_results(results, before)
        yield results
        more_results(results, after)
    finally:
        stop.set()
        worker.join(timeout=30)


def failed_answers(results: list) -> list:
    """The answers of a createlist/clear load that are not a 200 with an empty faileds."""
    return [r for r in results if r[2] != 200 or not isinstance(r[3], dict) or r[3].get("faileds")]


def restart_under_load(kubectl, url_for, deployments=("sto-dep", "api-dep"), timeout: int = 180) -> list:
    """`kubectl rollout restart` of DEPLOYMENTS while URL_FOR(i) is loaded, until each has rolled
    out (KUBECTL runs kubectl on the cluster under test); the load's results."""
    with steady_load(url_for) as results:
        kubectl("rollout", "restart", *(f"deployment/{d}" for d in deployments))
        for d in deployments:
            kubectl("rollout", "status", f"deployment/{d}", f"--timeout={timeout}s", timeout=timeout + 20)
    return results
