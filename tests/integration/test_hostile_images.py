"""The production images serve exactly as on loopback: granian as PID 1 with the RSGI bridge,
an access-log line per request, graceful on SIGTERM, the env settings honoured; hostile clients
(slow headers and bodies, pipelining) do not stop a container; watchdog (a dev-server extra) is
not in the production image but is in the dev target. Real Docker, with the manifests'
restrictions (read-only root filesystem, /tmp tmpfs, no capabilities)."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from contextlib import ExitStack

import pytest
import requests

from twotier.images import build as images
from twotier.poll import Timeout, poll
from twotier.settings import Settings

pytestmark = pytest.mark.docker

SETTINGS = Settings(base_image="local")
PREFIX = f"tt-hostile-{os.getpid()}"
HARDENED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


def docker(*args, check=True, timeout=180) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc


@pytest.fixture(scope="module")
def storage_image() -> str:
    try:
        ok = subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except FileNotFoundError:
        ok = False
    if not ok:
        pytest.fail("the Docker engine is not reachable: start dockerd (see tests/integration/test_images_docker.py)")
    (img,) = [i for i in images.build(SETTINGS, "storage", progress=lambda line: None) if i.role == "storage"]
    return img.ref


@pytest.fixture(scope="module")
def container(storage_image):
    name = f"{PREFIX}-sto"
    docker("run", "-d", "--name", name, "-e", "STO_STORAGE=/tmp/items", "-e", "STO_TIMEOUT=3",
           "-e", "STO_WORKERS=3", "-p", "127.0.0.1::5000", *HARDENED, storage_image)
    try:
        port = int(docker("port", name, "5000/tcp").stdout.split("\n")[0].rsplit(":", 1)[1])
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return requests.get(url + "/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        try:
            poll(ready, timeout=60, interval=0.2, what="the storage container ready")
        except Timeout:
            pytest.fail("the storage container did not get ready: " + docker("logs", name).stdout[-1500:])
        yield name, port, url
    finally:
        docker("rm", "-f", name, check=False)


def _ps(name) -> list[str]:
    return docker("exec", name, "sh", "-c", "for p in /proc/[0-9]*; do "
                  "tr '\\0' ' ' < $p/cmdline; echo \" ppid=$(awk '/^PPid/{print $2}' $p/status)\"; done").stdout.splitlines()


def test_granian_is_pid_1_with_the_configured_workers(container):
    name, _, _ = container
    cmd1 = docker("exec", name, "cat", "/proc/1/cmdline").stdout.replace("\0", " ")
    assert "-m storage_api" in cmd1
    workers = [line for line in _ps(name) if "storage_api" in line and line.endswith("ppid=1")]
    assert len(workers) == 3, _ps(name)  # STO_WORKERS=3


def test_every_request_is_logged_with_its_target(container):
    name, _, url = container
    requests.get(url + "/items?container-log-marker", timeout=5)
    try:
        poll(lambda: '"GET /items?container-log-marker HTTP/1.1" 200' in docker("logs", name).stdout,
             timeout=60, interval=0.2, what="the request's access-log line")
    except Timeout:
        pytest.fail("no access-log line: " + docker("logs", name).stdout[-1500:])


def test_slow_clients_do_not_stop_the_container(container):
    _, port, url = container
    stop = threading.Event()
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10)) for _ in range(48)]
        for i, sock in enumerate(socks):
            sock.sendall(b"GET /items HTTP/1.1\r\nHost: x\r\n" if i % 2 else
                         b"POST /items:batch HTTP/1.1\r\nHost: x\r\nContent-Length: 9999\r\n\r\n{")

        def dribble():
            for _ in range(30):  # at most 15 s
                if stop.wait(0.5):
                    return
                for sock in socks:
                    try:
                        sock.sendall(b"X-Slow: 1\r\n")
                    except OSError:
                        pass

        thread = threading.Thread(target=dribble, daemon=True)
        thread.start()
        try:
            for _ in range(5):  # spread over the dribbling, paced, not waiting for anything
                assert requests.get(url + "/items", timeout=5).status_code == 200
                stop.wait(0.5)
        finally:
            stop.set()
            thread.join(5)


def test_pipelined_requests_are_all_answered(container):
    _, port, _ = container
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(f"PUT /items/c{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
                              for i in range(20)))
        data, deadline = b"", time.monotonic() + 10
        while data.count(b"HTTP/1.1 20") < 20 and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.1 201") == 20, data[-500:]


def test_watchdog_is_only_in_the_dev_target(storage_image):
    probe = ["--entrypoint", "python", storage_image, "-c", "import importlib.util as u; print(bool(u.find_spec('watchdog')))"]
    assert docker("run", "--rm", *probe).stdout.strip() == "False"
    (dev,) = [i for i in images.build(SETTINGS, "storage", target="dev", progress=lambda line: None)
              if i.role == "storage"]
    assert docker("run", "--rm", "--entrypoint", "python", dev.ref, "-c",
                  "import watchdog; print('ok')").stdout.strip() == "ok"


def test_sigterm_stops_the_container_gracefully(storage_image):
    name = f"{PREFIX}-sto-stop"
    docker("run", "-d", "--name", name, "-e", "STO_STORAGE=/tmp/items", *HARDENED, storage_image)
    try:
        poll(lambda: "Started worker-2" in docker("logs", name).stdout, timeout=60, interval=0.2,
             what="the storage container's workers started")
        docker("kill", "--signal", "TERM", name)
        docker("wait", name, timeout=60)
        assert docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
        assert "Shutting down granian" in docker("logs", name).stdout
    finally:
        docker("rm", "-f", name, check=False)


def test_the_storage_container_at_rest_stays_under_100_mib(storage_image):
    """What the container's cgroup is charged (the figure a memory limit counts), as the
    benchmark measures it: master and 2 workers share most pages, so it is well below the sum of
    their RSS."""
    from bench.report import AT_REST_ENV, container_memory

    charged, summed_rss = container_memory(storage_image, AT_REST_ENV["storage"], settle=6)
    assert 10 < charged < 100, (charged, summed_rss)
    assert charged < summed_rss, (charged, summed_rss)
