"""The production HTTP server, chosen by measurement: candidates side by side in one run.

    python -m twotier.bench.servers [--duration 5] [--servers granian-rsgi,gunicorn-gthread,...]

Each candidate serves both services (storage API and application API, the same Flask apps, 2
worker processes where the server has them, 4 app threads per worker, one access-log line per
request where the server writes one) on loopback; the load generator is ``wrk`` (Debian:
``apt-get install wrk``) on the same 2-core machine. Measured per candidate:

Each hostile check runs on a fresh storage API (a server wedged by one must not fail the next).

- throughput (requests/s) and p99 latency of ``GET /items`` (20 items), ``PUT /items/<item>``
  and ``GET /createlist/100`` (application API -> storage API) with 1, 16 and 128 keep-alive
  connections (``--duration`` seconds each, the median of ``--rounds`` rounds interleaved
  across the candidates, which all run at once);
- slow clients: 24 connections dribbling request headers and 24 dribbling a body, one piece
  every 0.5 s; normal ``GET /items`` answered meanwhile (of 8, each with a 2 s client timeout);
- idle flood: 2000 idle connections open: normal requests answered (of 5), then all closed:
  answered after (of 5);
- pipelining: 20 ``PUT`` written at once on one connection: answers received;
- graceful stop: SIGTERM to the application API with 8 ``createlist`` requests in flight:
  how many got their 200, and the exit code;
- memory: RSS and PSS (all processes of the storage API) at rest; RSS after the load.

Writes a Markdown report to build/bench-servers.md (and stdout). ``run()`` is the entry point
``invoke bench`` calls.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from twotier.dev.servers import APP, LOOPBACK, STORAGE, free_port, service_env
from twotier.errors import UserError
from twotier.shape import BUILD, ROOT
from twotier.tables import markdown

REPORT = BUILD / "bench-servers.md"
CONCURRENCY = (1, 16, 128)
WORKERS, THREADS = 2, 4

#: name -> (description, access log?, argv builder(package, env prefix, port))
CANDIDATES: dict[str, tuple[str, str]] = {
    "gunicorn-gthread": ("gunicorn 23, gthread, 2 workers x 4 threads (before)", "yes"),
    "gunicorn-gevent": ("gunicorn 23, gevent, 2 workers, 10000 connections each", "yes"),
    "waitress": ("waitress 3, 1 process, 8 threads, 10000 connections", "no"),
    "uvicorn-a2wsgi": ("uvicorn 0.54 + a2wsgi, 2 workers x 4 threads", "yes"),
    "granian-wsgi": ("granian 2.8, its WSGI interface, 2 workers x 4 threads", "yes"),
    "granian-rsgi": ("granian 2.8 on uvloop, RSGI bridge (twotier_service.rsgi), 2 workers x 4 threads: "
                     "python -m <service> (now)", "yes"),
}


#: the project as it was before this server work, run from its own code (``--before REV``)
BEFORE = "before"


def before_tree(rev: str, into: Path) -> Path:
    """``services/`` of git revision ``rev`` of this repository, extracted under ``into``."""
    res = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "services"],
                         capture_output=True)
    if res.returncode != 0:
        raise UserError(f"cannot read services/ at revision {rev!r}: "
                        f"{res.stderr.decode(errors='replace').strip()[-300:]}",
                        "give a commit of this repository, e.g. --before a48ed72")
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=res.stdout, check=True)
    return into


def _argv(name: str, package: str, port: int) -> list[str]:
    py = sys.executable
    bind = f"{LOOPBACK}:{port}"
    if name == BEFORE:  # its own `python -m <service>`: gunicorn gthread as it was configured
        return [py, "-m", package]
    if name == "gunicorn-gthread":  # exactly the options serving.py had
        return [py, "-m", "gunicorn", "-w", str(WORKERS), "--threads", str(THREADS), "-k", "gthread",
                "--keep-alive", "5", "--timeout", "30", "--graceful-timeout", "10",
                "--access-logfile", "-", "-b", bind, f"{package}:create_app()"]
    if name == "gunicorn-gevent":
        return [py, "-m", "gunicorn", "-w", str(WORKERS), "-k", "gevent", "--worker-connections", "10000",
                "--keep-alive", "5", "--timeout", "30", "--graceful-timeout", "10",
                "--access-logfile", "-", "-b", bind, f"{package}:create_app()"]
    if name == "waitress":
        return [py, "-m", "waitress", f"--threads={WORKERS * THREADS}", "--connection-limit=10000",
                "--channel-timeout=10", f"--listen={bind}", "--call", f"{package}:create_app"]
    if name == "uvicorn-a2wsgi":
        return [py, "-m", "uvicorn", "--workers", str(WORKERS), "--factory", "--host", LOOPBACK,
                "--port", str(port), "--timeout-keep-alive", "5", "--timeout-graceful-shutdown", "10",
                "twotier.bench.asgi_target:asgi_app"]
    if name == "granian-wsgi":
        return [py, "-m", "granian", "--interface", "wsgi", "--workers", str(WORKERS),
                "--blocking-threads", str(THREADS), "--backpressure", "4096",
                "--http1-header-read-timeout", "10000", "--workers-kill-timeout", "10", "--access-log",
                "--host", LOOPBACK, "--port", str(port), "--factory", f"{package}:create_app"]
    if name == "granian-rsgi":
        return [py, "-m", package]
    raise UserError(f"unknown server {name!r}", f"choose from {', '.join(CANDIDATES)}")


class Server:
    """One service under one candidate server, as a process group; output to a log file."""

    def __init__(self, name: str, tier, env: dict, log_dir: Path, code: Path | None = None):
        self.name, self.tier, self.code = name, tier, code  # code: another services/ tree
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.env = {**service_env(), **env, "PYTHONUNBUFFERED": "1", "TWOTIER_DEV": "0",
                    "PYTHONPATH": os.pathsep.join([service_env()["PYTHONPATH"], str(ROOT)]),
                    "BENCH_PACKAGE": tier.package, "BENCH_THREADS": str(THREADS),
                    f"{tier.env_prefix}_HOST": LOOPBACK, f"{tier.env_prefix}_PORT": str(self.port),
                    f"{tier.env_prefix}_WORKERS": str(WORKERS), f"{tier.env_prefix}_THREADS": str(THREADS)}
        self.directory = tier.directory
        if code is not None:
            self.directory = code / tier.directory.relative_to(ROOT)
            self.env["PYTHONPATH"] = str(code / "services" / "common")
        self.log = log_dir / f"{name}-{tier.name}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(_argv(self.name, self.tier.package, self.port), cwd=self.directory,
                                         env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"{self.name} ({self.tier.name}) exited while starting: "
                                f"{self.log.read_text(errors='replace')[-800:]}",
                                "is the server installed? pip install -r requirements-dev.txt")
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise UserError(f"{self.name} ({self.tier.name}) did not answer within 60 s", "look at " + str(self.log))

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        return self.proc.returncode

    def memory_mb(self) -> tuple[float, float]:
        """(RSS, PSS) summed over the server's processes, in MiB. RSS counts the pages the
        processes share (libpython, the libraries) once per process; PSS splits them, which
        is what the machine (or a container's memory limit) actually pays."""
        try:
            root = psutil.Process(self.proc.pid)
            infos = [p.memory_full_info() for p in (root, *root.children(recursive=True))]
        except psutil.Error:
            return float("nan"), float("nan")
        return sum(i.rss for i in infos) / 2**20, sum(i.pss for i in infos) / 2**20


# -- load -----------------------------------------------------------------------------------------
_PUT_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/items/w" .. tostring(counter % 1000), {["Content-Length"] = "0"})
end
"""


@dataclass
class Load:
    rps: float
    p99_ms: float
    errors: int

    def cell(self) -> str:
        err = f", {self.errors} err" if self.errors else ""
        return f"{self.rps:,.0f} / {self.p99_ms:.1f}{err}"


def wrk(url: str, connections: int, duration: float, script: str | None = None) -> Load:
    binary = shutil.which("wrk")
    if not binary:
        raise UserError("wrk (the load generator) is not installed", "apt-get install -y wrk")
    argv = [binary, f"-t{min(connections, 2)}", f"-c{connections}", f"-d{duration:g}s", "--latency",
            "--timeout", "5s"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        if script:
            lua.write(script)
    try:
        if script:
            argv += ["-s", lua.name]
        out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=duration + 60).stdout
    finally:
        os.unlink(lua.name)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if not rps or not p99:
        raise UserError(f"could not read wrk's output:\n{out[-800:]}", "run wrk by hand to see why")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Load(float(rps.group(1)), float(p99.group(1)) * scale, errors + (int(non2xx.group(1)) if non2xx else 0))


# -- hostile clients -------------------------------------------------------------------------------
def _served(url: str, count: int, timeout: float = 2.0, pause: float = 0.0) -> int:
    ok = 0
    for _ in range(count):
        try:
            ok += requests.get(url, timeout=timeout).status_code == 200
        except requests.RequestException:
            pass
        time.sleep(pause)
    return ok


def slow_clients(server: Server) -> str:
    host = (LOOPBACK, server.port)
    heads = [b"GET /items HTTP/1.1\r\nHost: x\r\n"] * 24 + [
        b"POST /items:batch HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"create\": ["] * 24
    drips = [b"X-Slow: 1\r\n"] * 24 + [b'"s",'] * 24
    stop = threading.Event()
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.create_connection(host, timeout=5)) for _ in heads]
        for sock, head in zip(socks, heads):
            sock.sendall(head)

        def dribble():
            for _ in range(40):  # at most 20 s
                if stop.wait(0.5):
                    return
                for sock, drip in zip(socks, drips):
                    try:
                        sock.sendall(drip)
                    except OSError:
                        pass

        thread = threading.Thread(target=dribble, daemon=True)
        thread.start()
        time.sleep(1.0)
        ok = _served(server.url + "/items", 8, pause=0.25)
        stop.set()
        thread.join(5)
    return f"{ok}/8"


def idle_flood(server: Server, count: int = 2000) -> str:
    with ExitStack() as stack:
        try:
            for _ in range(count):
                stack.enter_context(socket.create_connection((LOOPBACK, server.port), timeout=5))
        except OSError as err:
            return f"open failed: {err.strerror}"
        during = _served(server.url + "/items", 5)
    time.sleep(1.0)
    after = _served(server.url + "/items", 5)
    return f"{during}/5, after {after}/5"


def pipelining(server: Server, count: int = 20) -> str:
    sock = socket.create_connection((LOOPBACK, server.port), timeout=5)
    try:
        sock.sendall(b"".join(f"PUT /items/pipe{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
                              for i in range(count)))
        data, deadline = b"", time.monotonic() + 5
        while data.count(b"HTTP/1.1 ") < count and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    return f"{data.count(b'HTTP/1.1 ')}/{count}"


def graceful_stop(name: str, storage: Server, log_dir: Path, in_flight: int = 8) -> str:
    app = Server(name, APP, {"STO_API": storage.url, "API_BATCH_SIZE": "100"}, log_dir,
                 code=storage.code).__enter__()
    answers: list[int] = []

    def call():
        try:
            answers.append(requests.get(app.url + "/createlist/3000", timeout=60).status_code)
        except requests.RequestException:
            answers.append(0)

    threads = [threading.Thread(target=call, daemon=True) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    app.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    try:
        code = app.proc.wait(30)
    except subprocess.TimeoutExpired:
        code = "hung"
    app.stop()
    return f"{answers.count(200)}/{in_flight}, exit {code}"


# -- one candidate -----------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    loads: dict[str, Load] = field(default_factory=dict)
    slow: str = ""
    idle: str = ""
    pipeline: str = ""
    graceful: str = ""
    rss_rest: float = 0.0
    pss_rest: float = 0.0
    rss_load: float = 0.0


def _median(loads: list[Load]) -> Load:
    return sorted(loads, key=lambda load: load.rps)[len(loads) // 2]


def measure(names: list[str], duration: float, rounds: int, progress,
            trees: dict[str, Path] | None = None) -> list[Result]:
    """All candidates up at once; every load figure interleaved across them (``rounds`` rounds,
    alternating order; the median by throughput), so that a change in the machine's load
    during the run hits every candidate alike. Then the hostile checks, each on a fresh server."""
    results = {name: Result(name) for name in names}
    trees = trees or {}
    with tempfile.TemporaryDirectory(prefix="twotier-bench-servers-") as tmp, ExitStack() as stack:
        tmp = Path(tmp)
        pairs = {}
        for name in names:
            progress(f"starting {name}")
            storage = stack.enter_context(Server(name, STORAGE, {"STO_STORAGE": str(tmp / f"items-{name}")}, tmp,
                                                 code=trees.get(name)))
            app = stack.enter_context(Server(name, APP, {"STO_API": storage.url}, tmp, code=trees.get(name)))
            pairs[name] = (storage, app)
        time.sleep(2.0)
        for name, (storage, _) in pairs.items():
            results[name].rss_rest, results[name].pss_rest = storage.memory_mb()
            for i in range(20):
                requests.put(f"{storage.url}/items/{i}", timeout=10)
        workloads = [("get", "GET /items", lambda st, ap, c: wrk(st.url + "/items", c, duration)),
                     ("createlist", "GET /createlist/100",
                      lambda st, ap, c: wrk(ap.url + "/createlist/100", c, duration)),
                     ("put", "PUT /items/<item>", lambda st, ap, c: wrk(st.url, c, duration, _PUT_SCRIPT))]
        for key, label, load in workloads:
            for c in CONCURRENCY:
                progress(f"{label}, {c} connections, {rounds} rounds x {len(names)} servers")
                samples: dict[str, list[Load]] = {name: [] for name in names}
                for r in range(rounds):
                    for name in (names if r % 2 == 0 else names[::-1]):
                        samples[name].append(load(*pairs[name], c))
                for name in names:
                    results[name].loads[f"{key}{c}"] = _median(samples[name])
        for name, (storage, _) in pairs.items():
            results[name].rss_load = storage.memory_mb()[0]
    for name in names:
        progress(f"{name}: slow clients, idle flood, pipelining, graceful stop")
        with tempfile.TemporaryDirectory(prefix="twotier-bench-servers-") as tmp:
            tmp, result = Path(tmp), results[name]
            for attr, check in (("slow", slow_clients), ("idle", idle_flood), ("pipeline", pipelining),
                                ("graceful", lambda storage, name=name, tmp=tmp: graceful_stop(name, storage, tmp))):
                with Server(name, STORAGE, {"STO_STORAGE": str(tmp / "items")}, tmp,
                            code=trees.get(name)) as storage:
                    setattr(result, attr, check(storage))
    return [results[name] for name in names]


def report(results: list[Result], duration: float, rounds: int, command: str,
           described: dict[str, tuple[str, str]] | None = None) -> str:
    described = described or CANDIDATES
    load_rows = []
    for r in results:
        for op, label in (("get", "GET /items (20 items)"), ("put", "PUT /items/<item>"),
                          ("createlist", "GET /createlist/100")):
            load_rows.append([r.name, label] + [r.loads[f"{op}{c}"].cell() for c in CONCURRENCY])
    hostile_rows = [[r.name, described[r.name][1], r.slow, r.idle, r.pipeline, r.graceful,
                     f"{r.rss_rest:.0f} / {r.pss_rest:.0f}", f"{r.rss_load:.0f}"] for r in results]
    servers = "\n".join(f"- `{name}`: {described[name][0]}" for name in (r.name for r in results))
    return (f"# Production server benchmark, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC\n\n"
            f"`{command}` on {platform.node()} ({os.cpu_count()} cores, Python "
            f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end); load "
            f"generator wrk on the same machine, {duration:g} s per figure, the median of {rounds} "
            "rounds interleaved across the servers; each cell: requests/s / p99 ms (errors, if any)."
            "\n\n"
            f"{servers}\n\n"
            + markdown(["server", "request"] + [f"{c} connection{'s' if c > 1 else ''}" for c in CONCURRENCY],
                       load_rows)
            + "\n\nHostile clients (each check on a fresh storage API) and memory (all processes of "
              "the storage API; RSS counts shared pages once per process, PSS shares them out):\n\n"
            + markdown(["server", "access log", "served during 48 slow clients", "2000 idle connections: "
                        "served during, after", "20 pipelined PUTs answered",
                        "SIGTERM, 8 in flight: answered", "memory at rest MiB (RSS / PSS)", "RSS after load MiB"],
                       hostile_rows) + "\n")


def run(duration: float = 3.0, servers: str | list[str] | None = None, rounds: int = 3,
        progress=None, out: Path = REPORT, command: str = "python -m twotier.bench.servers",
        before: str = "") -> str:
    """Measure ``servers`` (default: all candidates) side by side; write and return the report.
    ``before``: a git revision; the project as it served then runs too, from its own code."""
    progress = progress or (lambda msg: print(f"[bench-servers] {msg}", file=sys.stderr, flush=True))
    names = [s.strip() for s in servers.split(",")] if isinstance(servers, str) else list(servers or CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise UserError(f"unknown servers {unknown}", f"choose from {', '.join(CANDIDATES)}")
    if duration <= 0 or rounds < 1:
        raise UserError(f"--duration must be > 0 and --rounds >= 1, got {duration}, {rounds}",
                        "e.g. --duration 3 --rounds 3")
    names = [n for n in names if n]
    described = dict(CANDIDATES)
    with tempfile.TemporaryDirectory(prefix="twotier-bench-before-") as tmp:
        trees = {}
        if before:
            trees[BEFORE] = before_tree(before, Path(tmp))
            names.insert(0, BEFORE)
            described[BEFORE] = (f"this project at {before}, from its own code and its own "
                                 "`python -m <service>` (what it served before this work)", "yes")
        results = measure(names, duration, rounds, progress, trees)
    text = report(results, duration, rounds, command, described)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twotier.bench.servers", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load figure (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure, the median is shown (default 3)")
    parser.add_argument("--servers", default="", help=f"comma-separated subset of: {', '.join(CANDIDATES)}")
    parser.add_argument("--before", default="", help="a git revision: also measure the project as it "
                        "served then, from its own code (e.g. a48ed72)")
    args = parser.parse_args(argv)
    command = "python -m twotier.bench.servers" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    try:
        print(run(args.duration, args.servers or None, args.rounds, command=command, before=args.before))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
