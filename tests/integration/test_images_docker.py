"""Every image built for real (with the local Debian base) and run as the manifests run it.

Needs a running Docker engine (CI starts dockerd); a missing engine fails with what to do.
The storage and application tiers run on a Docker network under the seed's Service names, with
the storage items on a Docker volume, with the manifests' restrictions (read-only root
filesystem with a /tmp tmpfs, all capabilities dropped, no privilege escalation), and the seed's
transcripts go through them: the storage one from the host (like the NodePort), the
application one with curl from the loader container (like the seed's Alpine box).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from twotier.errors import UserError
from twotier.images import build as images
from twotier.ops import render as manifests
from twotier.poll import Timeout, poll
from twotier.settings import Settings

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings(base_image="local")
PREFIX = f"tt-it-{os.getpid()}"
HARDENED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
SIZE_LIMIT = 300e6  # bytes; the local base alone is ~175 MB

STORAGE_TRANSCRIPT = [  # the seed's "pre-containerization sanity checks", storage API
    ("GET", "/items", {"items": []}),
    ("PUT", "/items/xyz", {"created": {"xyz": True}}),
    ("PUT", "/items/abc", {"created": {"abc": True}}),
    ("GET", "/items", {"items": ["abc", "xyz"]}),
    ("DELETE", "/items/abc", {"deleted": {"abc": True}}),
    ("DELETE", "/items/xyz", {"deleted": {"xyz": True}}),
    ("GET", "/items", {"items": []}),
]
APP_TRANSCRIPT = [  # ... and application API
    ("/createlist/4", {"createds": ["0", "1", "2", "3"], "deleteds": [], "faileds": []}),
    ("/createlist/2", {"createds": [], "deleteds": [], "faileds": []}),
    ("/createlist/6", {"createds": ["4", "5"], "deleteds": [], "faileds": []}),
    ("/clear", {"createds": [], "deleteds": ["0", "1", "2", "3", "4", "5"], "faileds": []}),
    ("/createlist/3", {"createds": ["0", "1", "2"], "deleteds": [], "faileds": []}),
    ("/clear", {"createds": [], "deleteds": ["0", "1", "2"], "faileds": []}),
]


def docker(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc


@pytest.fixture(scope="module", autouse=True)
def engine():
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=30)
    except FileNotFoundError:
        pytest.fail("docker is not installed: apt-get install -y docker.io")
    if proc.returncode != 0:
        pytest.fail("the Docker engine is not reachable: start it with "
                    "`nohup dockerd >/var/log/dockerd.log 2>&1 &` (then `iptables -P FORWARD ACCEPT`)\n"
                    + proc.stderr[-500:])


@pytest.fixture(scope="module")
def built() -> dict[str, images.Image]:
    start = time.monotonic()
    out = {}
    for stage in ("full", "hello"):
        for img in images.build(SETTINGS, stage, progress=lambda line: None):
            out[img.role] = img
    print(f"\nbuilt every image in {time.monotonic() - start:.1f}s")
    return out


@pytest.fixture(scope="module")
def resources():
    """Names of containers/networks/volumes to remove at the end, whatever happens."""
    made = {"container": [], "network": [], "volume": []}
    yield made
    for name in made["container"]:
        docker("rm", "-f", "-v", name, check=False)
    for kind in ("network", "volume"):
        for name in made[kind]:
            docker(kind, "rm", name, check=False)


def run(resources, name, image, *args, cmd=()):
    docker("run", "-d", "--name", name, *args, image, *cmd)
    resources["container"].append(name)
    return name


def host_port(container, port) -> int:
    return int(docker("port", container, f"{port}/tcp").stdout.split("\n")[0].rsplit(":", 1)[1])


def http(method, url, timeout=5.0):
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def wait_ready(url, timeout=60.0, expect=200):
    """URL's body once it answers EXPECT (TIMEOUT only bounds a hang)."""
    last = [None]

    def answered():
        try:
            status, body = http("GET", url, timeout=2)
        except (TimeoutError, urllib.error.URLError, ConnectionError) as err:
            last[0] = err
            return None
        last[0] = (status, body)
        return (body,) if status == expect else None

    try:
        return poll(answered, timeout=timeout, interval=0.2, what=f"{url} answering {expect}")[0]
    except Timeout:
        raise AssertionError(f"{url} not ready after {timeout}s: {last[0]}") from None


def proc1_uids(container) -> set[int]:
    status = docker("exec", container, "cat", "/proc/1/status").stdout
    line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
    return {int(x) for x in line.split()[1:]}


def stop_seconds(container) -> tuple[float, int]:
    """SIGTERM to the container's PID 1, then its exit: (seconds, exit code). Exit code 0 is the
    proof of a graceful stop (nothing else kills it: 60 s only bound a hang); the seconds are
    printed, a figure, not a threshold."""
    start = time.monotonic()
    docker("kill", "--signal", "TERM", container)
    docker("wait", container, timeout=60)
    elapsed = time.monotonic() - start
    return elapsed, int(docker("inspect", "--format", "{{.State.ExitCode}}", container).stdout)


@pytest.fixture(scope="module")
def tiers(built, resources):
    """storage (alias in-svc) + app (alias out-svc) + loader on one network, items on a volume."""
    net, vol = f"{PREFIX}-net", f"{PREFIX}-items"
    docker("network", "create", net)
    resources["network"].append(net)
    docker("volume", "create", vol)
    resources["volume"].append(vol)
    sto = run(resources, f"{PREFIX}-sto", built["storage"].ref, "--network", net, "--network-alias", "in-svc",
              "-v", f"{vol}:/var/lib/storage", "-e", "STO_STORAGE=/var/lib/storage", "-p", "127.0.0.1::5000",
              *HARDENED)
    api = run(resources, f"{PREFIX}-api", built["app"].ref, "--network", net, "--network-alias", "out-svc",
              "-e", "STO_API=http://in-svc:5000", "-p", "127.0.0.1::5001", *HARDENED)
    loader = run(resources, f"{PREFIX}-loader", built["loader"].ref, "--network", net, *HARDENED)
    sto_url = f"http://127.0.0.1:{host_port(sto, 5000)}"
    api_url = f"http://127.0.0.1:{host_port(api, 5001)}"
    wait_ready(sto_url + "/readyz")
    wait_ready(api_url + "/readyz")
    return {"sto": sto, "api": api, "loader": loader, "sto_url": sto_url, "api_url": api_url,
            "net": net, "vol": vol}


def loader_get(loader, url) -> dict:
    proc = docker("exec", loader, "curl", "-sS", "--fail-with-body", "--max-time", "10", url)
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------------------------------

def test_every_image_is_built_small_and_sizes_are_reported(built):
    sizes = {img.ref: images.image_size(img.ref) for img in built.values()}
    sizes[images.LOCAL_BASE] = images.image_size(images.LOCAL_BASE)
    report = ROOT / "build" / "image-sizes.json"
    report.parent.mkdir(exist_ok=True)
    report.write_text(json.dumps({k: round(v / 1e6, 1) for k, v in sizes.items()}, indent=2) + "\n")
    print("\nimage sizes (MB): " + ", ".join(f"{k}={v / 1e6:.0f}" for k, v in sizes.items()))
    assert set(built) == {"hello", "storage", "app", "loader"}
    for ref, size in sizes.items():
        assert size < SIZE_LIMIT, f"{ref} is {size / 1e6:.0f} MB"


def test_rebuilding_unchanged_sources_is_a_no_op(built):
    lines = []
    again = images.build(SETTINGS, "full", progress=lines.append)
    assert [i.ref for i in again] == [built[r].ref for r in ("storage", "app", "loader")]
    assert lines and all("up to date" in line for line in lines), lines  # nothing was built


def test_a_changed_source_file_gets_a_new_tag_and_image(built, tmp_path, monkeypatch):
    services = tmp_path / "services"  # the shared build context: common/, .dockerignore, every service
    shutil.copytree(ROOT / "services", services, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    init = services / "hello" / "hello_app" / "__init__.py"
    init.write_text(init.read_text() + "\n# a change that must roll out\n")
    monkeypatch.setattr(images, "SERVICES", services)
    (changed, loader) = images.build(SETTINGS, "hello", progress=lambda line: None)
    try:
        assert changed.ref != built["hello"].ref and loader.ref == built["loader"].ref
        assert images.image_id(changed.ref) and images.image_id(changed.ref) != images.image_id(built["hello"].ref)
    finally:
        docker("rmi", changed.ref, check=False)


def test_storage_transcript_through_the_published_port(tiers):
    for method, path, expected in STORAGE_TRANSCRIPT:
        status, body = http(method, tiers["sto_url"] + path)
        assert status < 300 and body == expected, f"{method} {path}: {status} {body}"


def test_app_transcript_from_the_loader_container(tiers):
    for path, expected in APP_TRANSCRIPT:
        assert loader_get(tiers["loader"], "http://out-svc:5001" + path) == expected, path
    assert loader_get(tiers["loader"], "http://in-svc:5000/items") == {"items": []}


def test_every_process_runs_as_uid_10001(tiers, built, resources):
    for name in ("sto", "api", "loader"):
        assert proc1_uids(tiers[name]) == {10001}, name
        assert docker("exec", tiers[name], "id", "-u").stdout.strip() == "10001"
    hello = run(resources, f"{PREFIX}-hello-uid", built["hello"].ref, *HARDENED)
    assert proc1_uids(hello) == {10001}  # PID 1 runs as its user from its start (docker run -d returned)


def test_items_survive_a_replaced_storage_container(tiers, built, resources):
    status, _ = http("PUT", tiers["sto_url"] + "/items/kept")
    assert status < 300
    elapsed, code = stop_seconds(tiers["sto"])
    assert code == 0, f"storage stopped in {elapsed:.1f}s with exit code {code}"
    again = run(resources, f"{PREFIX}-sto2", built["storage"].ref, "-v", f"{tiers['vol']}:/var/lib/storage",
                "-p", "127.0.0.1::5000", *HARDENED)
    url = f"http://127.0.0.1:{host_port(again, 5000)}"
    wait_ready(url + "/readyz")
    assert http("GET", url + "/items") == (200, {"items": ["kept"]})
    assert http("DELETE", url + "/items/kept")[0] < 300


@pytest.mark.parametrize("role", ["app", "loader", "hello"])
def test_sigterm_stops_each_image_gracefully(role, built, resources):
    name = run(resources, f"{PREFIX}-stop-{role}", built[role].ref, "-e", "STO_API=http://127.0.0.1:9",
               *HARDENED)
    if role != "loader":  # the server listens: its signal handlers are in place
        port = 5001 if role == "app" else 5000
        connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"
        poll(lambda: docker("exec", name, "python", "-c", connect, check=False).returncode == 0,
             timeout=60, interval=0.2, what=f"the {role} server listening on :{port}")
    else:  # its shell set the trap before it started `sleep infinity`
        poll(lambda: "sleep infinity" in docker("top", name, check=False).stdout, timeout=60, interval=0.2,
             what="the loader's shell waiting on `sleep infinity`")
    elapsed, code = stop_seconds(name)
    print(f"\n{role}: stopped {elapsed:.2f}s after SIGTERM, exit code {code}")
    assert code == 0, f"{role} stopped in {elapsed:.1f}s with exit code {code}"


def test_hello_image_answers_like_the_seed_first_app(built, resources):
    name = run(resources, f"{PREFIX}-hello", built["hello"].ref, "-p", "127.0.0.1::5000", *HARDENED)
    url = f"http://127.0.0.1:{host_port(name, 5000)}"
    wait_ready(url + "/readyz")
    assert http("GET", url + "/") == (200, {"a": 1})
    assert http("GET", url + "/info") == (200, {"info": True})


def test_the_volume_owner_init_container_makes_a_root_owned_host_directory_writable(built, resources, tmp_path):
    """The volume-owner component's fix for a root-owned hostPath, run exactly as the manifest runs it."""
    host_dir = tmp_path / "kubetestpv"
    host_dir.mkdir(mode=0o755)  # as the kubelet creates a DirectoryOrCreate hostPath: root, 0755
    os.chown(host_dir, 0, 0)
    dep = next(o for o in manifests.render_stage(Settings(), "storage", images={"sto-img": built["storage"].ref}, overlay="volume-owner")
               if o["kind"] == "Deployment")
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    sc = init["securityContext"]
    caps = [a for cap in sc["capabilities"]["add"] for a in ("--cap-add", cap)]
    mount = ["-v", f"{host_dir}:/var/lib/storage"]
    before = run(resources, f"{PREFIX}-sto-rootdir", built["storage"].ref, *mount, "-p", "127.0.0.1::5000", *HARDENED)
    url = f"http://127.0.0.1:{host_port(before, 5000)}"
    body = wait_ready(url + "/readyz", expect=503)  # the seed's layout cannot work as non-root ...
    assert "not writable" in body["reason"]
    docker("rm", "-f", before)
    proc = docker("run", "--rm", "--user", f"{sc['runAsUser']}:{sc['runAsGroup']}", "--cap-drop", "ALL", *caps,
                  "--read-only", "--security-opt", "no-new-privileges", *mount, "--entrypoint", init["command"][0],
                  built["storage"].ref, *init["command"][1:], check=False)
    assert proc.returncode == 0, proc.stderr
    assert (host_dir.stat().st_uid, host_dir.stat().st_gid) == (10001, 10001)
    after = run(resources, f"{PREFIX}-sto-fixed", built["storage"].ref, *mount, "-p", "127.0.0.1::5000", *HARDENED)
    url = f"http://127.0.0.1:{host_port(after, 5000)}"
    wait_ready(url + "/readyz")  # ... and works after the init container
    status, body = http("PUT", url + "/items/x")
    assert status < 300 and body == {"created": {"x": True}}
    assert (host_dir / "x").exists()


def test_dev_target_reloads_code_synced_into_app(built, resources):
    (dev,) = [i for i in images.build(SETTINGS, "storage", target="dev", progress=lambda line: None)
              if i.role == "storage"]
    name = run(resources, f"{PREFIX}-sto-dev", dev.ref, "-e", "STO_STORAGE=/tmp/items", "-p", "127.0.0.1::5000",
               "--tmpfs", "/tmp", "--cap-drop", "ALL")
    url = f"http://127.0.0.1:{host_port(name, 5000)}"
    wait_ready(url + "/readyz")
    assert proc1_uids(name) == {10001}
    # what Tilt's live_update does: write a file into /app as the container user
    docker("exec", name, "sh", "-c", "echo '# synced by tilt' >> /app/storage_api/names.py")
    reloaded = "reload: serving the new code"  # twotier_service.devserver's word for it
    def logged() -> bool:
        logs = docker("logs", name)
        return reloaded in logs.stderr + logs.stdout

    poll(logged, timeout=60, interval=0.3, what=f"{reloaded!r} in the dev container's log")
    logs = docker("logs", name)
    assert reloaded in logs.stderr + logs.stdout, logs.stderr[-1500:]
    wait_ready(url + "/readyz")
    # debugpy is in the dev image, for `tilt up -- --debug=...`
    assert docker("exec", name, "python", "-c", "import debugpy").returncode == 0


def test_push_to_the_local_registry(built):
    try:
        socket.create_connection(("127.0.0.1", 5000), timeout=2).close()
    except OSError:
        pytest.fail("no registry listens on localhost:5000: `invoke cluster.up` starts the local one")
    pushed = images.push(SETTINGS, "full", progress=lambda line: None)
    for img in pushed:
        _, body = http("GET", f"http://127.0.0.1:5000/v2/{img.name}/tags/list")
        assert img.tag in body["tags"], img.ref


def test_refused_push_is_a_user_error_with_a_hint(built):
    settings = dataclasses.replace(SETTINGS, registry="127.0.0.1:9")  # nothing listens on the discard port
    try:
        with pytest.raises(UserError) as err:
            images.push(settings, "hello", progress=lambda line: None)
        assert "refused" in err.value.message and "127.0.0.1:9" in err.value.message
        assert "registry" in err.value.hint
    finally:
        for img in images.plan(settings, "hello"):
            docker("rmi", img.ref, check=False)


def test_unpullable_base_image_is_a_user_error_with_a_hint():
    with pytest.raises(UserError) as err:
        images.build(Settings(base_image="twotier-no-such-base:0"), "hello",
                      progress=lambda line: None)
    assert "building first-app" in err.value.message and "base_image: local" in err.value.hint


def test_stopped_engine_is_a_user_error(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(UserError) as err:
        images.build(SETTINGS, "hello")
    assert "not reachable" in err.value.message and "dockerd" in err.value.hint
