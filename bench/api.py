"""`invoke bench.api`: our createlist/clear against the seed's per-item design, same run, loopback.

Both services run as real processes (granian, as in production) on free loopback ports with a
temporary storage directory. For each N the benchmark times, as the median of ``repeat`` runs:

- ours: ``GET /createlist/N`` then ``GET /clear`` on the application API (one batch call to the
  storage API per 10000 items, pooled keep-alive connection);
- baseline: the seed's design, a sequential client doing one ``PUT /items/<i>`` per item (a new
  connection each time) against the same storage API, then ``GET /items`` and one ``DELETE``
  per item.

Goals: createlist/1000 at least 20x faster than the baseline, createlist/10000 < 0.5 s.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import requests

from twotier import tables
from twotier.dev.servers import APP, STORAGE, ServiceProcess
from twotier.errors import UserError
from twotier.ports import free_port

GOAL_RATIO_N, GOAL_RATIO = 1000, 20.0
GOAL_FAST_N, GOAL_FAST_SECONDS = 10000, 0.5


@dataclass
class Row:
    n: int
    create: float
    clear: float
    base_create: float | None = None
    base_clear: float | None = None

    @property
    def create_ratio(self) -> float | None:
        return self.base_create / self.create if self.base_create else None

    @property
    def clear_ratio(self) -> float | None:
        return self.base_clear / self.clear if self.base_clear else None


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--sizes must be comma-separated integers, got {text!r}",
                        "e.g. --sizes 10,100,1000") from None
    if not sizes or any(n < 1 for n in sizes):
        raise UserError(f"--sizes must list positive integers, got {text!r}", "e.g. --sizes 10,100,1000")
    return sizes


def measure(sizes: list[int], repeat: int = 3, baseline_max: int = 1000, progress=None) -> list[Row]:
    """Start both services, time every size, stop them; rows in the order of ``sizes``."""
    if repeat < 1:
        raise UserError(f"--repeat must be >= 1, got {repeat}", "e.g. --repeat 3")
    progress = progress or (lambda msg: None)
    limit = max(sizes)
    with tempfile.TemporaryDirectory(prefix="twotier-bench-") as directory:
        storage = ServiceProcess(STORAGE, free_port(), {"STO_STORAGE": directory})
        progress("starting the storage API and the application API (granian) on loopback ...")
        with storage:
            app_env = {"STO_API": storage.url, "API_MAX_ITEMS": str(max(limit, 100_000))}
            with ServiceProcess(APP, free_port(), app_env) as app:
                _ours(app.url, 10)  # warm up both tiers (imports, first connections)
                rows = []
                for n in sizes:
                    progress(f"N={n}: createlist/clear x{repeat}")
                    creates, clears = zip(*(_ours(app.url, n) for _ in range(repeat)))
                    row = Row(n, statistics.median(creates), statistics.median(clears))
                    if n <= baseline_max:
                        progress(f"N={n}: per-item baseline x{repeat}")
                        bases = [_per_item(storage.url, n) for _ in range(repeat)]
                        row.base_create = statistics.median(b[0] for b in bases)
                        row.base_clear = statistics.median(b[1] for b in bases)
                    rows.append(row)
                return rows


def _ours(app_url: str, n: int) -> tuple[float, float]:
    start = time.perf_counter()
    created = requests.get(f"{app_url}/createlist/{n}", timeout=120)
    create = time.perf_counter() - start
    start = time.perf_counter()
    cleared = requests.get(f"{app_url}/clear", timeout=120)
    clear = time.perf_counter() - start
    _expect(created, "createds", n, f"createlist/{n}")
    _expect(cleared, "deleteds", n, "clear")
    return create, clear


def _per_item(storage_url: str, n: int) -> tuple[float, float]:
    """The seed's design: one request per item, sequential, a new connection each time."""
    start = time.perf_counter()
    for i in range(n):
        resp = requests.put(f"{storage_url}/items/{i}", timeout=30)
        if resp.status_code != 201:
            raise UserError(f"baseline PUT /items/{i} answered {resp.status_code}: {resp.text[:200]}")
    create = time.perf_counter() - start
    start = time.perf_counter()
    items = requests.get(f"{storage_url}/items", timeout=30).json()["items"]
    for item in items:
        resp = requests.delete(f"{storage_url}/items/{item}", timeout=30)
        if resp.status_code != 200:
            raise UserError(f"baseline DELETE /items/{item} answered {resp.status_code}")
    clear = time.perf_counter() - start
    if len(items) != n:
        raise UserError(f"baseline listed {len(items)} items, expected {n}")
    return create, clear


def _expect(resp: requests.Response, key: str, n: int, what: str) -> None:
    if resp.status_code != 200:
        raise UserError(f"{what} answered {resp.status_code}: {resp.text[:300]}")
    body = resp.json()
    if len(body[key]) != n or body["faileds"]:
        raise UserError(f"{what} reported {len(body[key])} {key} and {len(body['faileds'])} faileds, "
                        f"expected {n} and 0")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


def table(rows: list[Row], markdown: bool = False) -> str:
    header = ("N", "createlist", "per-item PUTs", "speed-up", "clear", "per-item DELETEs", "speed-up")
    cells = [(str(r.n), _ms(r.create), _ms(r.base_create), _x(r.create_ratio),
              _ms(r.clear), _ms(r.base_clear), _x(r.clear_ratio)) for r in rows]
    return tables.markdown(header, cells) if markdown else tables.table(header, cells, right=True)


def goals(rows: list[Row]) -> list[tuple[str, bool | None]]:
    """[(description, met?)]; None = not measured in this run."""
    by_n = {r.n: r for r in rows}
    ratio_row, fast_row = by_n.get(GOAL_RATIO_N), by_n.get(GOAL_FAST_N)
    ratio = ratio_row.create_ratio if ratio_row else None
    results = [
        (f"createlist/{GOAL_RATIO_N} >= {GOAL_RATIO:g}x faster than the per-item baseline"
         + (f": {ratio:.1f}x" if ratio else " (not measured)"),
         None if ratio is None else ratio >= GOAL_RATIO),
        (f"createlist/{GOAL_FAST_N} < {GOAL_FAST_SECONDS:g} s"
         + (f": {fast_row.create:.3f} s" if fast_row else " (not measured)"),
         None if fast_row is None else fast_row.create < GOAL_FAST_SECONDS),
    ]
    return results


def machine() -> str:
    load = os.getloadavg()
    cpus = os.cpu_count() or 1
    busy = " - the machine is busy, numbers are pessimistic" if load[0] > cpus / 2 else ""
    return (f"{platform.node()}: {cpus} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
            f"{busy}; Python {platform.python_version()}; services: granian, 2 workers x 4 threads")


def main(sizes="10,100,1000,10000", repeat: int = 3, baseline_max: int = 1000, check: bool = False,
         out=None) -> list[Row]:
    out = out or sys.stdout
    ns = parse_sizes(sizes)
    say = lambda msg: print(msg, file=out, flush=True)
    rows = measure(ns, repeat, baseline_max, progress=say)
    say("")
    say(machine())
    say(f"median of {repeat} runs; baseline = one request per item, new connection each (the seed's design)")
    say(table(rows))
    failed = []
    for text, met in goals(rows):
        mark = {True: "met", False: "NOT MET", None: "-"}[met]
        say(f"goal {text}: {mark}")
        if met is False:
            failed.append(text)
    if check and failed:
        raise UserError(f"{len(failed)} benchmark goal(s) not met", "see the table above")
    return rows
