"""`invoke bench`: every figure of docs/benchmarks.md, measured in one run, into one report.

Sections (``--only``/``--skip`` pick them): api (createlist/clear vs the per-item baseline, on
loopback), build (`invoke build` with nothing changed), deploy (clean -> all Ready, against the
seed's minReadySeconds: 120), tilt (save -> new code answering, vs a full rebuild), reload (the
live-update stress run), images (no-cache build, size, memory at rest), cluster (`cluster.up` and
`cluster.down` with 1 and 3 nodes), nodeloss (the app while the storage node is lost), portforward
(requests through port-forwards while both tiers roll, kubectl's and twotier's). The figures
measured once, not by this command, are the `one-off` block, each with its command and date.

The report, build/bench.md, holds one block per section between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->``, each ending with the command, commit, date and machine that made it.
``regenerate()`` (`invoke bench.docs`) copies every block of the report into the same markers of
docs/benchmarks.md, so the tables there are always a run's output.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from pathlib import Path

from bench import api as apibench
from bench import invoke_task
from twotier import shape
from twotier.errors import UserError
from twotier.images import build as images
from twotier.shape import BUILD, ROOT
from twotier.tables import markdown

REPORT = BUILD / "bench.md"
DOCS = ROOT / "docs" / "benchmarks.md"
SECTIONS = ("api", "storage", "build", "deploy", "tilt", "reload", "images", "cluster", "nodeloss", "portforward")
BLOCK = re.compile(r"<!-- bench:(?P<name>[\w-]+) -->\n(?P<body>.*?)\n?<!-- /bench:(?P=name) -->", re.S)

#: figures the README states that `invoke bench` does not measure: (figure, command, when)
ONE_OFF = (
    ("the production server bake-off (six servers, hostile clients)", "see docs/decisions/server.md",
     "2026-12-01, commit 21f1876"),
    ("first build of the cluster's binaries: about 10 min (Tilt 5 min 42 s)",
     "`invoke cluster.build` and `invoke cluster.build --component tilt` with an empty /var/cache/twotier",
     "2026-11"),
    ("CI: 1382 s in all, pytest 838 passed in 1275 s", "`CI=true bash .ci/run` on a clean clone, warm caches",
     "2026-12-01 21:52 UTC, commit 7d4581b"),
    ("`./bootstrap.sh up` with the binaries cached: 228 s the first time, 13-20 s after",
     "`pytest tests/e2e/test_readme.py -s` (prints each command's time)", "2026-12-01"),
    ("app node lost: out-svc drops the lost replica after 46.5-47.1 s (node-monitor-grace-period)",
     "`pytest tests/e2e/test_multinode.py -s -k app_node_lost`", "2026-12-01"),
    ("Werkzeug's reloader under the same stress: 8 restarts, 1976 of 7795 probes refused",
     "`python -m bench.reload --rounds 3` at ee59133 with a3faa37's dev server", "2026-12-01 14:53 UTC"),
)


def provenance(command: str) -> str:
    """The line that ends every block: what made it, from which commit, when, on what."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "twotier", "services", "k8s", "bench"],
                           cwd=ROOT).returncode != 0
    return (f"_{command}; commit {commit}{' (with local changes)' if dirty else ''}, "
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; {machine()}_")


def machine() -> str:
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0]
    return f"{platform.node()}, {cpus} CPUs, load average {load:.1f}, {platform.platform(terse=True)}"


def api_section(settings, progress, sizes: str = "10,100,1000,10000", repeat: int = 3, **_) -> str:
    rows = apibench.measure(apibench.parse_sizes(sizes), repeat=repeat, progress=progress)
    goals = [f"- goal {text}: {({True: 'met', False: 'NOT MET', None: '-'})[met]}"
             for text, met in apibench.goals(rows)]
    return (apibench.table(rows, markdown=True) + f"\n\nBoth services under granian on loopback, medians of {repeat};"
            " the baseline is the tutorial's design (one request per item, a new connection each).\n\n"
            + "\n".join(goals))


def storage_section(settings, progress, **_) -> str:
    from bench import storage

    return (storage.run(progress=progress) + "\n\nBoth trees under granian on loopback; \"before\" is "
            f"the services at {storage.DEFAULT_BEFORE}, before the storage tier's second round "
            "(fsync before answers, listings off the event loop, bodies checked before parsing).")


def build_section(settings, progress, **_) -> str:
    """`invoke build` of every stage when nothing changed (the content-derived tags match)."""
    rows = []
    for stage in shape.load().stages:
        invoke_task("build", "--stage", stage)  # whatever is missing is built first
        rows.append((f"`invoke build --stage {stage}`, nothing changed", f"{invoke_task('build', '--stage', stage):.1f} s"))
    return markdown(["command", "wall time"], rows)


def deploy_section(settings, progress, **_) -> str:
    """Deploy time of the full stage from clean to all Ready (images already pushed)."""
    invoke_task("push", "--stage", "full")
    rows = []
    for label, overlay in (("twotier (readiness probes)", ""),
                           ("the tutorial's `minReadySeconds: 120` (`seed-timing` component)", "seed-timing")):
        invoke_task("clean")
        progress(f"deploy, {label} ...")
        took = invoke_task("deploy", "--stage", "full", env={"INVOKE_TWOTIER_OVERLAY": overlay,
                                                              "INVOKE_TWOTIER_TIMEOUTS_ROLLOUT": "400"})
        rows.append((label, took))
        progress(f"  {took:.1f} s")
    invoke_task("clean")
    return markdown(["`invoke deploy --stage full`, clean -> all Ready", "wall time"],
                    [(label, f"{took:.1f} s") for label, took in rows])


def tilt_section(settings, progress, edits: int = 5, **_) -> str:
    from bench import tilt as tiltbench

    invoke_task("clean")  # tilt deploys the same objects
    return tiltbench.format_table(tiltbench.measure(settings, edits=edits, progress=progress))


def reload_section(settings, progress, rounds: int = 6, **_) -> str:
    from bench import reload as reloadbench

    invoke_task("clean")
    return reloadbench.format_report(reloadbench.run(settings, rounds=rounds, out=None, progress=progress))


def cluster_section(settings, progress, **_) -> str:
    from bench import cluster

    return cluster.cluster_section(settings, progress)


def nodeloss_section(settings, progress, **_) -> str:
    from bench import cluster

    return cluster.nodeloss_section(settings, progress)


def portforward_section(settings, progress, **_) -> str:
    from bench import portforward

    return portforward.format_table(portforward.measure(settings, progress=progress))


def one_off() -> str:
    return markdown(["figure (measured once, not by `invoke bench`)", "command", "when"], ONE_OFF)


def images_section(settings, progress, **_) -> str:
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
    return (markdown(["image", "no-cache build", "size", "memory at rest MiB (container / summed RSS)"], rows)
            + f"\n\nBase image: {base or 'Dockerfile default'}; container = what the container's cgroup is"
              " charged, as `docker stats` shows it and a memory limit counts it; summed RSS counts the"
              " pages the server's master and 2 workers share once per process.")


def _at_rest_env(tier: shape.Tier) -> dict[str, str]:
    """What a tier's image needs to start alone: the storage tier its items directory, a tier that
    uses others their addresses (never called at rest)."""
    env = {f"{tier.env_prefix}_STORAGE": "/tmp/items"} if tier.name == "storage" else {}
    return env | {f"{shape.load().tier(used).env_prefix}_API": f"http://127.0.0.1:{shape.load().tier(used).port}"
                  for used in tier.uses}


#: the environment each service image needs to start
AT_REST_ENV = {name: _at_rest_env(tier) for name, tier in shape.load().tiers.items()}


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


def choose(only: str = "", skip: str = "") -> list[str]:
    named = [s for s in f"{only},{skip}".split(",") if s]
    unknown = [s for s in named if s not in SECTIONS]
    if unknown:
        raise UserError(f"unknown benchmark section(s): {', '.join(unknown)}", hint=f"choose from {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if (not only or s in only.split(",")) and s not in skip.split(",")]


def block(name: str, body: str, stamp: str = "") -> str:
    return f"<!-- bench:{name} -->\n{body.rstrip()}\n" + (f"\n{stamp}\n" if stamp else "") + f"<!-- /bench:{name} -->"


def run(settings, only: str = "", skip: str = "", progress=print, report: Path = REPORT, **options) -> str:
    """Measure the chosen sections (all by default) and write the report; returns its text.
    OPTIONS reach the sections: sizes, repeat (api), edits (tilt), rounds (reload)."""
    chosen = choose(only, skip)
    command = "`invoke bench" + (f" --only {only}" if only else "") + (f" --skip {skip}" if skip else "") + "`"
    stamp = provenance(command)  # one run: every block says the same command, commit, start and machine
    parts = [f"# twotier benchmark, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC\n\n{stamp}\n"]
    for section in chosen:
        progress(f"== {section}")
        t0 = time.monotonic()
        body = globals()[f"{section}_section"](settings, progress, **options)
        parts.append(f"## {section} ({time.monotonic() - t0:.0f} s to measure)\n\n{block(section, body, stamp)}\n")
        print(body, flush=True)
    parts.append(f"## one-off\n\n{block('one-off', one_off())}\n")
    report.parent.mkdir(exist_ok=True)
    report.write_text("\n".join(parts))
    progress(f"report written to {report}")
    return "\n".join(parts)


def blocks(text: str) -> dict[str, str]:
    """{name: the block's whole text, markers included} of a report or a doc."""
    return {m.group("name"): m.group(0) for m in BLOCK.finditer(text)}


def regenerate(report: Path = REPORT, docs: tuple[Path, ...] = (DOCS,), out=print) -> dict[Path, list[str]]:
    """Copy every block of REPORT into the same markers of each of DOCS; returns {doc: names replaced}.
    A doc's block that the report lacks is left as it is (and said)."""
    if not report.exists():
        raise UserError(f"no benchmark report at {report}", "run `invoke bench` (or `invoke bench --only api`) first")
    fresh = blocks(report.read_text())
    done = {}
    for doc in docs:
        if not doc.exists():
            raise UserError(f"{doc} does not exist", "pass --docs with the file that holds the bench markers")
        text = doc.read_text()
        names = list(blocks(text))
        if not names:
            raise UserError(f"{doc} has no <!-- bench:NAME --> markers", f"markers it can take: {', '.join(fresh)}")
        replaced = [n for n in names if n in fresh]
        doc.write_text(BLOCK.sub(lambda m: fresh.get(m.group("name"), m.group(0)), text))
        done[doc] = replaced
        kept = [n for n in names if n not in fresh]
        left = f"; not in this report, left as they were: {', '.join(kept)}" if kept else ""
        out(f"{doc}: {len(replaced)} tables regenerated ({', '.join(replaced) or 'none'}){left}")
    return done
