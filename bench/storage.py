"""`invoke bench.storage`: what the storage tier's defenses cost and buy, side by side with the
services as they were at an earlier commit (``--before REV``), same run, loopback.

Both trees run as real processes (granian through the RSGI bridge, as in production) on free
loopback ports with a temporary storage directory each. Figures:

- createlist/N and clear through the application API (N = 1000 and 10000, medians of 3): the
  cost of syncing data and directory to disk before each answer;
- ``/healthz`` latency (median and worst) while ten clients list 50,000 items over and over;
- the storage processes' summed PSS at rest and at its peak while 16 clients send 32 large junk
  bodies (the largest each tree accepts, a list of short strings: the costliest to parse).
"""
from __future__ import annotations

import http.client
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.support.memory import junk_batch, peak_pss, tree_pss
from twotier import tables
from twotier.dev.servers import APP, STORAGE, ServiceProcess
from twotier.errors import UserError
from twotier.ports import free_port
from twotier.shape import ROOT

DEFAULT_BEFORE = "50adff7"  # the services before the storage tier's second round
LISTED = 50_000


def services_at(rev: str, into: Path) -> Path:
    """services/ as it was at REV, extracted into INTO; its path."""
    archive = into / "services.tar"
    proc = subprocess.run(["git", "archive", "-o", str(archive), rev, "services"], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        raise UserError(f"cannot read services/ at {rev!r}: {proc.stderr.strip()}",
                        "give a commit of this repository, e.g. --before HEAD~5")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "services"


def _start(tier, services: Path, env: dict) -> ServiceProcess:
    env = {**env, "PYTHONPATH": str(services / "common")}
    return ServiceProcess(tier, free_port(), env, directory=services / tier.directory.name).start().wait_ready()


def measure_tree(services: Path, label: str, progress=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="twotier-bench-") as data:
        storage = _start(STORAGE, services, {"STO_STORAGE": f"{data}/items"})
        try:
            requests.get(storage.url + "/items", timeout=30)
            figures = {"label": label, "at_rest": tree_pss(storage.pid) / 2**20}
            app = _start(APP, services, {"STO_API": storage.url})
            try:
                for n in (1000, 10000):
                    progress(f"{label}: createlist/{n} and clear")
                    figures[n] = _createlist_clear(app.url, n)
            finally:
                app.stop()
            progress(f"{label}: /healthz while ten clients list {LISTED} items")
            figures["healthz"] = _probes_under_listing(storage)
            progress(f"{label}: memory under 32 large junk bodies")
            figures["memory"] = _memory_under_junk(storage)
            return figures
        finally:
            storage.stop()


def _createlist_clear(url: str, n: int, repeat: int = 3) -> tuple[float, float]:
    creates, clears = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        assert len(requests.get(f"{url}/createlist/{n}", timeout=120).json()["createds"]) == n
        t1 = time.perf_counter()
        assert len(requests.get(f"{url}/clear", timeout=120).json()["deleteds"]) == n
        creates.append(t1 - t0)
        clears.append(time.perf_counter() - t1)
    return statistics.median(creates), statistics.median(clears)


def _probes_under_listing(storage, rounds: int = 5) -> tuple[float, float]:
    for start in range(0, LISTED, 10_000):
        names = [f"item{i:06d}" for i in range(start, start + 10_000)]
        requests.post(storage.url + "/items:batch", json={"create": names}, timeout=120).raise_for_status()
    stop = threading.Event()

    def lister():
        conn = http.client.HTTPConnection(storage.host, storage.port, timeout=120)
        for _ in range(rounds):
            conn.request("GET", "/items")
            conn.getresponse().read()
        conn.close()

    listers = [threading.Thread(target=lister) for _ in range(10)]
    for t in listers:
        t.start()
    latencies = []
    probe = http.client.HTTPConnection(storage.host, storage.port, timeout=30)
    while any(t.is_alive() for t in listers):
        t0 = time.perf_counter()
        probe.request("GET", "/healthz")
        probe.getresponse().read()
        latencies.append(time.perf_counter() - t0)
        stop.wait(0.02)
    probe.close()
    return statistics.median(latencies), max(latencies)


def _memory_under_junk(storage) -> float:
    junk = junk_batch(_largest_body(storage))
    with peak_pss(storage.pid) as peak, ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: requests.post(storage.url + "/items:batch", data=junk, timeout=120,
                                              headers={"Content-Type": "application/json"}), range(32)))
    return peak[0] / 2**20


def _largest_body(storage) -> int:
    """The largest body the storage accepts: its 413 says so."""
    resp = requests.post(storage.url + "/items:batch", data=b"", timeout=30,
                         headers={"Content-Type": "application/json", "Content-Length": str(1 << 30)})
    words = [w.rstrip(",") for w in resp.json().get("message", "").split()]
    return next((int(w) for w in words if w.isdigit()), 8 * 1024 * 1024)


def table(before: dict, now: dict, markdown: bool = True) -> str:
    def ms(x):
        return f"{x * 1000:.1f} ms"

    rows = []
    for n in (1000, 10000):
        rows.append((f"createlist/{n}", ms(before[n][0]), ms(now[n][0])))
        rows.append((f"clear of {n}", ms(before[n][1]), ms(now[n][1])))
    rows.append((f"/healthz while 10 clients list {LISTED} items: median", ms(before["healthz"][0]), ms(now["healthz"][0])))
    rows.append(("... worst", ms(before["healthz"][1]), ms(now["healthz"][1])))
    rows.append(("storage processes' memory (summed PSS) at rest", f"{before['at_rest']:.0f} MiB",
                 f"{now['at_rest']:.0f} MiB"))
    rows.append(("... peak under 32 large junk bodies, 16 at once", f"{before['memory']:.0f} MiB",
                 f"{now['memory']:.0f} MiB"))
    headers = ["figure", f"before ({before['label']})", f"now ({now['label']})"]
    return tables.markdown(headers, rows) if markdown else tables.table(headers, rows)


def run(before: str = DEFAULT_BEFORE, progress=print, markdown: bool = True) -> str:
    with tempfile.TemporaryDirectory(prefix="twotier-before-") as tmp:
        old = measure_tree(services_at(before, Path(tmp)), before, progress)
    now = measure_tree(ROOT / "services", "this tree", progress)
    return table(old, now, markdown)
