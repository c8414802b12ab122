"""`invoke bench.devreload`: save -> new code answering, the dev server beside the one it
replaced, in one run on loopback.

Both run the hello app as a local process (``python -m hello_app --dev`` from a copy of its
folder), each with its own ``twotier_service``:

- **granian**: this tree's, granian and the RSGI bridge as in production, blue/green workers;
- **supervisor**: the one at ``--before`` (default 50adff7, extracted with ``git archive``):
  Werkzeug's server under the blue/green supervisor.

Each round saves a new answer into each copy, the way Tilt's live_update does it (an archive
extracted with ``tar -x`` over the code), the two in alternating order, and times it until ``GET /``
answers the new value (polled every 5 ms, a new connection each time). A prober sends ``GET
/healthz`` to both all along: every outcome is counted (refused, reset, timed out must stay 0).
The first two saves of each warm up and are not counted.

  python -m bench.devreload [--saves 20] [--before 50adff7]

``run(saves=..., before=..., progress=print) -> dict`` is the entry point; ``format_report``
makes the Markdown.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.reload import Prober
from bench.storage import services_at
from twotier import tables
from twotier.dev.servers import COMMON, HELLO, ServiceProcess
from twotier.errors import UserError
from twotier.poll import Timeout, poll
from twotier.ports import free_port

DEFAULT_BEFORE = "50adff7"  # the last commit with the Werkzeug supervisor
DEFAULT_SAVES = 20
WARMUP = 2
SAVE_TIMEOUT_S = 60.0
MODULE = "hello_app/__init__.py"
ANSWER = 'return {"a": 1}'


class DevServer:
    """One dev server on a copy of the hello app's folder; ``save(n)`` makes it answer {"a": n}."""

    def __init__(self, label: str, code: Path, common: Path):
        self.label, self.code = label, code
        self.original = (code / MODULE).read_text()
        if ANSWER not in self.original:
            raise UserError(f"{code / MODULE} no longer holds {ANSWER!r}: update bench/devreload.py")
        self.proc = ServiceProcess(HELLO, free_port(), {"PYTHONPATH": str(common)}, dev=True, directory=code,
                                   label=label)

    def save(self, value: int) -> float:
        """Seconds from the save to the first answer with VALUE."""
        data = self.original.replace(ANSWER, f'return {{"a": {value}}}').encode()
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            info = tarfile.TarInfo(MODULE)
            info.size, info.mtime, info.mode = len(data), time.time(), 0o644
            tar.addfile(info, io.BytesIO(data))
        started = time.perf_counter()
        subprocess.run(["tar", "-C", str(self.code), "-x"], input=archive.getvalue(), check=True, timeout=30)
        try:
            poll(lambda: self._answer() == {"a": value}, timeout=SAVE_TIMEOUT_S, interval=0.005,
                 what=f"{self.label} answering with the saved code")
        except Timeout as err:
            raise UserError(f"{err.message}; its last output:\n{self.proc.tail(20)}") from None
        return time.perf_counter() - started

    def _answer(self):
        try:
            with urllib.request.urlopen(self.proc.url + "/", timeout=5) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None


def run(saves: int = DEFAULT_SAVES, before: str = DEFAULT_BEFORE, progress=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="twotier-devreload-") as tmp:
        tmp = Path(tmp)
        old_services = services_at(before, tmp)
        new_code = tmp / "hello"
        shutil.copytree(HELLO.directory, new_code, ignore=shutil.ignore_patterns("__pycache__"))
        servers = [DevServer("granian", new_code, COMMON),
                   DevServer(f"supervisor ({before})", old_services / HELLO.directory.name, old_services / "common")]
        try:
            for server in servers:
                server.proc.start().wait_ready()
            times: dict[str, list[float]] = {s.label: [] for s in servers}
            with Prober({s.label: s.proc.url + "/healthz" for s in servers}) as prober:
                for n in range(saves + WARMUP):
                    for server in (servers if n % 2 == 0 else servers[::-1]):
                        took = server.save(n + 2)
                        if n >= WARMUP:
                            times[server.label].append(took)
                    progress(f"save {n + 1}/{saves + WARMUP}: "
                             + ", ".join(f"{s.label} {times[s.label][-1]:.2f}s" for s in servers if times[s.label]))
            return {"saves": saves, "before": before, "times": times, "probes": prober.counts,
                    "alive": {s.label: s.proc.alive() for s in servers}}
        finally:
            for server in servers:
                server.proc.stop()


def format_report(result: dict) -> str:
    rows = []
    for label, values in result["times"].items():
        p90 = statistics.quantiles(values, n=10, method="inclusive")[8]
        probes = result["probes"][label]
        failed = sum(n for kind, n in probes.items() if kind != "ok")
        rows.append([label, f"{statistics.median(values):.2f} s", f"{p90:.2f} s", f"{max(values):.2f} s",
                     len(values), f"{failed} of {sum(probes.values())}",
                     "yes" if result["alive"][label] else "NO"])
    return tables.markdown(["dev server", "save -> new code, median", "p90", "max", "saves",
                            "failed probes", "still up"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.devreload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--saves", type=int, default=DEFAULT_SAVES, help="counted saves per dev server")
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="the commit whose dev server is compared")
    args = parser.parse_args(argv)
    print(format_report(run(args.saves, args.before)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
