"""`invoke bench`: every speed number of the README, measured side by side in one run.

Sections (each can be skipped): api (createlist/clear vs the per-item baseline, loopback),
deploy (clean -> all Ready for the full stage, against the seed's minReadySeconds: 120),
tilt (save -> new code answering through the Service, vs a full rebuild), images (no-cache build
time, size, and each service's memory at rest in its container). Writes the tables to stdout and to build/bench.md.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

from bench import api as apibench
from twotier import shape
from twotier.errors import UserError
from twotier.images import build as images
from twotier.shape import BUILD, ROOT
from twotier.tables import table

REPORT = BUILD / "bench.md"
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
    from bench import tilt as tiltbench

    _invoke("clean")  # tilt deploys the same objects
    result = tiltbench.measure(edits=edits, progress=progress)
    return tiltbench.format_table(result)


def images_section(settings, progress) -> str:
    base = images.resolve_base_image(settings)
    rows = []
    seen = set()
    for stage in shape.load().stages:
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
            ref = f"twotier-bench/{img.name}:nocache"
            size = images.image_size(ref)
            memory = "-"
            if img.role in AT_REST_ENV:
                progress(f"memory of {img.name} at rest ...")
                memory = "{:.0f} / {:.0f}".format(*container_memory(ref, AT_REST_ENV[img.role]))
            subprocess.run([images.docker_bin(), "rmi", "-f", ref], capture_output=True)
            rows.append((img.name, f"{took:.1f} s", f"{size / 1e6:.0f} MB", memory))
    return (table(["image", "no-cache build", "size", "memory at rest MiB (container / summed RSS)"], rows)
            + f"\n(base image: {base or 'Dockerfile default'}; container = what the container's cgroup is"
              " charged, as `docker stats` shows it and a memory limit counts it; summed RSS counts the"
              " pages the server's master and 2 workers share once per process)")


#: the environment each service image needs to start (the app never calls the storage at rest)
AT_REST_ENV = {"hello": {}, "storage": {"STO_STORAGE": "/tmp/items"},
               "app": {"STO_API": "http://127.0.0.1:5000"}}


def container_memory(ref: str, env: dict[str, str], settle: float = 8.0) -> tuple[float, float]:
    """Run the image as the cluster does (read-only root, /tmp writable), let its workers start,
    and return (the container's memory as `docker stats` reports it, the RSS of its processes
    summed), in MiB."""
    import psutil

    docker = images.docker_bin()
    name = f"twotier-bench-mem-{os.getpid()}"
    argv = [docker, "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp"]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    res = subprocess.run([*argv, ref], capture_output=True, text=True)
    if res.returncode != 0:
        raise UserError(f"could not start {ref} to measure its memory: {res.stderr.strip()[-400:]}")
    try:
        time.sleep(settle)
        stats = subprocess.run([docker, "stats", "--no-stream", "--format", "{{.MemUsage}}", name],
                               capture_output=True, text=True).stdout.split("/")[0].strip()
        pid = int(subprocess.run([docker, "inspect", "-f", "{{.State.Pid}}", name],
                                 capture_output=True, text=True).stdout.strip() or 0)
        if not pid:
            raise UserError(f"{ref} exited during the memory measurement (docker logs {name})")
        root = psutil.Process(pid)
        rss = sum(p.memory_info().rss for p in (root, *root.children(recursive=True))) / 2**20
        return _mib(stats), rss
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)


def _mib(text: str) -> float:
    """`docker stats` sizes ("39.12MiB", "1.2GiB", "812KiB") in MiB."""
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "kB": 1e3 / 2**20, "MB": 1e6 / 2**20, "GB": 1e9 / 2**20, "B": 1 / 2**20}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    raise UserError(f"unexpected `docker stats` memory figure: {text!r}")


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
