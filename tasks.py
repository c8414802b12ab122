"""twotier: the seed's two-tier Flask system on Kubernetes, as Invoke tasks.

`invoke --list` shows every task; `invoke --help TASK` shows its options.
Settings live under `twotier:` in invoke.yaml (override with INVOKE_TWOTIER_<KEY>).
The machinery lives in the `twotier/` package; this file is the table of contents.
"""
from invoke import Collection, task

from twotier.taskutil import friendly, settings

# ---------------------------------------------------------------------------------------------
# Run the two services on this machine (the seed's "pre-containerization sanity check")
# ---------------------------------------------------------------------------------------------

_SERVE_HELP = {
    "storage_dir": "directory for the items, created if missing (default: twotier.serve.storage_dir; "
                   "empty = a temporary one, removed on exit)",
    "storage_port": "storage API port on 127.0.0.1 (default: twotier.serve.storage_port = 5000)",
    "app_port": "application API port on 127.0.0.1 (default: twotier.serve.app_port = 5001)",
}


def _serve(c, storage_dir, storage_port, app_port, dev):
    from twotier import servers

    conf = settings(c).get("serve", {})
    servers.serve(storage_dir if storage_dir is not None else conf.get("storage_dir", ""),
                  storage_port or conf.get("storage_port", 5000),
                  app_port or conf.get("app_port", 5001), dev=dev)


@task(help=_SERVE_HELP)
@friendly
def serve(c, storage_dir=None, storage_port=None, app_port=None):
    """Run both services with gunicorn on 127.0.0.1 in the foreground; Ctrl-C stops both."""
    _serve(c, storage_dir, storage_port, app_port, dev=False)


@task(help=_SERVE_HELP)
@friendly
def dev(c, storage_dir=None, storage_port=None, app_port=None):
    """Like serve, with the dev server: an edit to a service's code reloads it in ~1 s."""
    _serve(c, storage_dir, storage_port, app_port, dev=True)


@task(name="bench-api", help={
    "sizes": "comma-separated item counts to time (default 10,100,1000,10000)",
    "repeat": "runs per measurement; the median is shown (default 3)",
    "baseline_max": "largest count also timed with the per-item baseline (default 1000)",
    "check": "exit non-zero unless the goals are met (createlist/1000 >= 20x baseline, "
             "createlist/10000 < 0.5 s)",
})
@friendly
def bench_api(c, sizes="10,100,1000,10000", repeat=3, baseline_max=1000, check=False):
    """Time createlist/clear vs a per-item client (the seed's design) on loopback."""
    from twotier import apibench

    apibench.main(sizes=sizes, repeat=int(repeat), baseline_max=int(baseline_max), check=check)


# ---------------------------------------------------------------------------------------------
# Images and manifests
# ---------------------------------------------------------------------------------------------

_STAGES_HELP = "hello | storage | full: the seed's step 1-2, deploy1.yaml, deploy2.yaml (default: twotier.stage)"
_OVERLAY_HELP = "comma-separated components of k8s/components/ (default: twotier.overlay; see k8s/README.md)"


@task(help={"stage": _STAGES_HELP, "overlay": _OVERLAY_HELP,
            "namespace": "namespace to render for (default: twotier.namespace)"})
@friendly
def render(c, stage=None, overlay=None, namespace=None):
    """Print the exact YAML that deploy applies for a stage (image tags from the sources' content)."""
    from twotier import manifests, project

    s = _settings(c, stage=stage, overlay=overlay, namespace=namespace)
    print(manifests.to_yaml(project.render(s, s["stage"])), end="")


@task(help={"stage": _STAGES_HELP, "target": "Dockerfile target: '' = production, dev = reloading server"})
@friendly
def build(c, stage=None, target=""):
    """Build the stage's images (content-derived tags; unchanged images are not rebuilt)."""
    from twotier import images

    s = _settings(c, stage=stage)
    for img in images.build(s, s["stage"], target=target):
        print(f"{img.ref}  {images.image_size(img.ref) / 1e6:.0f} MB")


@task(help={"stage": _STAGES_HELP, "target": "Dockerfile target: '' = production, dev = reloading server"})
@friendly
def push(c, stage=None, target=""):
    """Build (if needed) and push the stage's images to twotier.registry."""
    from twotier import images

    s = _settings(c, stage=stage)
    images.push(s, s["stage"], target=target)


@task(name="base-image", help={"force": "rebuild even if the image exists from the same recipe"})
@friendly
def base_image(c, force=False):
    """Build the local Debian base image (debootstrap + docker import) used when base_image is `local`."""
    from twotier import images

    images.ensure_local_base(force=force)

# ---------------------------------------------------------------------------------------------
# Deploy, inspect, debug, clean
# ---------------------------------------------------------------------------------------------

_KUBE_HELP = {
    "context": "kube context to act on (default: twotier.context, else the kubeconfig's current one)",
    "namespace": "namespace to act in (default: twotier.namespace)",
    "allow_context": "allow this context although it does not look local (safety override)",
}
_STAGE_HELP = "hello | storage | full: the seed's step 1-2, deploy1.yaml, deploy2.yaml (default: twotier.stage)"


def _settings(c, **flags):
    """invoke.yaml < INVOKE_TWOTIER_* < these flags (None = not given)."""
    from twotier.project import check_stage, effective

    s = effective(settings(c), {k.replace("__", "."): v for k, v in flags.items()})
    check_stage(s["stage"])
    return s


@task(help={"stage": _STAGE_HELP,
            "dry_run": "show what would change (server-side dry run) without changing anything",
            "timeout": "seconds to wait for the rollout (default: twotier.timeouts.rollout)", **_KUBE_HELP})
@friendly
def deploy(c, stage=None, dry_run=False, timeout=None, context=None, namespace=None, allow_context=None):
    """Apply a stage to the cluster (server-side apply) and wait until it has rolled out."""
    from twotier import project

    s = _settings(c, stage=stage, context=context, namespace=namespace,
                  timeouts__rollout=float(timeout) if timeout else None)
    cluster = project.connect(s, allow_context)
    objs = project.render(s, s["stage"])
    project.deploy_objects(cluster, objs, dry_run=dry_run, timeout=float(s["timeouts"]["rollout"]))


@task(help=dict(_KUBE_HELP))
@friendly
def status(c, context=None, namespace=None, allow_context=None):
    """Show the project's objects in the cluster: readiness, age, NodePort URLs."""
    from twotier import project
    from twotier.status import status_report

    s = _settings(c, context=context, namespace=namespace)
    cluster = project.connect(s, allow_context)
    print(status_report(cluster, project.project_targets(s, cluster.namespace), access=_access(s)))


def _access(s) -> str:
    """twotier.access: nodeport | port-forward (how the host reaches the Services)."""
    from twotier.kube.portforward import access_mode

    return access_mode(s)


@task(help={"tier": "storage | app | hello | loader (default: every pod of the project)",
            "follow": "keep streaming new lines (Ctrl-C stops)",
            "tail": "lines per pod to show first (default 50)", **_KUBE_HELP})
@friendly
def logs(c, tier=None, follow=False, context=None, namespace=None, allow_context=None, tail=50):
    """Show the logs of the project's pods, one tier or all, each line prefixed by its pod."""
    import shlex

    from twotier import kube, project

    s = _settings(c, context=context, namespace=namespace)
    kubectl = kube.kubectl_binary()
    cluster = project.connect(s, allow_context)
    argv = project.logs_argv(kubectl, cluster, project.tier_selector(cluster, tier), follow, int(tail))
    result = c.run(shlex.join(argv), env=cluster.kubectl_env(), warn=True, pty=False)
    if result is not None and result.exited:
        from twotier.errors import UserError

        raise UserError(f"kubectl logs exited with {result.exited}", "see its message above",
                        code=result.exited)


@task(help={"shell": "shell to run in the pod (default sh)", **_KUBE_HELP})
@friendly
def loader_shell(c, shell="sh", context=None, namespace=None, allow_context=None):
    """Open an interactive shell in the `loader` pod (created if missing) to curl the services."""
    from twotier import kube, loader, project

    loader.require_tty()
    kubectl = kube.kubectl_binary()
    s = _settings(c, context=context, namespace=namespace)
    cluster = project.connect(s, allow_context)
    project.start_loader(cluster, s)
    print("try: curl -s in-svc:5000/items   (exit or Ctrl-D leaves the shell; the pod stays)")
    code = loader.hand_over(loader.shell_argv(kubectl, cluster, shell), cluster.kubectl_env())
    if code:
        from twotier.errors import UserError

        raise UserError(f"the loader shell exited with {code}", code=code)


@task(help={"stage": _STAGE_HELP, **_KUBE_HELP})
@friendly
def smoke(c, stage=None, context=None, namespace=None, allow_context=None):
    """Run the seed's functional checks from the host and the loader pod; one PASS/FAIL line each."""
    from twotier import loader, project, smoke as smoke_checks

    s = _settings(c, stage=stage, context=context, namespace=namespace)
    cluster = project.connect(s, allow_context)
    project.start_loader(cluster, s)
    smoke_checks.run_smoke(cluster, s["stage"], lambda argv: loader.exec_in_loader(cluster, argv),
                           access=_access(s))


@task(help={"timeout": "seconds to wait for each deletion phase (default: twotier.timeouts.delete)",
            **_KUBE_HELP})
@friendly
def clean(c, timeout=None, context=None, namespace=None, allow_context=None):
    """Delete everything the project created (all stages, loader pod, PVC, PV) and wait until gone."""
    from twotier import cleanup, project

    s = _settings(c, context=context, namespace=namespace,
                  timeouts__delete=float(timeout) if timeout else None)
    cluster = project.connect(s, allow_context)
    cleanup.clean(cluster, project.project_targets(s, cluster.namespace),
                  timeout=float(s["timeouts"]["delete"]))


@task(help={"stage": _STAGE_HELP,
            "timeout": "seconds to wait for the rollout (default: twotier.timeouts.rollout)", **_KUBE_HELP})
@friendly
def up(c, stage=None, timeout=None, context=None, namespace=None, allow_context=None):
    """The main job: build and push the images, deploy the stage, run the smoke checks."""
    from twotier import images, loader, project, smoke as smoke_checks

    s = _settings(c, stage=stage, context=context, namespace=namespace,
                  timeouts__rollout=float(timeout) if timeout else None)
    cluster = project.connect(s, allow_context)  # fail fast, before minutes of building
    print(f"== build and push ({s['stage']})")
    built = images.push(s, s["stage"])
    print(f"== deploy ({s['stage']})")
    objs = project.render(s, s["stage"], images.image_map(built))
    project.deploy_objects(cluster, objs, dry_run=False, timeout=float(s["timeouts"]["rollout"]))
    print(f"== smoke ({s['stage']})")
    loader_ref = next(img.ref for img in built if img.role == "loader")
    project.start_loader(cluster, s, loader_ref)
    smoke_checks.run_smoke(cluster, s["stage"], lambda argv: loader.exec_in_loader(cluster, argv),
                           access=_access(s))

# ---------------------------------------------------------------------------------------------
# The local cluster (cluster.*)
# ---------------------------------------------------------------------------------------------


@task(name="up")
@friendly
def cluster_up(c):
    """Start the local Kubernetes cluster (its binaries build once); idempotent."""
    import localcluster

    localcluster.up()


@task(name="down", help={"purge": "also delete the local registry's images"})
@friendly
def cluster_down(c, purge=False):
    """Stop the local cluster; remove every process, rule and mount it made."""
    import localcluster

    localcluster.down(purge=purge)


@task(name="status")
@friendly
def cluster_status(c):
    """Show the local cluster's processes and node readiness."""
    import localcluster
    from twotier.tables import table

    print(table(["COMPONENT", "PID", "STATE"], localcluster.status_rows()))


@task(name="kubeconfig")
@friendly
def cluster_kubeconfig(c):
    """Print the local cluster's kubeconfig path: export KUBECONFIG=$(...)."""
    import localcluster

    print(localcluster.kubeconfig_path())


@task(name="build", help={"component": "one of kubernetes, etcd, containerd, cri-tools, coredns, tilt (default: all cluster parts)"})
@friendly
def cluster_build(c, component=""):
    """Build the cluster's binaries from source (cached by version)."""
    import localcluster

    localcluster.ensure_binaries([component] if component else localcluster.CLUSTER_BUILDS)


cluster = Collection("cluster", cluster_up, cluster_down, cluster_status, cluster_kubeconfig, cluster_build)

# ---------------------------------------------------------------------------------------------
# Dev loop, tests and benchmarks
# ---------------------------------------------------------------------------------------------


@task(help={"only": "comma-separated sections to run: api, deploy, tilt, images (default: all)",
            "skip": "comma-separated sections to leave out",
            "sizes": "item counts for the api section (default 10,100,1000,10000)",
            "edits": "live-update edits per tier for the tilt section (default 5)"})
@friendly
def bench(c, only="", skip="", sizes="10,100,1000,10000", edits=5):
    """Measure the README's benchmark numbers side by side in one run."""
    from twotier import bench as benchmark

    benchmark.run(settings(c), only=only, skip=skip, sizes=sizes, edits=int(edits))


@task(help={"tier": "unit, integration, e2e or all (default)", "k": "only tests matching this pytest -k expression",
            "exitfirst": "stop at the first failure"})
@friendly
def test(c, tier="all", k="", exitfirst=False):
    """Run the tests (the README's test command); e2e brings the cluster up."""
    import shlex
    import sys

    from invoke.exceptions import Exit

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


@task(name="tilt-ci", help={"timeout": "seconds tilt ci may take (default: twotier.timeouts.tilt_ci)"})
@friendly
def tilt_ci(c, timeout=None):
    """Run `tilt ci` (build, deploy, smoke) on the configured cluster, then `tilt down`; fail if anything failed."""
    from twotier import tiltrun

    s = _settings(c)
    tiltrun.run_ci(s, timeout=float(timeout or s["timeouts"]["tilt_ci"]))


@task(name="tilt-smoke")
@friendly
def tilt_smoke(c):
    """Run the smoke checks through the loader pod `tilt up` runs (the Tiltfile's smoke button)."""
    from twotier import tiltrun

    tiltrun.smoke_in_tilt_loader(_settings(c))

ns = Collection()
ns.add_task(serve)
ns.add_task(dev)
ns.add_task(bench_api)
ns.add_task(tilt_ci)
ns.add_task(tilt_smoke)
ns.add_collection(cluster)
ns.add_task(test)
ns.add_task(bench)
ns.add_task(up)
ns.add_task(render)
ns.add_task(build)
ns.add_task(push)
ns.add_task(base_image)
ns.add_task(deploy)
ns.add_task(status)
ns.add_task(logs)
ns.add_task(loader_shell)
ns.add_task(smoke)
ns.add_task(clean)
