"""Fixtures for tests against the real local cluster (started by .ci/run or `invoke cluster.up`)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import localcluster
from tests.support.traffic import http  # noqa: F401 (the e2e modules' one http)
from twotier.poll import poll

REPO = Path(__file__).resolve().parents[2]


def kubectl_argv(*args: str) -> list[str]:
    """The argv of the cluster's kubectl on the local cluster's kubeconfig and context."""
    return [str(localcluster.kubectl_path()), "--kubeconfig", str(localcluster.kubeconfig_path()),
            "--context", localcluster.L.CONTEXT, *args]


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
    res = subprocess.run(kubectl_argv(*args), input=input, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {res.stderr}")
    return res.stdout


def kubectl_json(*args: str):
    return json.loads(kubectl(*args, "-o", "json"))


def curl_in_pod(ns: str, pod: str, url: str, method: str = "GET", max_time: int = 3) -> tuple[int, str]:
    """(curl's exit code, HTTP status) of one request from inside the pod, MAX_TIME s at most."""
    res = subprocess.run(kubectl_argv("-n", ns, "exec", pod, "--", "curl", "-s", "-m", str(max_time), "-o",
                                      "/dev/null", "-w", "%{http_code}", "-X", method, url),
                         capture_output=True, text=True, timeout=30 + max_time)
    return res.returncode, res.stdout.strip()


@pytest.fixture(scope="session")
def cluster():
    """The local cluster must be up: a missing cluster is a failure, never a skip."""
    if not localcluster.kubeconfig_path().exists():
        pytest.fail("the local cluster is not up: run `invoke cluster.up` (CI's .ci/run starts it)", pytrace=False)
    try:
        ready = localcluster.node_ready()
    except Exception as err:
        pytest.fail(f"the local cluster's API server does not answer ({err}): run `invoke cluster.up`", pytrace=False)
    assert ready, "the local cluster's node is not Ready"
    os.environ["KUBECONFIG"] = str(localcluster.kubeconfig_path())
    return localcluster


def run_invoke(*args, env=None, stdin=subprocess.DEVNULL, timeout=900) -> subprocess.CompletedProcess:
    """Run a project task as a user would (`invoke ARGS` in the repository); prints its output."""
    full_env = dict(os.environ)
    # No container registry is reachable here (nor in CI): images build on the local Debian base.
    full_env.setdefault("INVOKE_TWOTIER_BASE_IMAGE", "local")
    full_env.update(env or {})
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=full_env,
                         stdin=stdin, capture_output=True, text=True, timeout=timeout)
    res.seconds = time.monotonic() - start
    print(f"$ invoke {' '.join(args)}  ({res.seconds:.1f}s, rc={res.returncode})")
    print(res.stdout[-4000:], res.stderr[-4000:])
    return res


def must(*args, **kwargs) -> subprocess.CompletedProcess:
    res = run_invoke(*args, **kwargs)
    assert res.returncode == 0, f"invoke {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def node_ip(cluster):
    node = kubectl_json("get", "nodes")["items"][0]
    return next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")


# ------------------------------------------------------------------ what a user left on the cluster
# The tests reset the tutorial's objects, and need an empty volume (the tutorial's transcripts
# start from `{"items":[]}`), whatever a user did before: `invoke up`, a `curl .../createlist/3`
# from the README, a loader pod left running. Objects are deleted (and said so first); the items
# a user stored are the user's data: they are set aside beside the volume's directory on the node
# (this host: the local cluster has one node) and put back when the session ends.
PV_DIR = Path(yaml.safe_load((REPO / "k8s" / "storage" / "pv.yaml").read_text())["spec"]["hostPath"]["path"])
KEPT = PV_DIR.parent / f"{PV_DIR.name}.kept-by-e2e"  # same filesystem: a rename, owners unchanged


def say(request, message: str) -> None:
    """A line on the terminal, whatever pytest captures."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print(message, file=sys.stderr)
        return
    reporter.ensure_newline()
    reporter.write_line(message, bold=True)


def empty_volume() -> list[str]:
    """Remove what the tests stored on the volume; the names removed."""
    removed = []
    for path in sorted(PV_DIR.iterdir()) if PV_DIR.is_dir() else []:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        removed.append(path.name)
    return removed


def set_aside() -> list[str]:
    """Move the volume's items to KEPT. Items already there (an interrupted run) stay there."""
    moved = []
    for path in sorted(PV_DIR.iterdir()) if PV_DIR.is_dir() else []:
        KEPT.mkdir(mode=0o700, exist_ok=True)
        if not (KEPT / path.name).exists():
            path.rename(KEPT / path.name)
            moved.append(path.name)
    return moved


def put_back() -> list[str]:
    """Replace whatever the tests left on the volume by the items set aside; remove KEPT."""
    empty_volume()
    restored = []
    if KEPT.is_dir():
        PV_DIR.mkdir(parents=True, exist_ok=True)
        for path in sorted(KEPT.iterdir()):
            path.rename(PV_DIR / path.name)
            restored.append(path.name)
        KEPT.rmdir()
    return restored


@pytest.fixture(scope="session", autouse=True)
def tutorial_reset(cluster, request):
    """Before any e2e test, whichever module runs first (and some stop the cluster): say what the
    tests do, reset the tutorial's objects and set the user's stored items aside; at the end, clean
    and put the items back. Autouse, so no module (a `cluster.down` included) acts before it."""
    say(request, f"e2e: these tests reset the tutorial's objects on context {localcluster.L.CONTEXT} "
                 f"(`invoke clean`: Deployments, Services, PV, PVC, loader pod); some stop and restart "
                 f"the local cluster (`invoke cluster.down`/`up`: every namespace's objects go) or "
                 f"resize it; items stored in {PV_DIR} are set aside in {KEPT} and put back at the end")
    must("clean")
    moved = set_aside()
    if moved:
        say(request, f"e2e: set aside {len(moved)} stored item(s) in {KEPT}")
    yield
    run_invoke("clean")
    restored = put_back()
    say(request, f"e2e: put back {len(restored)} stored item(s) in {PV_DIR}; the tutorial's objects "
                 "are cleaned (`invoke up` deploys them again)")


@pytest.fixture(scope="module")
def clean_slate(cluster, tutorial_reset, single_node):
    """The module starts with none of the project's objects and an empty volume, and ends so
    (what its tests stored is removed: the user's items stay set aside until the session ends)."""
    must("clean")
    empty_volume()
    yield
    run_invoke("clean")
    empty_volume()


# ------------------------------------------------------------------ what a test needs, as fixtures
# Each test asks for what it needs; a fixture makes it so only when it is not so already, so tests
# in file order cost nothing extra and a test picked alone (`-k`) or in another order still passes.

PART_OF = "app.kubernetes.io/part-of=twotier"


def project_deployments() -> list[dict]:
    return kubectl_json("get", "deployments", "-l", PART_OF)["items"]


def deployment_ready(dep: dict) -> bool:
    spec, status = dep["spec"], dep.get("status") or {}
    want = spec.get("replicas", 1)
    return (status.get("observedGeneration", 0) >= dep["metadata"]["generation"]
            and status.get("updatedReplicas") == want == status.get("replicas") == status.get("readyReplicas"))


def images_of(deployments) -> dict[str, list[str]]:
    return {d["metadata"]["name"]: [c["image"] for c in d["spec"]["template"]["spec"]["containers"]]
            for d in deployments}


def stage_images(stage: str) -> dict[str, list[str]]:
    """{Deployment: its images} of STAGE as `invoke up` would deploy it from the sources now
    (content-derived tags: a source changed since the last deploy gives another tag)."""
    from twotier import settings as settingsmod
    from twotier.ops import render

    return images_of(o for o in render.render_stage(settingsmod.load(), stage) if o["kind"] == "Deployment")


def ensure_stage(stage: str) -> None:
    """STAGE deployed from the current sources, rolled out, and nothing else of the project's:
    `invoke up --stage STAGE` (after `invoke clean` when another stage runs) unless it is so."""
    deployments = project_deployments()
    wanted = stage_images(stage)
    if images_of(deployments) == wanted and all(deployment_ready(d) for d in deployments):
        return
    if set(images_of(deployments)) - set(wanted):
        must("clean")
    must("up", "--stage", stage)


def ensure_nothing_deployed() -> None:
    if kubectl("get", "deploy,svc,pod,pvc,pv", "-l", PART_OF, "-o", "name").strip():
        must("clean")


@pytest.fixture
def nothing_deployed(cluster, tutorial_reset):
    """None of the project's objects (not even the loader pod)."""
    ensure_nothing_deployed()


@pytest.fixture
def hello_stage(cluster, tutorial_reset, single_node):
    """Stage hello deployed (f-webapp, s-f-webapp), and no other stage."""
    ensure_stage("hello")


@pytest.fixture
def storage_stage(cluster, tutorial_reset, single_node):
    ensure_stage("storage")


@pytest.fixture
def full_stage(cluster, tutorial_reset, single_node):
    """Stage full deployed (storage + app), and no other stage."""
    ensure_stage("full")


@pytest.fixture(scope="session")
def images_pushed(cluster):
    """Every stage's images (and the loader's) in the registry, tagged from the current sources."""
    from twotier import shape

    for stage in shape.load().stages:
        must("push", "--stage", stage)


@pytest.fixture
def loader_pod(cluster, tutorial_reset):
    """The project's loader pod, running: reused when it runs, else created from its image (built
    and pushed first when the registry does not have it)."""
    from twotier import settings as settingsmod
    from twotier.errors import UserError
    from twotier.ops.cluster import connect
    from twotier.ops.loader import start_loader

    settings = settingsmod.load()
    try:
        return start_loader(connect(settings), settings)
    except UserError as err:
        if "not in the registry" not in err.message:
            raise
    must("push", "--stage", "hello")  # the smallest stage; every stage pushes the loader image
    return start_loader(connect(settings), settings)


@pytest.fixture(scope="module")
def single_node(cluster):
    """The local cluster at its default size, one node (a multi-node test shrinks it back at its
    end; an interrupted one may not have)."""
    nodes = kubectl_json("get", "nodes")["items"]
    if len(nodes) != 1:
        must("cluster.up", "--nodes", "1")
    assert len(kubectl_json("get", "nodes")["items"]) == 1


def wait_for(check, what: str, timeout: float, every: float = 1.0):
    """``poll`` in the e2e tests' words: CHECK's truthy value once it comes; TIMEOUT only bounds a hang."""
    return poll(check, timeout=timeout, what=f"waiting for {what}", interval=every)
