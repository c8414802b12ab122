"""`invoke bench`: every speed number of the README, measured side by side in one run.

Sections (each can be skipped): api (createlist/clear vs the per-item baseline, loopback),
deploy (clean -> all Ready for the full stage, against the seed's minReadySeconds: 120),
tilt (save -> new code answering through the Service, vs a full rebuild), images (no-cache build
time and size). Writes the tables to stdout and to build/bench.md.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from twotier import apibench, images
from twotier.errors import UserError
from twotier.tables import table

# New modules already live in the twotier/bench/ folder this module is becoming; until it
# moves there, importing twotier.bench.<name> finds them (a module with __path__ is a package).
__path__ = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench")]

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "build" / "bench.md"
SECTIONS = ("api", "deploy", "tilt", "images")


def _invoke(*args: str, env: dict | None = None) -> float:
    """Run an invoke task as a user would; return its wall time in seconds."""
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    took = time.monotonic() - start
    if res.returncode != 0:
        raise UserError(f"`invoke {' '.join(args)}` failed during the benchmark:\n{(res.stdout + res.stderr)[-1500:]}")
    return took


def api_section(sizes: str, repeat: int, progress) -> str:
    rows = apibench.measure(apibench.parse_sizes(sizes), repeat=repeat, progress=progress)
    return apibench.table(rows)


def deploy_section(progress) -> str:
    """Deploy time of the full stage from clean to all Ready (images already pushed)."""
    _invoke("push", "--stage", "full")
    rows = []
    for label, overlay in (("twotier (readiness probes)", ""), ("seed timing (minReadySeconds: 120)", "seed-timing")):
        _invoke("clean")
        progress(f"deploy, {label} ...")
        took = _invoke("deploy", "--stage", "full", env={"INVOKE_TWOTIER_OVERLAY": overlay,
                                                          "INVOKE_TWOTIER_TIMEOUTS_ROLLOUT": "400"})
        rows.append((label, f"{took:.1f} s"))
        progress(f"  {took:.1f} s")
    _invoke("clean")
    ratio = float(rows[1][1].split()[0]) / float(rows[0][1].split()[0])
    rows.append(("ratio", f"{ratio:.0f}x faster"))
    return table(["`invoke deploy --stage full`, clean -> all Ready", "wall time"], rows)


def tilt_section(edits: int, progress) -> str:
    from twotier import tiltbench

    _invoke("clean")  # tilt deploys the same objects
    result = tiltbench.measure(edits=edits, progress=progress)
    return tiltbench.format_table(result)


def images_section(settings, progress) -> str:
    base = images.resolve_base_image(settings)
    rows = []
    seen = set()
    for stage in ("hello", "full"):
        for img in images.plan(settings, stage):
            if img.name in seen:
                continue
            seen.add(img.name)
            args = [images.docker_bin(), "build", "--no-cache", "-q", "-t", f"twotier-bench/{img.name}:nocache",
                    "-f", str(img.dockerfile_path)]
            if base:
                args += ["--build-arg", f"BASE_IMAGE={base}"]
            progress(f"no-cache build of {img.name} ...")
            start = time.monotonic()
            res = subprocess.run([*args, str(img.context)], capture_output=True, text=True,
                                 env={**os.environ, "DOCKER_BUILDKIT": "0"})
            took = time.monotonic() - start
            if res.returncode != 0:
                raise UserError(f"building {img.name} failed: {res.stderr[-800:]}")
            size = images.image_size(f"twotier-bench/{img.name}:nocache")
            subprocess.run([images.docker_bin(), "rmi", "-f", f"twotier-bench/{img.name}:nocache"], capture_output=True)
            rows.append((img.name, f"{took:.1f} s", f"{size / 1e6:.0f} MB"))
    return table(["image", "no-cache build", "size"], rows) + f"\n(base image: {base or 'Dockerfile default'})"


def run(settings, only: str = "", skip: str = "", sizes: str = "10,100,1000,10000", repeat: int = 3,
        edits: int = 5, progress=print) -> str:
    chosen = [s for s in SECTIONS if (not only or s in only.split(",")) and s not in skip.split(",")]
    unknown = [s for s in (only.split(",") if only else []) + (skip.split(",") if skip else []) if s not in SECTIONS]
    if unknown:
        raise UserError(f"unknown benchmark section(s): {', '.join(unknown)}", hint=f"choose from {', '.join(SECTIONS)}")
    head = (f"# twotier benchmark, {time.strftime('%Y-%m-%d %H:%M')} UTC\n\n"
            f"machine: {apibench.machine()}; {platform.platform()}\n")
    parts = [head]
    for section in chosen:
        progress(f"== {section}")
        t0 = time.monotonic()
        if section == "api":
            body = api_section(sizes, repeat, progress)
        elif section == "deploy":
            body = deploy_section(progress)
        elif section == "tilt":
            body = tilt_section(edits, progress)
        else:
            body = images_section(settings, progress)
        parts.append(f"## {section}  ({time.monotonic() - t0:.0f} s to measure)\n\n```\n{body}\n```\n")
        print(body, flush=True)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text("\n".join(parts))
    progress(f"report written to {REPORT.relative_to(ROOT)}")
    return "\n".join(parts)
