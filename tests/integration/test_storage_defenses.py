"""The storage tier's second round of defenses, against the real server processes (granian and
the RSGI bridge, as in production) on loopback: one decoding of the path, chunked bodies, a
header limit, memory under concurrent large bodies, a full volume, and probes under listing load.
Each test here failed on the services before these defenses; the hostile-client checks of the
first round are in test_hostile_clients.py."""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tests.support.memory import junk_batch, peak_pss
from twotier.dev.servers import APP, STORAGE, ServiceProcess
from twotier.poll import poll
from twotier.ports import free_port


@pytest.fixture
def storage(tmp_path):
    items = tmp_path / "items"
    with ServiceProcess(STORAGE, free_port(), {"STO_STORAGE": str(items)}) as proc:
        proc.items = items
        yield proc


@pytest.fixture
def app(storage):
    with ServiceProcess(APP, free_port(), {"STO_API": storage.url}) as proc:
        yield proc


def _items(storage) -> list[str]:
    return sorted(n for n in os.listdir(storage.items) if not n.startswith("."))


def _raw(service, request: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Send REQUEST bytes as they are (no client library normalizes them); status and body."""
    with socket.create_connection((service.host, service.port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


# -- one decoding of the path -----------------------------------------------------------------
def test_a_percent_encoded_percent_is_never_decoded_twice(storage, app):
    requests.get(app.url + "/createlist/3", timeout=10)
    status, body = _raw(app, _get("/%2563lear"))  # the route "/%63lear", not "/clear"
    assert status == 404 and json.loads(body)["error"] == "not_found"
    assert _items(storage) == ["0", "1", "2"]
    put = b"PUT /items/%2561bc HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    status, body = _raw(storage, put)  # the name "%61bc": not a valid item name
    assert status == 400 and json.loads(body)["error"] == "invalid_item_name"
    batch = (b'POST /items%253Abatch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
             b'Content-Length: 18\r\nConnection: close\r\n\r\n{"delete": ["0"]}\n')
    status, _ = _raw(storage, batch)
    assert status in (404, 405)
    assert _items(storage) == ["0", "1", "2"]


def test_the_access_log_shows_the_path_that_ran(app):
    _raw(app, _get("/%2563lear"))
    poll(lambda: '"GET /%2563lear HTTP/1.1" 404' in app.tail(50), timeout=10, interval=0.05,
         what="the access log line of GET /%2563lear")


# -- bodies ------------------------------------------------------------------------------------
def test_chunked_bodies_arrive_whole(storage):
    def chunks():
        yield b'{"create": ["a", '
        yield b'"b"]}'

    resp = requests.post(storage.url + "/items:batch", data=chunks(), timeout=10,
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["created"] == ["a", "b"]
    assert _items(storage) == ["a", "b"]


def test_headers_are_bounded(storage):
    huge = b"GET /items HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 100_000 + b"\r\nConnection: close\r\n\r\n"
    status, _ = _raw(storage, huge)
    assert status in (400, 431)
    assert requests.get(storage.url + "/items", timeout=10).status_code == 200


#: the storage container's memory limit (k8s/storage/deployment.yaml)
CONTAINER_LIMIT = 256 * 1024 * 1024


def test_concurrent_large_junk_bodies_stay_far_below_the_container_limit(storage):
    """16 clients at once, each sending the largest body allowed, shaped to cost the most once
    parsed (a long list of short strings): the processes' summed PSS peaks well under the
    container's limit, and every answer is a JSON 4xx."""
    requests.get(storage.url + "/items", timeout=10)
    junk = junk_batch(2 * 1024 * 1024)
    with peak_pss(storage.pid) as peak, ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: requests.post(
            storage.url + "/items:batch", data=junk, timeout=60,
            headers={"Content-Type": "application/json"}).status_code, range(32)))
    assert set(statuses) <= {400, 413}, statuses
    print(f"peak summed PSS of the storage processes: {peak[0] / 2**20:.0f} MiB")
    assert peak[0] < CONTAINER_LIMIT * 0.75


# -- a full volume -------------------------------------------------------------------------------
@pytest.fixture
def tiny_volume(tmp_path):
    """A tmpfs with room for about 200 items (inodes), as a volume that fills up."""
    mount = tmp_path / "volume"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=220", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_volume_still_clears_and_frees_its_space(tiny_volume):
    with ServiceProcess(STORAGE, free_port(), {"STO_STORAGE": str(tiny_volume)}) as storage, \
            ServiceProcess(APP, free_port(), {"STO_API": storage.url}) as app:
        answer = requests.get(app.url + "/createlist/1000", timeout=60).json()
        assert answer["faileds"], "the volume did not fill up"
        created = set(answer["createds"])
        listed = requests.get(storage.url + "/items", timeout=10).json()["items"]
        assert set(listed) == created  # no item reported failed exists, none created is missing
        assert all((tiny_volume / n).read_bytes() == b"x" for n in listed)  # no empty item
        assert not [n for n in os.listdir(tiny_volume) if n.startswith(".sto-tmp-")]  # no leak
        cleared = requests.get(app.url + "/clear", timeout=60)
        assert cleared.status_code == 200, cleared.text
        assert sorted(cleared.json()["deleteds"], key=int) == sorted(created, key=int)
        assert requests.get(storage.url + "/items", timeout=10).json()["items"] == []
        used = os.statvfs(tiny_volume)
        assert used.f_files - used.f_ffree < 10  # the space is free now, not kept in records
        again = requests.get(app.url + "/createlist/50", timeout=60).json()
        assert len(again["createds"]) == 50 and not again["faileds"]


# -- probes under listing load ---------------------------------------------------------------------
def test_probes_answer_while_ten_clients_list_50k_items(storage):
    """Listings run on the app threads, so the event loop answers a probe at once: it comes
    back before the first of ten concurrent listings of 50,000 items does."""
    for start in range(0, 50_000, 10_000):
        names = [f"item{i:06d}" for i in range(start, start + 10_000)]
        assert requests.post(storage.url + "/items:batch", json={"create": names}, timeout=60).ok
    done: list[tuple[str, float]] = []
    lock = threading.Lock()

    def call(path: str, label: str):
        conn = http.client.HTTPConnection(storage.host, storage.port, timeout=60)
        conn.request("GET", path)
        conn.getresponse().read()
        with lock:
            done.append((label, time.monotonic()))
        conn.close()

    listings = [threading.Thread(target=call, args=("/items", "list")) for _ in range(10)]
    for t in listings:
        t.start()
    server = psutil.Process(storage.pid)

    def listings_accepted() -> bool:
        return sum(1 for p in server.children() for c in p.net_connections("tcp")
                   if c.status == "ESTABLISHED") >= 10

    poll(listings_accepted, timeout=30, interval=0.005, what="ten listing connections accepted")
    call("/healthz", "probe")
    for t in listings:
        t.join(60)
    order = [label for label, _ in sorted(done, key=lambda d: d[1])]
    assert order[0] == "probe", order


# -- the dev server's debugger ------------------------------------------------------------------------
def test_the_debugger_listens_on_loopback_only():
    """Whoever reaches debugpy's port can run code in the process: in a pod it must answer only
    the pod's own 127.0.0.1, where a port-forward connects."""
    from twotier.dev.servers import HELLO

    outside = next(a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                   if a.family == socket.AF_INET and not a.address.startswith("127."))
    debug_port = free_port()
    with ServiceProcess(HELLO, free_port(), dev=True, env={"TWOTIER_DEBUG_PORT": str(debug_port)}) as hello:
        poll(lambda: "debugpy listening" in hello.tail(50), timeout=60, interval=0.1,
             what="the dev server's debugger listening")
        socket.create_connection(("127.0.0.1", debug_port), timeout=5).close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((outside, debug_port), timeout=5)
