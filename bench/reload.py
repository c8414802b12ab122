"""Live-update stress benchmark: many consecutive saves to both tiers under `tilt up`, some while
the CPU is busy, some saving a syntax error and then the fix, with every tier probed all along.

What it reports (build/bench-reload.md):
- container restarts and replaced pods during the run (must be 0: a save never restarts anything);
- every probe request's outcome through each tier's Service and each pod IP (ok, refused, reset,
  timed out after 2 s, HTTP 5xx): the dev server must never refuse a connection;
- kubelet `Unhealthy` events for the tiers' pods (probe failures) during the run;
- the save -> answer latency distribution (Service answers with the new code; every replica
  does), by kind of save (plain, CPU busy, fix after a syntax error);
- for a syntax error: whether the previous code kept answering while the broken file was there.

One save = one new field in a seed response (tests.support.tilt.SourceEdit), with a fresh value.
"Busy" = one bounded busy loop per core (BUSY_S seconds each) started just before the save.

  python -m bench.reload [--rounds N] [--out build/bench-reload.md]

``run(settings=None, rounds=..., progress=print) -> dict`` is the entry point for `invoke bench`;
``format_report(result)`` makes the Markdown.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

from tests.support import tilt as live
from twotier import settings as settingsmod
from twotier.errors import UserError
from twotier.shape import ROOT

DEFAULT_ROUNDS = 6  # per tier: each round = a plain save, a busy save, a syntax error + fix
BUSY_S = 8.0
PROBE_TIMEOUT_S = 2.0  # the production probes' timeoutSeconds
PROBE_EVERY_S = 0.05
BROKEN_HOLD_S = 3.0  # how long the syntax error stays saved before the fix
SAVE_TIMEOUT_S = 60.0
OUT = ROOT / "build" / "bench-reload.md"


# ------------------------------------------------------------------------------------ probing

def classify(url: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """One GET: ok | refused | reset | timeout | http_<code> | error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read()
            return "ok" if resp.status < 500 else f"http_{resp.status}"
    except urllib.error.HTTPError as err:
        return "ok" if err.code < 500 else f"http_{err.code}"
    except urllib.error.URLError as err:
        return _os_error_kind(err.reason)
    except (OSError, http.client.HTTPException) as err:
        return _os_error_kind(err)


def _os_error_kind(err) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "refused"
    if isinstance(err, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
                        http.client.IncompleteRead)):
        return "reset"
    if isinstance(err, TimeoutError) or "timed out" in str(err):
        return "timeout"
    return "error"


class Prober:
    """Probes a set of URLs in a loop from a thread until stopped (bounded by MAX_S)."""

    MAX_S = 3600.0

    def __init__(self, urls: dict[str, str]):
        self.urls = urls  # label -> URL
        self.counts: dict[str, dict[str, int]] = {label: {} for label in urls}
        self.first_failures: list[str] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="reload-bench-prober")

    def _run(self) -> None:
        start = time.monotonic()
        while not self.stop_event.is_set() and time.monotonic() - start < self.MAX_S:
            for label, url in self.urls.items():
                kind = classify(url)
                bucket = self.counts[label]
                bucket[kind] = bucket.get(kind, 0) + 1
                if kind != "ok" and len(self.first_failures) < 20:
                    self.first_failures.append(f"{datetime.now(UTC):%H:%M:%S} {label}: {kind}")
            self.stop_event.wait(PROBE_EVERY_S)

    def __enter__(self) -> Prober:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(30)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for bucket in self.counts.values():
            for kind, n in bucket.items():
                out[kind] = out.get(kind, 0) + n
        return out


# ---------------------------------------------------------------------------------- CPU load

def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


class Busy:
    """One bounded busy loop per core, in processes (the GIL would serialise threads)."""

    def __init__(self, seconds: float = BUSY_S, workers: int | None = None):
        self.seconds = seconds
        self.workers = workers or os.cpu_count() or 2
        self.procs: list[multiprocessing.Process] = []

    def __enter__(self) -> Busy:
        ctx = multiprocessing.get_context("fork")
        self.procs = [ctx.Process(target=_burn, args=(self.seconds,), daemon=True) for _ in range(self.workers)]
        for proc in self.procs:
            proc.start()
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.join(self.seconds + 10)
            if proc.is_alive():
                proc.kill()


# ------------------------------------------------------------------------------------- saves

def _save_and_time(edit: live.SourceEdit, urls: list[str], service: str) -> dict:
    marker = uuid.uuid4().hex[:10]
    saved = edit.apply(marker)
    first, everywhere = live.wait_for_marker(urls, marker, timeout=SAVE_TIMEOUT_S, first_url=service)
    return {"service_s": first - saved, "all_s": everywhere - saved, "marker": marker}


def _syntax_error_then_fix(edit: live.SourceEdit, urls: list[str], service: str,
                           previous_marker: str | None) -> dict:
    """Save a file that does not compile; the previous code must keep answering; then the fix."""
    broken = edit.text_with("broken") + "\ndef broken_on_purpose(:\n"
    edit.path.write_text(broken)
    edit.written = broken
    held_until = time.monotonic() + BROKEN_HOLD_S
    answers: dict[str, int] = {}
    while time.monotonic() < held_until:
        value = live.probe_value(service, timeout=PROBE_TIMEOUT_S)
        key = "previous code" if value == previous_marker else "no answer" if value == live.NO_ANSWER else "other"
        answers[key] = answers.get(key, 0) + 1
        time.sleep(0.1)
    fixed = _save_and_time(edit, urls, service)
    fixed["while_broken"] = answers
    return fixed


def _restarts(session: live.TiltSession) -> dict[str, dict[str, int]]:
    return {name: live.pod_identity(live.tier_pods(session.cluster, tier))
            for name, tier in live.TIERS.items()}


def _unhealthy_events(session: live.TiltSession, since: datetime) -> list[str]:
    """kubelet probe failures (reason Unhealthy) for the tiers' pods since SINCE."""
    lines = []
    pods = {p for ids in _restarts(session).values() for p in ids}
    for event in session.cluster.list("v1", "Event"):
        involved = event.get("involvedObject") or {}
        if event.get("reason") != "Unhealthy" or involved.get("name") not in pods:
            continue
        stamp = event.get("lastTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get("creationTimestamp")
        if isinstance(stamp, str):
            stamp = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        if stamp and stamp >= since.replace(microsecond=0):
            lines.append(f"{involved['name']}: {event.get('message', '')} (x{event.get('count', 1)})")
    return lines


def stress(session: live.TiltSession, rounds: int = DEFAULT_ROUNDS, progress=print) -> dict:
    """ROUNDS rounds per tier (plain save, busy save, syntax error + fix), tiers alternating."""
    since = datetime.now(UTC)
    before = _restarts(session)
    refs = session.image_refs()
    probe_urls = {}
    for name, tier in live.TIERS.items():
        _service, urls = live.tier_urls(session, tier)
        health = [u.replace(tier.path, "/healthz") for u in urls]
        probe_urls[f"{name} Service"] = health[0]
        for i, url in enumerate(health[1:], 1):
            probe_urls[f"{name} pod {i}"] = url
    saves: list[dict] = []
    with Prober(probe_urls) as prober:
        edits = {name: live.SourceEdit(tier) for name, tier in live.TIERS.items()}
        try:
            last_marker: dict[str, str | None] = {name: None for name in edits}
            for r in range(rounds):
                for name, edit in edits.items():
                    for kind in ("plain", "busy", "syntax error, then fix"):
                        try:  # a restarted or replaced pod may have a new IP: look again each time
                            service, urls = live.tier_urls(session, live.TIERS[name])
                            if kind == "busy":
                                with Busy():
                                    time.sleep(0.5)  # let the loops take the CPU first
                                    run = _save_and_time(edit, urls, service)
                            elif kind == "plain":
                                run = _save_and_time(edit, urls, service)
                            else:
                                run = _syntax_error_then_fix(edit, urls, service, last_marker[name])
                        except UserError as err:  # counted as a failed save; the run goes on
                            run = {"service_s": None, "all_s": None, "marker": None, "error": err.message}
                        last_marker[name] = run["marker"]
                        run.update(tier=name, kind=kind, round=r + 1)
                        saves.append(run)
                        extra = f", while broken: {run['while_broken']}" if "while_broken" in run else ""
                        if run.get("error"):
                            progress(f"round {r + 1}/{rounds} {name} {kind}: FAILED: {run['error']}")
                        else:
                            progress(f"round {r + 1}/{rounds} {name} {kind}: Service {run['service_s']:.2f}s, "
                                     f"all replicas {run['all_s']:.2f}s{extra}")
        finally:
            for edit in edits.values():
                edit.restore()
        for name, tier in live.TIERS.items():
            try:
                service, urls = live.tier_urls(session, tier)
                live.wait_for_marker(urls, None, timeout=SAVE_TIMEOUT_S, first_url=service)
            except UserError as err:
                progress(f"{name}: the restored code did not answer everywhere: {err.message}")
    after = _restarts(session)
    for tier in live.TIERS.values():
        if not live.git_unchanged(tier.source):
            raise UserError(f"{tier.source} differs from git after the benchmark", "check `git diff`")
    restarts = sum(count - before[n].get(pod, 0) for n, ids in after.items() for pod, count in ids.items())
    return {
        "rounds": rounds,
        "saves": saves,
        "probes": prober.counts,
        "probe_totals": prober.totals(),
        "first_failures": prober.first_failures,
        "pods_before": before,
        "pods_after": after,
        "restarts": restarts,
        "pods_replaced": any(set(before[n]) != set(after[n]) for n in before),
        "images_rebuilt": session.image_refs() != refs,
        "unhealthy_events": _unhealthy_events(session, since),
    }


def run(settings=None, rounds: int = DEFAULT_ROUNDS, out: Path | None = OUT, progress=print) -> dict:
    """`tilt up`, the stress rounds, `tilt down`; writes the Markdown report to OUT (None: don't)."""
    settings = settings or settingsmod.load()
    started = datetime.now(UTC)
    t0 = time.monotonic()
    with live.TiltSession(settings, progress=progress) as session:
        progress(f"tilt up on port {session.port} (log {session.log_path})")
        startup = session.wait_ready()
        result = stress(session, rounds=rounds, progress=progress)
    result.update(startup_s=startup, started=started.isoformat(timespec="seconds"),
                  took_s=time.monotonic() - t0, load_avg=os.getloadavg(), cores=os.cpu_count())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(format_report(result))
        out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
        progress(f"report: {out}")
    return result


# ------------------------------------------------------------------------------------ report

def _quantiles(values: list[float]) -> str:
    if not values:
        return "- | - | - | -"
    values = sorted(values)
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
    return f"{statistics.median(values):.2f} s | {q[8]:.2f} s | {values[-1]:.2f} s | {len(values)}"


def format_report(result: dict) -> str:
    lines = ["| tier | save | median | p90 | max | saves |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name in live.TIERS:
        for kind in ("plain", "busy", "syntax error, then fix"):
            runs = [s for s in result["saves"] if s["tier"] == name and s["kind"] == kind]
            label = {"plain": "plain", "busy": "CPU busy", "syntax error, then fix": "fix after a syntax error"}[kind]
            done = [s for s in runs if not s.get("error")]
            failed = f" ({len(runs) - len(done)} never answered within {SAVE_TIMEOUT_S:.0f} s)" if len(done) < len(runs) else ""
            lines.append(f"| {name} | {label}: Service answers{failed} | {_quantiles([s['service_s'] for s in done])} |")
            lines.append(f"| {name} | {label}: every replica answers | {_quantiles([s['all_s'] for s in done])} |")
    totals = result["probe_totals"]
    probes = sum(totals.values())
    failed = {k: v for k, v in totals.items() if k != "ok"}
    broken = [s["while_broken"] for s in result["saves"] if "while_broken" in s]
    kept = sum(b.get("previous code", 0) for b in broken)
    held = sum(sum(b.values()) for b in broken)
    summary = [
        f"- saves: {len(result['saves'])} ({result['rounds']} rounds x 2 tiers x plain / CPU busy / "
        "syntax error then fix)",
        f"- container restarts: **{result['restarts']}**; pods replaced: {'yes' if result['pods_replaced'] else 'no'}; "
        f"images rebuilt: {'yes' if result['images_rebuilt'] else 'no'}",
        f"- probe requests (GET /healthz, {PROBE_TIMEOUT_S:.0f} s timeout, every Service and pod IP, all along): "
        f"{probes}; refused: **{totals.get('refused', 0)}**; other failures: "
        f"{', '.join(f'{k} {v}' for k, v in sorted(failed.items()) if k != 'refused') or 'none'}",
        f"- while a syntax error was saved: {kept} of {held} Service answers came from the previous code",
        f"- kubelet probe failures (Unhealthy events): {len(result['unhealthy_events'])}",
    ]
    head = (f"Live-update stress benchmark, {result.get('started', '')} UTC, {result.get('cores')} cores, "
            f"load average after the run {', '.join(f'{x:.1f}' for x in result.get('load_avg', ()))}; "
            f"{result.get('took_s', 0):.0f} s in all (`python -m bench.reload --rounds {result['rounds']}`).")
    text = [head, "", *summary, "", "save -> answer (the new field through the NodePort Service; on every replica's pod IP):", "",
            *lines]
    if result["first_failures"]:
        text += ["", "First failed probes:", "", *[f"- {f}" for f in result["first_failures"]]]
    if result["unhealthy_events"]:
        text += ["", "Unhealthy events:", "", *[f"- {e}" for e in result["unhealthy_events"]]]
    return "\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reload", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds per tier (3 saves each)")
    parser.add_argument("--out", type=Path, default=OUT, help="Markdown report (a .json beside it)")
    args = parser.parse_args(argv)
    try:
        result = run(rounds=args.rounds, out=args.out)
    except UserError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 1
    print(format_report(result))
    return 0 if result["restarts"] == 0 and not result["probe_totals"].get("refused") else 3


if __name__ == "__main__":
    sys.exit(main())
