"""Live-update benchmark: time from saving a service's source file to the new code answering through
its Service, under `tilt up`, per tier; and the same change with live update off (image rebuild,
push and rollout).

One edit = one new field in a response of the seed's contract, with a fresh value each time
(``"tilt_probe": "<marker>"`` in ``GET /items`` of the storage API and ``GET /createlist/<n>`` of
the application API). The clock starts when the file is written and stops when the Service's
NodePort answers with the marker; for the storage tier (two replicas behind in-svc) a second time
is taken when every replica answers with it (pod IPs, reachable from the node). Live-update runs
also check that no image was built (Tilt's image map is unchanged) and no pod was replaced.

`measure(settings)` returns the numbers; `format_table(result)` prints them. The source files are
restored afterwards (and checked unchanged against git).
"""
from __future__ import annotations

import statistics
import time
import uuid

from tests.support.tilt import (
    TIERS,
    SourceEdit,
    Tier,
    TiltSession,
    git_unchanged,
    node_url,
    pod_identity,
    probe_value,
    tier_pods,
    tier_urls,
    wait_for_marker,
    wanted_replicas,
)
from twotier import settings as settingsmod
from twotier import tables
from twotier.errors import UserError
from twotier.poll import Timeout, poll


def time_edit(session: TiltSession, tier: Tier, edit: SourceEdit, timeout: float = 120) -> dict:
    """One edit of TIER's source: seconds until the Service answers, and until every replica does."""
    service, urls = tier_urls(session, tier)
    marker = uuid.uuid4().hex[:10]
    saved = edit.apply(marker)
    first, everywhere = wait_for_marker(urls, marker, timeout=timeout, first_url=service)
    return {"service_s": first - saved, "all_replicas_s": everywhere - saved, "replicas": len(urls) - 1}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure_live_update(session: TiltSession, edits: int = 5, tiers=("storage", "app"),
                        progress=print) -> dict:
    """EDITS timed live updates per tier on a running, ready session; checks nothing was rebuilt."""
    refs = session.image_refs()
    results = {}
    for name in tiers:
        tier = TIERS[name]
        pods_before = pod_identity(tier_pods(session.cluster, tier))
        runs = []
        with SourceEdit(tier) as edit:
            for i in range(edits):
                run = time_edit(session, tier, edit)
                runs.append(run)
                progress(f"{name} edit {i + 1}/{edits}: Service answered in {run['service_s']:.2f}s, "
                         f"all {run['replicas']} replica(s) in {run['all_replicas_s']:.2f}s")
        service, urls = tier_urls(session, tier)
        wait_for_marker(urls, None, first_url=service)  # the restored code is back everywhere
        pods_after = pod_identity(tier_pods(session.cluster, tier))
        if pods_after != pods_before:
            raise UserError(f"live update of {name} replaced or restarted pods: {pods_before} -> {pods_after}")
        results[name] = {
            "runs": runs,
            "service_median_s": _median([r["service_s"] for r in runs]),
            "all_replicas_median_s": _median([r["all_replicas_s"] for r in runs]),
        }
        if not git_unchanged(tier.source):
            raise UserError(f"{tier.source} differs from git after the benchmark", "check `git diff`")
    if session.image_refs() != refs:
        raise UserError(f"an image was rebuilt during live updates: {refs} -> {session.image_refs()}")
    return results


def wait_rolled_out(session: TiltSession, tier: Tier, marker: str | None, timeout: float = 600,
                    interval: float = 0.2) -> float:
    """Wait until the tier runs only new pods (as many as the Deployment wants), each answering
    with MARKER; returns the monotonic time it was first seen so."""
    def rolled_out() -> float | None:
        pods = tier_pods(session.cluster, tier)
        ips = [(p.get("status") or {}).get("podIP") for p in pods]
        if len(pods) == wanted_replicas(session.cluster, tier) and all(ips) and all(
                probe_value(f"http://{ip}:{tier.port}{tier.path}") == marker for ip in ips):
            return time.monotonic()
        return None

    try:
        return poll(rolled_out, timeout=timeout, interval=interval, what=f"{tier.deployment} rolling out")
    except Timeout:
        raise UserError(f"{tier.deployment} did not roll out the new code within {timeout:.0f}s") from None


def time_rebuild(session: TiltSession, tier: Tier, edit: SourceEdit, timeout: float = 600) -> dict:
    """One edit with live update off: until the Service answers, until the rollout is complete,
    and how long Tilt's own build step (image build, push, apply) took."""
    service = node_url(session.cluster, tier.node_port, tier.path)
    marker = uuid.uuid4().hex[:10]
    saved = edit.apply(marker)
    first, _ = wait_for_marker([service], marker, timeout=timeout)
    done = wait_rolled_out(session, tier, marker, timeout=timeout)
    return {"service_s": first - saved, "all_replicas_s": done - saved,
            "tilt_build_s": last_build_seconds(session, tier.name),
            "replicas": len(tier_pods(session.cluster, tier))}


def last_build_seconds(session: TiltSession, resource: str) -> float:
    """Duration of the resource's latest finished build, from Tilt's build history."""
    from datetime import datetime

    history = session.resource_status(resource).get("buildHistory") or []
    if not history or not history[0].get("finishTime"):
        return float("nan")
    start, finish = (datetime.fromisoformat(history[0][k].replace("Z", "+00:00"))
                     for k in ("startTime", "finishTime"))
    return (finish - start).total_seconds()


def measure_rebuild(session: TiltSession, tiers=("storage", "app"), rebuilds: int = 3,
                    progress=print) -> dict:
    """The same edit with live update off (image build + push + rollout), REBUILDS times per tier."""
    results = {}
    for name in tiers:
        tier = TIERS[name]
        runs = []
        for i in range(rebuilds):
            refs = session.image_refs()
            with SourceEdit(tier) as edit:
                run = time_rebuild(session, tier, edit)
                new_refs = session.image_refs()
            if new_refs == refs:
                raise UserError(f"no image was rebuilt for {name} with live update off")
            progress(f"{name} rebuild {i + 1}/{rebuilds}: Tilt build (image, push, apply) "
                     f"{run['tilt_build_s']:.1f}s; Service answered in {run['service_s']:.1f}s, "
                     f"rollout of {run['replicas']} replica(s) complete in {run['all_replicas_s']:.1f}s")
            runs.append(run)
            # restoring the file is one more rebuild: let it finish before the next edit
            wait_rolled_out(session, tier, None)
            session.wait_ready(timeout=600)
        results[name] = {
            "runs": runs,
            "tilt_build_median_s": _median([r["tilt_build_s"] for r in runs]),
            "service_median_s": _median([r["service_s"] for r in runs]),
            "all_replicas_median_s": _median([r["all_replicas_s"] for r in runs]),
        }
        if not git_unchanged(tier.source):
            raise UserError(f"{tier.source} differs from git after the benchmark", "check `git diff`")
    return results


def measure(settings=None, edits: int = 5, rebuilds: int = 3, progress=print) -> dict:
    """Start `tilt up`, time EDITS live updates per tier, then REBUILDS image rebuilds and rollouts
    per tier with live update off (0 = skip); `tilt down` at the end. Several minutes."""
    settings = settings or settingsmod.load()
    result: dict = {}
    with TiltSession(settings, progress=progress) as session:
        progress(f"tilt up on port {session.port} (log {session.log_path})")
        result["startup_s"] = session.wait_ready()
        result["live_update"] = measure_live_update(session, edits=edits, progress=progress)
        if rebuilds:
            session.set_args([*session.args, "--live-update=false"])
            session.wait_ready()
            result["rebuild"] = measure_rebuild(session, rebuilds=rebuilds, progress=progress)
    return result


def format_table(result: dict) -> str:
    """The numbers as a small Markdown table (the README's shape)."""
    rows = []
    for name in TIERS:
        live = (result.get("live_update") or {}).get(name)
        reb = (result.get("rebuild") or {}).get(name)
        if not live and not reb:
            continue
        cells = [name,
                 f"{live['service_median_s']:.2f} s" if live else "-",
                 f"{live['all_replicas_median_s']:.2f} s" if live else "-",
                 f"{reb['tilt_build_median_s']:.1f} s" if reb else "-",
                 f"{reb['service_median_s']:.1f} s" if reb else "-",
                 f"{reb['all_replicas_median_s']:.1f} s" if reb else "-"]
        rows.append(cells)
    lines = [tables.markdown(["tier", "live update: save -> Service answers", "all replicas answer",
                              "no live update: Tilt build (image, push, apply)", "Service answers",
                              "rollout complete"], rows)]
    lines.append("\nMedians of the runs; a save is a one-line change to a view (a new response field).")
    if "startup_s" in result:
        lines.append(f"\n`tilt up` until both tiers were ready (images cached): {result['startup_s']:.0f} s")
    return "\n".join(lines)
