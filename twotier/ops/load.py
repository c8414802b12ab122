"""`invoke load`: createlist/clear through the project's out-svc, with a live table.

Workers (``--concurrency``, 1-32) repeat ``GET /createlist/<ITEMS>`` then ``GET /clear`` on
out-svc's NodePort for ``--seconds`` (1-1800), each request on a new connection: kube-proxy
balances connections, not requests, so new connections are what lets a new replica take its share
as soon as it is in the Service's endpoints. A request fails when it does not answer 200 within
REQUEST_TIMEOUT or its body lists ``faileds``. Every ``every`` seconds a row shows the interval's
requests, failures, p50/p99 latency and api-dep's replicas (ready/desired), so a user watches the
tier scale under the `autoscale` component.

Only the project's own Service is a target: out-svc in the configured namespace, carrying the
project's label, reached on its NodePort at the node's address.
"""
from __future__ import annotations

import http.client
import json
import math
import threading
import time
from dataclasses import dataclass, field

from twotier.errors import UserError
from twotier.kube.objects import dig

ITEMS = 10                 # items per createlist: a small batch, so each request is short
MAX_CONCURRENCY = 32
MAX_SECONDS = 1800
REQUEST_TIMEOUT = 10.0
TARGET_SERVICE, TARGET_DEPLOYMENT = "out-svc", "api-dep"
HEADERS = ("time", "requests", "failures", "p50 ms", "p99 ms", "api-dep ready/desired")
WIDTHS = (6, 9, 9, 8, 8, 22)


def check_bounds(seconds, concurrency, service: str = TARGET_SERVICE) -> tuple[float, int]:
    """Validated (seconds, concurrency) for the project's out-svc, else a one-line UserError."""
    check_service(service)
    try:
        seconds, concurrency = float(seconds), int(concurrency)
    except (TypeError, ValueError):
        raise UserError(f"--seconds and --concurrency must be numbers, got {seconds!r} and {concurrency!r}",
                        "e.g. invoke load --seconds 60 --concurrency 8") from None
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise UserError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}, not {concurrency}",
                        "e.g. --concurrency 8 (this machine has few cores; more only queues)")
    if not (1 <= seconds <= MAX_SECONDS) or math.isnan(seconds):
        raise UserError(f"--seconds must be between 1 and {MAX_SECONDS}, not {seconds:g}", "e.g. --seconds 60")
    return seconds, concurrency


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass
class Sample:
    start: float      # monotonic seconds since the run began
    latency: float    # seconds
    ok: bool
    path: str
    error: str = ""


@dataclass
class Stats:
    """Every request of a run (thread-safe appends), summarised per window."""
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sample: Sample) -> None:
        with self.lock:
            self.samples.append(sample)

    def window(self, since: float, until: float | None = None) -> list[Sample]:
        with self.lock:
            return [s for s in self.samples if s.start >= since and (until is None or s.start < until)]


def summary(samples: list[Sample]) -> dict:
    lat = [s.latency * 1000 for s in samples]
    return {"requests": len(samples), "failures": sum(not s.ok for s in samples),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}


def format_row(values) -> str:
    return "  ".join(str(v).rjust(w) for v, w in zip(values, WIDTHS))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def one_request(host: str, port: int, path: str, timeout: float = REQUEST_TIMEOUT) -> tuple[bool, str]:
    """GET path on a new connection; (ok, error text)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return False, f"HTTP {resp.status}: {body[:120]!r}"
        faileds = json.loads(body).get("faileds")
        return (False, f"faileds {faileds[:5]}") if faileds else (True, "")
    except (OSError, http.client.HTTPException, ValueError) as err:
        return False, f"{type(err).__name__}: {err}"
    finally:
        conn.close()


def worker(host: str, port: int, stats: Stats, t0: float, stop: threading.Event, pause: float = 0.0) -> None:
    paths = (f"/createlist/{ITEMS}", "/clear")
    i = 0
    while not stop.is_set():
        path = paths[i % 2]
        i += 1
        start = time.monotonic()
        ok, error = one_request(host, port, path)
        stats.add(Sample(start - t0, time.monotonic() - start, ok, path, error))
        if pause:
            stop.wait(pause)


class Load:
    """Workers in threads against host:port until stop(); ``stats`` holds every request."""

    def __init__(self, host: str, port: int, concurrency: int, pause: float = 0.0):
        self.host, self.port, self.concurrency, self.pause = host, port, concurrency, pause
        self.stats = Stats()
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        self.t0 = time.monotonic()
        for _ in range(self.concurrency):
            t = threading.Thread(target=worker, args=(self.host, self.port, self.stats, self.t0, self._stop,
                                                      self.pause), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(REQUEST_TIMEOUT + 5)


# ------------------------------------------------------------------------------- the project's target

def check_service(service: str) -> None:
    if service != TARGET_SERVICE:
        raise UserError(f"invoke load drives the project's {TARGET_SERVICE} only, not {service!r}",
                        f"drop --service: createlist/clear are served by {TARGET_SERVICE} (the full stage)")


def target(cluster, service: str = TARGET_SERVICE) -> tuple[str, int]:
    """(node address, NodePort) of the project's out-svc; anything else is refused in one line."""
    from twotier.kube.client import owned

    check_service(service)
    svc = cluster.get("v1", "Service", service)
    if svc is None or not owned(svc):
        raise UserError(f"no project Service {service} in namespace {cluster.namespace!r}"
                        + (" (a Service of that name exists but is not the project's)" if svc else ""),
                        "deploy the full stage first: `invoke up --stage full`")
    ports = [p for p in dig(svc, "spec.ports", []) if p.get("nodePort")]
    if not ports:
        raise UserError(f"Service {service} has no NodePort, so this host cannot reach it",
                        "deploy the stage as the tutorial has it (out-svc is a NodePort Service)")
    ips = cluster.node_ips()
    if not ips:
        raise UserError("the cluster's nodes report no address", "check `kubectl get nodes -o wide`")
    return ips[0], int(ports[0]["nodePort"])


def replicas(cluster, deployment: str = TARGET_DEPLOYMENT) -> tuple[int, int] | None:
    """(ready, desired) replicas of the deployment, None when it cannot be read."""
    try:
        dep = cluster.get("apps/v1", "Deployment", deployment)
    except UserError:
        return None
    if dep is None:
        return None
    return dig(dep, "status.readyReplicas", 0), dig(dep, "spec.replicas", 1)


def run(cluster, seconds, concurrency, service: str = TARGET_SERVICE, every: float = 5.0, out=print) -> dict:
    """`invoke load`: the table as it goes, then the totals; returns the totals (failures counted)."""
    seconds, concurrency = check_bounds(seconds, concurrency, service)
    host, port = target(cluster, service)
    out(f"load: {concurrency} workers, createlist/{ITEMS} then clear, new connection per request, "
        f"for {seconds:g}s against {service} at http://{host}:{port} (namespace {cluster.namespace})")
    out(format_row(HEADERS))
    load = Load(host, port, concurrency).start()
    last = 0.0
    try:
        while last < seconds:
            nxt = min(last + every, seconds)
            time.sleep(max(0.0, nxt - load.elapsed()))
            row = summary(load.stats.window(last, nxt))
            reps = replicas(cluster)
            out(format_row((f"{nxt:.0f}s", row["requests"], row["failures"], _ms(row["p50_ms"]),
                            _ms(row["p99_ms"]), f"{reps[0]}/{reps[1]}" if reps else "?")))
            last = nxt
    finally:
        load.stop()
    total = summary(load.stats.samples)
    errors = sorted({s.error for s in load.stats.samples if not s.ok})
    out(f"total: {total['requests']} requests, {total['failures']} failed, p50 {_ms(total['p50_ms'])} ms, "
        f"p99 {_ms(total['p99_ms'])} ms" + (f"; errors: {'; '.join(errors[:3])}" if errors else ""))
    return total
