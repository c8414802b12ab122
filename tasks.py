"""twotier: the tutorial's two-tier Flask system on Kubernetes, as Invoke tasks.

`invoke --list` shows every task; `invoke --help TASK` shows its options. This file is the table
of contents: each task reads the settings once (twotier.settings) and hands them to the
machinery in twotier/ (the system's shape: system.yaml) or localcluster/. docs/configuration.md
lists the tasks by purpose.
"""
from invoke import Collection, task
from invoke.exceptions import Exit

from twotier.settings import defaults
from twotier.taskutil import friendly

# One help string per concept, shared by every task that takes the option.
HELP = {
    "stage": "hello | storage | full: the tutorial's Step 1-2, deploy1.yaml, deploy2.yaml (default: twotier.stage)",
    "overlay": "comma-separated components of k8s/components/ (default: twotier.overlay; see k8s/README.md)",
    "namespace": "namespace to act in (default: twotier.namespace)",
    "context": "kube context to act on (default: twotier.context, else the kubeconfig's current one)",
    "allow_context": "allow this context although it does not look local (safety override)",
    "target": "Dockerfile target: '' = production, dev = reloading server",
    "rollout_timeout": "seconds to wait for the rollout (default: twotier.timeouts.rollout)",
    "storage_dir": "directory for the items, created if missing (default: twotier.serve.storage_dir; "
                   "empty = a temporary one, removed on exit)",
    "storage_port": "storage API port on 127.0.0.1 (default: twotier.serve.storage_port = 5000)",
    "app_port": "application API port on 127.0.0.1 (default: twotier.serve.app_port = 5001)",
}
KUBE_HELP = {k: HELP[k] for k in ("context", "namespace", "allow_context")}


def _settings(c, **flags):
    """The settings, read once: invoke.yaml < twotier.local.yaml < INVOKE_TWOTIER_* < these flags."""
    from twotier import shape
    from twotier.settings import Settings

    s = Settings.from_invoke(c.config).with_flags(**flags)
    shape.load().stage(s.stage)  # an unknown stage fails here, before anything else
    return s


def _connect(s, allow_context):
    from twotier.ops.cluster import connect

    return connect(s, allow_context)


# ---------------------------------------------------------------------------------------------
# Run locally: both services as processes on this machine (the tutorial's sanity check)
# ---------------------------------------------------------------------------------------------

def _serve(c, storage_dir, storage_port, app_port, dev):
    from twotier.dev import servers

    conf = _settings(c).serve
    servers.serve(storage_dir if storage_dir is not None else conf.storage_dir,
                  {"storage": storage_port or conf.storage_port, "app": app_port or conf.app_port}, dev=dev)


_SERVE_HELP = {k: HELP[k] for k in ("storage_dir", "storage_port", "app_port")}


@task(help=_SERVE_HELP)
@friendly
def serve(c, storage_dir=None, storage_port=None, app_port=None):
    """Run both services with the production server on 127.0.0.1 in the foreground; Ctrl-C stops both."""
    _serve(c, storage_dir, storage_port, app_port, dev=False)


@task(help=_SERVE_HELP)
@friendly
def dev(c, storage_dir=None, storage_port=None, app_port=None):
    """Like serve, with the dev server: an edit to a service's code reloads it in ~0.2 s."""
    _serve(c, storage_dir, storage_port, app_port, dev=True)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

@task(help={"stage": HELP["stage"], "target": HELP["target"]})
@friendly
def build(c, stage=None, target=""):
    """Build the stage's images (content-derived tags; unchanged images are not rebuilt)."""
    from twotier.images import build as images

    s = _settings(c, stage=stage)
    for img in images.build(s, s.stage, target=target):
        print(f"{img.ref}  {images.image_size(img.ref) / 1e6:.0f} MB")


@task(help={"stage": HELP["stage"], "target": HELP["target"]})
@friendly
def push(c, stage=None, target=""):
    """Build (if needed) and push the stage's images to twotier.registry."""
    from twotier.images import build as images

    s = _settings(c, stage=stage)
    images.push(s, s.stage, target=target)


@task(name="base-image", help={"force": "rebuild even if the image exists from the same recipe"})
@friendly
def base_image(c, force=False):
    """Build the local Debian base image (debootstrap + docker import) used when base_image is `local`."""
    from twotier.images import build as images

    images.ensure_local_base(force=force)


# ---------------------------------------------------------------------------------------------
# Deploy, inspect, debug, clean
# ---------------------------------------------------------------------------------------------

@task(help={"stage": HELP["stage"], "overlay": HELP["overlay"], "namespace": HELP["namespace"]})
@friendly
def render(c, stage=None, overlay=None, namespace=None):
    """Print the exact YAML that deploy applies for a stage (image tags from the sources' content)."""
    from twotier.ops import render as manifests

    s = _settings(c, stage=stage, overlay=overlay, namespace=namespace)
    print(manifests.to_yaml(manifests.render_stage(s, s.stage)), end="")


@task(help={"stage": HELP["stage"], "timeout": HELP["rollout_timeout"],
            "dry_run": "show what would change (server-side dry run) without changing anything", **KUBE_HELP})
@friendly
def deploy(c, stage=None, dry_run=False, timeout=None, context=None, namespace=None, allow_context=None):
    """Apply a stage to the cluster (server-side apply) and wait until it has rolled out."""
    from twotier.ops import stage as ops

    s = _settings(c, stage=stage, context=context, namespace=namespace,
                  timeouts__rollout=float(timeout) if timeout else None)
    ops.deploy(_connect(s, allow_context), s, dry_run=dry_run)


@task(help={"stage": HELP["stage"], "timeout": HELP["rollout_timeout"], **KUBE_HELP})
@friendly
def up(c, stage=None, timeout=None, context=None, namespace=None, allow_context=None):
    """The main job: build and push the images, deploy the stage, run the smoke checks."""
    from twotier.images import build as images
    from twotier.ops import stage as ops

    s = _settings(c, stage=stage, context=context, namespace=namespace,
                  timeouts__rollout=float(timeout) if timeout else None)
    cluster = _connect(s, allow_context)  # fail fast, before minutes of building
    print(f"== build and push ({s.stage})")
    built = images.push(s, s.stage)
    print(f"== deploy ({s.stage})")
    ops.deploy(cluster, s, images.image_map(built))
    print(f"== smoke ({s.stage})")
    ops.smoke(cluster, s, loader_ref=next(img.ref for img in built if img.role == "loader"))


@task(help=dict(KUBE_HELP))
@friendly
def status(c, context=None, namespace=None, allow_context=None):
    """Show the project's objects in the cluster: readiness, age, NodePort URLs."""
    from twotier.kube.cleanup import targets_from
    from twotier.ops import render as manifests
    from twotier.ops.status import status_report

    s = _settings(c, context=context, namespace=namespace)
    cluster = _connect(s, allow_context)
    print(status_report(cluster, targets_from(manifests.every_stage_objects(s), cluster.namespace),
                        access=s.access))


@task(help={"tier": "storage | app | hello | loader (default: every pod of the project)",
            "follow": "keep streaming new lines (Ctrl-C stops)",
            "tail": "lines per pod to show first (default 50)", **KUBE_HELP})
@friendly
def logs(c, tier=None, follow=False, context=None, namespace=None, allow_context=None, tail=50):
    """Show the logs of the project's pods, one tier or all, each line prefixed by its pod."""
    import shlex

    from twotier.errors import UserError
    from twotier.ops import logs as podlogs
    from twotier.ops.cluster import kubectl

    s = _settings(c, context=context, namespace=namespace)
    kubectl_bin = kubectl()
    cluster = _connect(s, allow_context)
    argv = podlogs.logs_argv(kubectl_bin, cluster, podlogs.tier_selector(cluster, tier), follow, int(tail))
    result = c.run(shlex.join(argv), env=cluster.kubectl_env(), warn=True, pty=False)
    if result is not None and result.exited:
        raise UserError(f"kubectl logs exited with {result.exited}", "see its message above",
                        code=result.exited)


@task(help={"shell": "shell to run in the pod (default sh)", **KUBE_HELP})
@friendly
def loader_shell(c, shell="sh", context=None, namespace=None, allow_context=None):
    """Open an interactive shell in the `loader` pod (created if missing) to curl the services."""
    from twotier.errors import UserError
    from twotier.ops import loader
    from twotier.ops.cluster import kubectl

    loader.require_tty()
    kubectl_bin = kubectl()
    s = _settings(c, context=context, namespace=namespace)
    cluster = _connect(s, allow_context)
    loader.start_loader(cluster, s)
    print("try: curl -s in-svc:5000/items   (exit or Ctrl-D leaves the shell; the pod stays)")
    code = loader.hand_over(loader.shell_argv(kubectl_bin, cluster, shell), cluster.kubectl_env())
    if code:
        raise UserError(f"the loader shell exited with {code}", code=code)


@task(help={"stage": HELP["stage"], **KUBE_HELP})
@friendly
def smoke(c, stage=None, context=None, namespace=None, allow_context=None):
    """Run the tutorial's functional checks from the host and the loader pod; one PASS/FAIL line each."""
    from twotier.ops import stage as ops

    s = _settings(c, stage=stage, context=context, namespace=namespace)
    ops.smoke(_connect(s, allow_context), s)


@task(help={"seconds": "how long to drive load, 1-1800 (default 60)",
            "concurrency": "parallel clients, 1-32 (default 8)",
            "service": "the Service to drive: only the project's out-svc is accepted", **KUBE_HELP})
@friendly
def load(c, seconds=60, concurrency=8, service="out-svc", context=None, namespace=None, allow_context=None):
    """Drive createlist/clear through out-svc; a row every 5 s: requests, failures, p50/p99, api-dep replicas."""
    from twotier.ops import load as loadmod

    s = _settings(c, context=context, namespace=namespace)
    seconds, concurrency = loadmod.check_bounds(seconds, concurrency, service)  # bad input: before connecting
    total = loadmod.run(_connect(s, allow_context), seconds, concurrency, service=service)
    if total["failures"]:
        raise Exit(code=1)


@task(help={"timeout": "seconds to wait for each deletion phase (default: twotier.timeouts.delete)",
            **KUBE_HELP})
@friendly
def clean(c, timeout=None, context=None, namespace=None, allow_context=None):
    """Delete everything the project created (all stages, loader pod, PVC, PV) and wait until gone."""
    from twotier.ops import stage as ops

    s = _settings(c, context=context, namespace=namespace,
                  timeouts__delete=float(timeout) if timeout else None)
    ops.clean(_connect(s, allow_context), s)


# ---------------------------------------------------------------------------------------------
# The dev loop (tilt.*)
# ---------------------------------------------------------------------------------------------

@task(name="ci", help={"timeout": "seconds tilt ci may take (default: twotier.timeouts.tilt_ci)"})
@friendly
def tilt_ci(c, timeout=None):
    """Run `tilt ci` (build, deploy, smoke) on the configured cluster, then `tilt down`; fail if anything failed."""
    from twotier.dev import tiltrun

    s = _settings(c)
    tiltrun.run_ci(s, timeout=float(timeout or s.timeouts.tilt_ci))


@task(name="smoke")
@friendly
def tilt_smoke(c):
    """Run the smoke checks through the loader pod `tilt up` runs (the Tiltfile's smoke button)."""
    from twotier.dev import tiltrun

    tiltrun.smoke_in_tilt_loader(_settings(c))


tilt = Collection("tilt", tilt_ci, tilt_smoke)

# ---------------------------------------------------------------------------------------------
# The local cluster (cluster.*)
# ---------------------------------------------------------------------------------------------


def _provider(c, provider: str = ""):
    """(name, module) of the cluster provider (flag, else setting cluster_provider): localcluster,
    or its kind provider (docs/kind.md)."""
    from twotier.errors import UserError
    from twotier.settings import CLUSTER_PROVIDERS

    name = provider or _settings(c).cluster_provider
    if name not in CLUSTER_PROVIDERS:
        raise UserError(f"--provider {name}: unknown provider", hint=f"choose one of {', '.join(CLUSTER_PROVIDERS)}")
    if name == "kind":
        from localcluster.kind import provider as kind
        return name, kind
    import localcluster
    return name, localcluster


@task(name="up", help={"nodes": "number of nodes (default: setting cluster_nodes, 1); adds or removes nodes 2..N",
                        "kubernetes": "Kubernetes release, e.g. v1.35.4 (default: setting cluster_kubernetes, "
                                      "else localcluster/versions.env's); built once, the cluster is made anew",
                        "provider": "local | kind (a kind cluster with a node image built here, docs/kind.md); "
                                    "default: setting cluster_provider, local"})
@friendly
def cluster_up(c, nodes=0, kubernetes="", provider=""):
    """Start the local Kubernetes cluster (its binaries build once); idempotent."""
    s = _settings(c)
    name, chosen = _provider(c, provider)
    if name == "kind":
        return chosen.up(nodes=int(nodes) or 1)
    chosen.up(nodes=int(nodes) or s.cluster_nodes, kubernetes=kubernetes or s.cluster_kubernetes)


@task(name="down", help={"purge": "also delete the local registry's images",
                          "provider": "'kind': remove the kind cluster's node containers and network"})
@friendly
def cluster_down(c, purge=False, provider=""):
    """Stop the local cluster; remove every process, rule and mount it made."""
    name, chosen = _provider(c, provider)
    if name == "kind":
        return chosen.down()
    chosen.down(purge=purge)


@task(name="status", help={"provider": "'kind': the kind cluster's node containers and nodes"})
@friendly
def cluster_status(c, provider=""):
    """Show the local cluster's processes and node readiness."""
    from twotier.tables import table

    print(table(["COMPONENT", "PID", "STATE"], _provider(c, provider)[1].status_rows()))


@task(name="kubeconfig", help={"provider": "'kind': the kind cluster's kubeconfig"})
@friendly
def cluster_kubeconfig(c, provider=""):
    """Print the local cluster's kubeconfig path: export KUBECONFIG=$(...)."""
    print(_provider(c, provider)[1].kubeconfig_path())


@task(name="env", help={"provider": "'kind': KUBECONFIG and the settings invoke up needs on the kind cluster"})
@friendly
def cluster_env(c, provider=""):
    """Print shell lines for the local cluster: eval "$(invoke cluster.env)" sets KUBECONFIG and
    puts invoke, the pinned kubectl and tilt on PATH."""
    from twotier.dev.shellenv import env_lines

    name, chosen = _provider(c, provider)
    print("\n".join(chosen.env_lines() if name == "kind" else env_lines()))


@task(name="build", help={"component": "one of kubernetes, etcd, containerd, cri-tools, coredns, tilt "
                                       "(default: all cluster parts)"})
@friendly
def cluster_build(c, component=""):
    """Build the cluster's binaries from source (cached by version)."""
    import localcluster

    localcluster.ensure_binaries([component] if component else localcluster.CLUSTER_BUILDS)


cluster = Collection("cluster", cluster_up, cluster_down, cluster_status, cluster_kubeconfig, cluster_env,
                     cluster_build)

# ---------------------------------------------------------------------------------------------
# Quality and speed: tests, lint, benchmarks (bench.*)
# ---------------------------------------------------------------------------------------------


@task(help={"tier": "unit, integration, e2e or all (default)", "k": "only tests matching this pytest -k expression",
            "exitfirst": "stop at the first failure"})
@friendly
def test(c, tier="all", k="", exitfirst=False):
    """Run the tests (the README's test command); e2e brings the cluster up."""
    import shlex
    import sys

    import localcluster

    paths = {"unit": "tests/unit", "integration": "tests/integration", "e2e": "tests/e2e", "all": "tests"}
    if tier not in paths:
        raise Exit(f"error: unknown tier {tier!r}; choose one of {', '.join(paths)}", code=2)
    if tier in ("e2e", "all"):
        localcluster.up()
        localcluster.ensure_binaries(["tilt"])
    args = [sys.executable, "-m", "pytest", paths[tier]] + (["-k", k] if k else []) + (["-x"] if exitfirst else [])
    res = c.run(shlex.join(args), warn=True, pty=False)
    if res.exited:
        raise Exit(code=res.exited)


@task(help={"fix": "let ruff fix what it can"})
@friendly
def lint(c, fix=False):
    """Check the code (ruff) and the manifests (schemas, security policy) of every stage and component."""
    import sys

    from twotier import lint as checks

    code = checks.run(fix=fix)
    if code:
        raise Exit(code=code)
    print("lint: clean", file=sys.stderr)


@task(name="all", default=True,
      help={"only": "comma-separated sections to run: api, storage, build, deploy, tilt, reload, images, "
                    "portforward, cluster, nodeloss (default: all; cluster and nodeloss take the local "
                    "cluster down and up)",
            "skip": "comma-separated sections to leave out",
            "sizes": "item counts for the api section (default 10,100,1000,10000)",
            "edits": "live-update edits per tier for the tilt section (default 5)",
            "rounds": "rounds per tier for the reload section (default 6)"})
@friendly
def bench_all(c, only="", skip="", sizes="10,100,1000,10000", edits=5, rounds=6):
    """Measure every benchmark figure of the docs in one run into one report (build/bench.md)."""
    from bench import report

    report.run(_settings(c), only=only, skip=skip, sizes=sizes, edits=int(edits), rounds=int(rounds))


@task(name="docs", help={"report": "the report to copy from (default build/bench.md)",
                         "docs": "comma-separated files whose <!-- bench:NAME --> blocks are replaced "
                                 "(default docs/benchmarks.md)"})
@friendly
def bench_docs(c, report="", docs=""):
    """Regenerate the benchmark tables of docs/benchmarks.md from the last `invoke bench` report."""
    from pathlib import Path

    from bench import report as bench_report

    bench_report.regenerate(Path(report) if report else bench_report.REPORT,
                            tuple(Path(d) for d in docs.split(",")) if docs else (bench_report.DOCS,))


@task(name="api", help={
    "sizes": "comma-separated item counts to time (default 10,100,1000,10000)",
    "repeat": "runs per measurement; the median is shown (default 3)",
    "baseline_max": "largest count also timed with the per-item baseline (default 1000)",
    "check": "exit non-zero unless the goals are met (createlist/1000 >= 20x baseline, "
             "createlist/10000 < 0.5 s)",
})
@friendly
def bench_api(c, sizes="10,100,1000,10000", repeat=3, baseline_max=1000, check=False):
    """Time createlist/clear vs a per-item client (the tutorial's design) on loopback."""
    from bench import api as apibench

    apibench.main(sizes=sizes, repeat=int(repeat), baseline_max=int(baseline_max), check=check)


@task(name="reload", help={"rounds": "rounds per tier: a plain save, a save under CPU load, a syntax error then the fix "
                                     "(default 6)"})
@friendly
def bench_reload(c, rounds=6):
    """Stress Tilt's live update under `tilt up`: restarts, refused connections, save -> answer times."""
    from bench import reload as reloadbench

    reloadbench.run(_settings(c), rounds=int(rounds))


@task(name="devreload", help={"saves": "counted saves per dev server (default 20)",
                              "before": "the commit whose dev server is compared (default 50adff7, "
                                        "the Werkzeug supervisor)"})
@friendly
def bench_devreload(c, saves=20, before=""):
    """Save -> new code answering: the dev server beside the supervisor it replaced, on loopback."""
    from bench import devreload

    print(devreload.format_report(devreload.run(int(saves), before or devreload.DEFAULT_BEFORE)))


@task(name="storage", help={"before": "the commit whose services to compare with (default: the one "
                                     "before the storage tier's second round)"})
@friendly
def bench_storage(c, before=""):
    """The storage tier's defenses side by side with an earlier commit: fsync, probes, memory."""
    from bench import storage as storagebench

    print(storagebench.run(before or storagebench.DEFAULT_BEFORE, markdown=False))


bench = Collection("bench", bench_all, bench_api, bench_reload, bench_devreload, bench_storage, bench_docs)

# ---------------------------------------------------------------------------------------------
# Python dependencies (deps.*): requirements*.in -> requirements*.txt with pip-tools
# ---------------------------------------------------------------------------------------------


@task(name="upgrade", help={"package": "upgrade only this package (repeatable); default: every package"},
      iterable=["package"])
@friendly
def deps_upgrade(c, package=None):
    """Re-compile every requirements*.in to the newest versions PyPI serves; then ./bootstrap.sh and the tests."""
    from twotier import deps as pydeps

    pydeps.compile_all(upgrade=not package, packages=tuple(package or ()))


@task(name="compile")
@friendly
def deps_compile(c):
    """Re-compile every requirements*.in after an edit, keeping the existing pins where they still fit."""
    from twotier import deps as pydeps

    pydeps.compile_all(upgrade=False)


deps = Collection("deps", deps_upgrade, deps_compile)

ns = Collection(serve, dev, build, push, base_image, render, deploy, up, status, logs, loader_shell,
                smoke, clean, test, lint, tilt, cluster, bench, deps)
ns.configure({"twotier": defaults()})
ns.add_task(load)
