"""`tilt up` exactly as the README's "Develop with Tilt" says, and every live-rebuild trigger of
the Tiltfile made to happen under it.

The session: a new terminal after the bootstrap (bash on a real pseudo-terminal under `env -i`,
no profile), `eval "$(.venv/bin/invoke cluster.env)"`, then plain `tilt up`: no `--registry`, no
`--base-image`, no `--port`, no `--file`. The registry must come from the cluster's
`local-registry-hosting` ConfigMap and the base image from twotier.local.yaml, as the README
promises. The terminal's Ctrl-C stops it and `tilt down` in the same shell removes what it made.

The triggers, each on the running session, each edit restored (and checked) before the test ends:
- a tier's Dockerfile edited: the image is rebuilt and rolled out, and a steady client through
  the Service sees 0 failed requests meanwhile (and during the rollout back);
- a package added to a tier's requirements.txt: Tilt runs `pip install` in the running container
  (run(..., trigger=...)): the package imports there, and no pod was replaced or restarted;
- a file saved under services/common: both tiers (every replica) answer with the change, no image
  rebuilt, no pod replaced.

Every wait is for a condition (the terminal's text, Tilt's state, an answer) with a deadline that
only bounds a hang. Needs the local cluster after `./bootstrap.sh up` and the pinned Tilt.
"""
from __future__ import annotations

import json
import socket
import subprocess
import threading
import uuid

import pytest
import yaml

from tests.e2e.conftest import REPO, http, kubectl, kubectl_json
from tests.support.e2e_edits import TemporaryEdit
from tests.support.e2e_shell import RC_MARK, Terminal
from twotier.poll import poll

# Per test, image builds included; a bound for a hang, above pyproject's default for the suite.
pytestmark = [pytest.mark.tilt, pytest.mark.usefixtures("clean_slate"), pytest.mark.timeout(2400)]

TILT_PORT = 10350  # what plain `tilt up` uses: the README's UI address
TIERS = ("storage", "app")
LINKS = {"storage": "http://127.0.0.1:31000/items", "app": "http://127.0.0.1:31001/createlist/0"}
DEPLOYMENTS = {"storage": "sto-dep", "app": "api-dep"}
SELECTORS = {"storage": "run=sto-app", "app": "run=api-app"}
IMAGES = {"storage": "sto-img", "app": "api-img"}
BUILD_DEADLINE = 600  # an image build on a busy 2-core machine; only bounds a hang
UPDATE_DEADLINE = 180  # a live update (sync, pip install, reload)


# ------------------------------------------------------------------------- Tilt's own API

def tilt(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """The pinned Tilt's CLI against the session on the default port (`tilt get`, ...)."""
    from twotier.dev.tiltrun import tilt_binary

    return subprocess.run([tilt_binary(), *args, "--port", str(TILT_PORT)], capture_output=True,
                          text=True, timeout=timeout)


def resource(name: str) -> dict:
    """`tilt get uiresource NAME -o json`'s status ({} while Tilt does not know it yet)."""
    proc = tilt("get", "uiresource", name, "-o", "json")
    return (json.loads(proc.stdout).get("status") or {}) if proc.returncode == 0 else {}


def image_refs() -> dict[str, str]:
    """{image name: the ref Tilt deployed}: a rebuilt image has a new tag."""
    proc = tilt("get", "imagemap", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    return {item["metadata"]["name"]: (item.get("status") or {}).get("image", "")
            for item in json.loads(proc.stdout).get("items") or []}


def last_build(name: str) -> dict:
    """The resource's newest finished build (Tilt lists the newest first), or {}."""
    history = resource(name).get("buildHistory") or []
    return history[0] if history else {}


def settled(name: str, after: str = "") -> bool:
    """NAME is up to date and running: no build in progress, the last one finished without
    error (a failed one fails the test at once) and started after AFTER, runtime ok."""
    status = resource(name)
    if (status.get("currentBuild") or {}).get("startTime"):
        return False
    history = status.get("buildHistory") or []
    if not history:
        return False
    if history[0].get("error"):
        pytest.fail(f"Tilt's {name} update failed: {history[0]['error']}\n"
                    f"{tilt('logs', name).stdout[-3000:]}", pytrace=False)
    if after and history[0].get("startTime", "") <= after:
        return False
    return status.get("updateStatus") == "ok" and status.get("runtimeStatus") == "ok"


def wait_settled(names, after: dict | None = None, deadline: float = BUILD_DEADLINE) -> None:
    after = after or {}
    poll(lambda: all(settled(n, after.get(n, "")) for n in names), timeout=deadline, interval=1,
         what=f"Tilt resources {', '.join(names)} updated and running")


# ------------------------------------------------------------------------- the cluster side

def pods(tier: str) -> list[dict]:
    return [p for p in kubectl_json("get", "pods", "-l", SELECTORS[tier])["items"]
            if not p["metadata"].get("deletionTimestamp")]


def pod_identity(tier: str) -> dict[str, int]:
    """{pod name: container restarts}: a replaced pod has a new name, a restarted one a new count."""
    return {p["metadata"]["name"]: sum(cs.get("restartCount", 0) for cs in p["status"].get("containerStatuses") or [])
            for p in pods(tier)}


def rolled_out(tier: str, image: str) -> bool:
    """kubectl's rollout rule for the tier's Deployment, and every pod on IMAGE and ready."""
    dep = kubectl_json("get", "deployment", DEPLOYMENTS[tier])
    spec, status = dep["spec"], dep.get("status") or {}
    if status.get("observedGeneration", 0) < dep["metadata"]["generation"]:
        return False
    want = spec.get("replicas", 1)
    if not (status.get("updatedReplicas") == want == status.get("replicas") == status.get("availableReplicas")):
        return False
    live = pods(tier)
    return len(live) == want and all(
        p["spec"]["containers"][0]["image"] == image and all(cs.get("ready") for cs in p["status"].get("containerStatuses") or [{}])
        for p in live)


def in_container(tier: str, *argv: str) -> subprocess.CompletedProcess:
    """ARGV in the tier's container (kubectl exec deploy/...), not raising on failure."""
    from tests.e2e.conftest import kubectl_argv

    return subprocess.run(kubectl_argv("exec", f"deploy/{DEPLOYMENTS[tier]}", "--", *argv),
                          capture_output=True, text=True, timeout=60)


def answers(url: str) -> object:
    """The JSON body of a 200 from URL, else None (refused, reset, an error status)."""
    try:
        status, body = http(url, timeout=5)
    except OSError:
        return None
    return body if status == 200 else None


class SteadyClient:
    """Requests to URL one after another (every 50 ms) until stopped; every failure recorded."""

    def __init__(self, url: str):
        self.url = url
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="steady-client")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = http(self.url, timeout=15)
                if status != 200 or (isinstance(body, dict) and body.get("faileds")):
                    self.failures.append(f"{status} {body}")
            except Exception as err:  # refused, reset, timed out: all failures here
                self.failures.append(repr(err))
            self.sent += 1
            self._stop.wait(0.05)  # pacing of the client, not a wait for anything

    def __enter__(self) -> SteadyClient:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


# ------------------------------------------------------------------------- the session

@pytest.fixture(scope="module")
def tilt_up(cluster):
    """`tilt up` typed in a new terminal after the bootstrap, as the README says; stopped with
    Ctrl-C and `tilt down` at the end; yields the terminal."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", TILT_PORT))
        except OSError:
            pytest.fail(f"127.0.0.1:{TILT_PORT} is taken: another `tilt up` runs; stop it first", pytrace=False)
    term = Terminal(REPO)
    try:
        rc, out = term.run('eval "$(.venv/bin/invoke cluster.env)"', timeout=120)
        assert rc == 0, out
        rc, out = term.run("command -v tilt && kubectl config current-context", timeout=30)
        assert rc == 0 and "twotier-local" in out, out
        term.send("tilt up")
        term.read_until(f"Tilt started on http://localhost:{TILT_PORT}/", 120)
        yield term
    finally:
        try:
            term.interrupt()  # Ctrl-C: tilt up ends, the shell prompts again
            term.read_until(RC_MARK, 60)
            rc, out = term.run("tilt down", timeout=300)
            assert rc == 0, out
        finally:
            term.close()
    # tilt down asked for the deletions; what it made is gone (the Deployments first)
    poll(lambda: not kubectl("get", "deploy,svc,pod", "-o", "name", "-l", "app.kubernetes.io/part-of=twotier").strip(),
         timeout=180, interval=1, what="the objects `tilt up` made deleted by `tilt down`")


def test_plain_tilt_up_serves_the_tutorial_through_its_links(tilt_up):
    """Both tiers (and the loader) come up with the defaults alone; the images went to the
    registry the cluster advertises, built on twotier.local.yaml's base; the tutorial's calls
    answer through the links Tilt shows."""
    wait_settled(("storage", "app", "loader"))
    hosting = kubectl_json("get", "configmap", "local-registry-hosting", "-n", "kube-public")
    registry = yaml.safe_load(hosting["data"]["localRegistryHosting.v1"])
    refs = image_refs()
    for tier in TIERS:  # pushed where the cluster says its registry is, pulled from where it says
        host = registry.get("hostFromContainerRuntime") or registry["host"]
        assert refs[IMAGES[tier]].startswith(f"{host}/{IMAGES[tier]}:tilt-"), (refs, registry)
        links = [link["url"] for link in resource(tier).get("endpointLinks") or []]
        assert links == [LINKS[tier]], links
    base = subprocess.run(["docker", "image", "inspect", refs["api-img"], "--format", "{{json .RootFS.Layers}}"],
                          capture_output=True, text=True, timeout=60)
    local_base = subprocess.run(["docker", "image", "inspect", "twotier-base:bookworm", "--format",
                                 "{{json .RootFS.Layers}}"], capture_output=True, text=True, timeout=60)
    assert base.returncode == 0 and local_base.returncode == 0, base.stderr + local_base.stderr
    assert json.loads(base.stdout)[:len(json.loads(local_base.stdout))] == json.loads(local_base.stdout), \
        "api-img is not built on the local base image twotier.local.yaml names"
    app, storage = "http://127.0.0.1:31001", "http://127.0.0.1:31000"
    assert http(f"{app}/createlist/3") == (200, {"createds": ["0", "1", "2"], "deleteds": [], "faileds": []})
    assert http(f"{storage}/items") == (200, {"items": ["0", "1", "2"]})
    assert http(f"{app}/createlist/5") == (200, {"createds": ["3", "4"], "deleteds": [], "faileds": []})
    assert http(f"{app}/clear") == (200, {"createds": [], "deleteds": ["0", "1", "2", "3", "4"], "faileds": []})
    assert http(f"{storage}/items") == (200, {"items": []})


def test_a_dockerfile_edit_rebuilds_and_rolls_out_with_no_failed_request(tilt_up):
    """The app's Dockerfile gets one ENV line in its dev stage: Tilt builds a new image and rolls
    it out (the pods run it: the variable is set); a steady client through out-svc sees no failure
    during that rollout nor during the one back when the edit is undone."""
    wait_settled(TIERS)
    before = image_refs()["api-img"]
    marker = uuid.uuid4().hex[:10]
    dockerfile = REPO / "services" / "app" / "Dockerfile"
    with SteadyClient(LINKS["app"]) as client:
        with TemporaryEdit(dockerfile, "FROM app AS dev\n", f"FROM app AS dev\nENV TWOTIER_E2E_REBUILD={marker}\n"):
            rebuilt = poll(lambda: (ref := image_refs()["api-img"]) != before and ref, timeout=BUILD_DEADLINE,
                           interval=1, what="Tilt building a new api-img after the Dockerfile edit")
            poll(lambda: rolled_out("app", rebuilt), timeout=BUILD_DEADLINE, interval=1,
                 what=f"api-dep rolled out on {rebuilt}")
            env = in_container("app", "printenv", "TWOTIER_E2E_REBUILD")
            assert env.stdout.strip() == marker, env.stdout + env.stderr
        # undone: the image is built again (from the cache: the same image as before) and rolled back
        poll(lambda: image_refs()["api-img"] == before, timeout=BUILD_DEADLINE, interval=1,
             what="api-img back to the image of the unedited Dockerfile")
        poll(lambda: rolled_out("app", before), timeout=BUILD_DEADLINE, interval=1, what=f"api-dep rolled back to {before}")
        wait_settled(("app",))
    print(f"steady client: {client.sent} requests through out-svc during two rollouts, {len(client.failures)} failed")
    assert client.sent > 20
    assert client.failures == []


PACKAGE, PIN = "six", "six==1.17.0"  # pure Python, small, in none of the tiers' requirements


def test_a_requirement_added_is_installed_in_the_running_container(tilt_up):
    """One line added to the app's requirements.txt: Tilt's run('pip install ...', trigger=...)
    installs it in the running container; it imports there, and no pod was replaced or restarted."""
    wait_settled(TIERS)
    requirements = REPO / "services" / "app" / "requirements.txt"
    assert PACKAGE not in requirements.read_text().lower()
    assert in_container("app", "python", "-c", f"import {PACKAGE}").returncode != 0, f"{PACKAGE} is already there"
    pods_before, refs_before = pod_identity("app"), image_refs()
    started = last_build("app").get("startTime", "")
    text = requirements.read_text()
    with TemporaryEdit(requirements, text, text.rstrip("\n") + f"\n{PIN}\n"):
        wait_settled(("app",), after={"app": started}, deadline=UPDATE_DEADLINE)
        probe = in_container("app", "python", "-c", f"import {PACKAGE}; print({PACKAGE}.__version__)")
        assert probe.returncode == 0 and probe.stdout.strip() == PIN.split("==")[1], probe.stdout + probe.stderr
        assert pod_identity("app") == pods_before, "pip install must run in the running container, not a new pod"
        edited = last_build("app").get("startTime", "")
    # undone: the trigger runs pip again (nothing to install); let that update end before going on
    wait_settled(("app",), after={"app": edited}, deadline=UPDATE_DEADLINE)
    assert pod_identity("app") == pods_before and image_refs() == refs_before, "no image rebuilt, no pod replaced"


def test_a_save_under_services_common_reaches_both_tiers(tilt_up):
    """/healthz (twotier_service.jsonapi, shared by both tiers) gets a new field: both Services
    and every replica answer with it, then without it once the file is restored; no image was
    rebuilt and no pod replaced."""
    wait_settled(TIERS)
    jsonapi = REPO / "services" / "common" / "twotier_service" / "jsonapi.py"
    pods_before = {tier: pod_identity(tier) for tier in TIERS}
    refs_before = image_refs()
    urls = ["http://127.0.0.1:31000/healthz", "http://127.0.0.1:31001/healthz"]
    urls += [f"http://{p['status']['podIP']}:{port}/healthz" for tier, port in (("storage", 5000), ("app", 5001))
             for p in pods(tier)]
    assert len(urls) == 5, urls  # two Services, two storage replicas, one app replica
    marker = uuid.uuid4().hex[:10]

    def everywhere(value) -> bool:
        return all((body := answers(url)) is not None and body.get("e2e_probe") == value for url in urls)

    with TemporaryEdit(jsonapi, 'return {"status": "ok"}', f'return {{"status": "ok", "e2e_probe": "{marker}"}}'):
        poll(lambda: everywhere(marker), timeout=UPDATE_DEADLINE, interval=0.2,
             what=f"both tiers answering /healthz with the saved change ({urls})")
    poll(lambda: everywhere(None), timeout=UPDATE_DEADLINE, interval=0.2, what="both tiers back on the restored file")
    assert {tier: pod_identity(tier) for tier in TIERS} == pods_before, "a save must not replace or restart pods"
    assert image_refs() == refs_before, "a save under services/common must not rebuild an image"
