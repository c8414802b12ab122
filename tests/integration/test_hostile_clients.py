"""Hostile and broken clients against the real server processes (granian, as in production) on
loopback: slow headers, slow bodies, idle floods, pipelining, HEAD/OPTIONS, pathological
requests, a storage worker or the whole storage killed mid-createlist, and the temporary
files of a crashed process. Every loop is bounded in count and time; a "still serving" check
is a normal request with a client timeout, far longer than a served request takes and far
shorter than the hostile clients keep going."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests

from tests.support.background import repeating
from twotier.dev.servers import APP, HELLO, STORAGE, ServiceProcess
from twotier.poll import poll
from twotier.ports import free_port

#: far more hostile connections than the app threads of a service (2 workers x 4 threads)
HOSTILE = 24
#: the service's client timeout (headers, then body) in these tests: short, so the test is too
SERVICE_TIMEOUT = 3


@pytest.fixture
def storage(tmp_path):
    items = tmp_path / "items"
    with ServiceProcess(STORAGE, free_port(), {"STO_STORAGE": str(items),
                                               "STO_TIMEOUT": str(SERVICE_TIMEOUT)}) as proc:
        proc.items = items
        yield proc


@pytest.fixture
def app(storage):
    with ServiceProcess(APP, free_port(), {"STO_API": storage.url,
                                           "API_TIMEOUT": str(SERVICE_TIMEOUT)}) as proc:
        yield proc


@pytest.fixture
def hello():
    with ServiceProcess(HELLO, free_port(), {"HELLO_TIMEOUT": str(SERVICE_TIMEOUT)}) as proc:
        yield proc


def _still_serving(service, path: str, expected: int = 200) -> None:
    resp = requests.get(service.url + path, timeout=5)
    assert resp.status_code == expected, resp.text


def _connect(service) -> socket.socket:
    sock = socket.create_connection((service.host, service.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@contextmanager
def _dribblers(service, head: bytes, drip: bytes, count: int = HOSTILE, every: float = 0.5):
    """``count`` connections that send ``head`` and then ``drip`` every ``every`` seconds (a
    thread, at most 60 s) until the block ends; yields the list of their sockets."""
    socks = [_connect(service) for _ in range(count)]
    for sock in socks:
        sock.sendall(head)

    def send_drip():
        for sock in socks:
            try:
                sock.sendall(drip)
            except OSError:
                pass  # the server gave up on it: fine

    try:
        with repeating(send_drip, every, limit=60, first_now=False):
            yield socks
    finally:
        for sock in socks:
            sock.close()


def _read_answer(sock: socket.socket, timeout: float = 15) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


SLOW_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize("who, path", [("storage", "/items"), ("app", "/healthz"), ("hello", "/")])
def test_slow_headers_do_not_stop_a_service(request, who, path):
    service = request.getfixturevalue(who)
    with _dribblers(service, SLOW_HEADERS, b"X-Slow: 1\r\n"):
        for _ in range(5):  # while they keep dribbling (about 2.5 s)
            _still_serving(service, path)
            time.sleep(0.5)  # pacing: the checks spread over the dribbling; nothing is awaited


def test_slow_header_clients_are_cut_off_after_the_timeout(storage):
    with _dribblers(storage, SLOW_HEADERS, b"X-Slow: 1\r\n", count=3) as socks:
        answer = _read_answer(socks[0], timeout=SERVICE_TIMEOUT + 10)
    # closed (or answered 408), not served forever
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_slow_bodies_do_not_stop_the_storage_and_get_a_json_408(storage):
    head = (b"POST /items:batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{\"create\": [")
    with _dribblers(storage, head, b'"a",') as socks:
        for _ in range(4):
            _still_serving(storage, "/items")
            time.sleep(0.5)  # pacing: the checks spread over the dribbling; nothing is awaited
        answer = _read_answer(socks[0], timeout=SERVICE_TIMEOUT + 10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer or b"application/json" in answer
    assert _items(storage) == []  # nothing half-parsed was created


def test_slow_bodies_do_not_stop_the_app(app):
    head = b"POST /createlist/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    with _dribblers(app, head, b"x"):
        for _ in range(4):
            _still_serving(app, "/healthz")
            time.sleep(0.5)  # pacing: the checks spread over the dribbling; nothing is awaited


@pytest.mark.parametrize("who, path", [("storage", "/items"), ("app", "/healthz")])
def test_two_thousand_idle_connections_neither_wedge_nor_outlive_a_service(request, who, path):
    service = request.getfixturevalue(who)
    with ExitStack() as stack:
        for _ in range(2000):
            stack.enter_context(socket.create_connection((service.host, service.port), timeout=10))
        _still_serving(service, path)
    for _ in range(3):  # recovered: and keeps answering
        _still_serving(service, path)
    # no pile of CLOSE-WAIT sockets left in the server, once it has read the clients' FINs (the
    # deadline only bounds a hang: a loaded machine takes a moment to go through 2000 of them)
    pids = {service.pid, *_children(service.pid)}
    poll(lambda: sum(_close_wait(pid) for pid in pids) < 50, timeout=30, interval=0.1,
         what="the server's side of 2000 closed connections closed too")


def test_pipelined_requests_are_all_answered_in_order(storage):
    count = 20
    sock = _connect(storage)
    sock.sendall(b"".join(f"PUT /items/p{i:02d} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
                          for i in range(count)))
    data, deadline = b"", time.monotonic() + 15
    sock.settimeout(5)
    while data.count(b"HTTP/1.1 201") < count and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in data.split(b"HTTP/1.1 ")[1:]]
    assert [next(iter(b["created"])) for b in bodies] == [f"p{i:02d}" for i in range(count)]
    assert _items(storage) == [f"p{i:02d}" for i in range(count)]


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_head_and_options_change_no_data(app, storage, method):
    for path in ("/createlist/3", "/clear"):
        assert requests.request(method, app.url + path, timeout=10).status_code in (200, 405)
    assert requests.request(method, storage.url + "/items/a", timeout=10).status_code in (200, 405)
    assert _items(storage) == []
    requests.get(app.url + "/createlist/2", timeout=10)
    requests.head(app.url + "/clear", timeout=10)
    assert _items(storage) == ["0", "1"]


def _items(storage) -> list[str]:
    """The items in the storage directory (not the .sto-* temporary/idempotency files)."""
    return sorted(n for n in os.listdir(storage.items) if not n.startswith("."))


def test_leading_slashes_are_ignored_never_redirected(storage):
    """Werkzeug routes ``//items`` as ``/items`` (it strips leading slashes): the same answer,
    no redirect built from the Host header."""
    status, headers, data = _raw(storage, "GET", "//items")
    assert (status, json.loads(data)) == (200, {"items": []})
    assert "location" not in {k.lower() for k in headers}


@pytest.mark.parametrize("who, path", [("storage", "/items:batch"), ("app", "/createlist/5")])
def test_too_large_bodies_are_a_json_413_without_being_read(request, who, path):
    service = request.getfixturevalue(who)
    sock = _connect(service)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {64 * 1024 * 1024}\r\n\r\n".encode()
                 + b"[" * 1000)  # and nothing more: the answer must not wait for 64 MiB
    answer = _read_answer(sock, timeout=15)
    sock.settimeout(15)
    while answer.count(b"}") == 0:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert json.loads(body)["error"] == "request_entity_too_large"


def _raw(service, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    conn = http.client.HTTPConnection(service.host, service.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", "evil.example")
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body or method in ("POST", "PUT"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("who, method, path, body, status", [
    ("storage", "POST", "/items:batch", b"[" * 1000 + b"]" * 1000, 400),
    ("storage", "POST", "/items:batch", b'{"create": ' + b"[" * 3000 + b"}", 400),
    ("storage", "PUT", "/items//abc", b"", 404),
    ("storage", "GET", "/items//", b"", 404),
    ("storage", "POST", "/items", b"", 405),
    ("app", "GET", "/createlist//5", b"", 404),
    ("app", "GET", "/clear//", b"", 404),
    ("app", "POST", "/createlist/5", b"", 405),
    ("app", "GET", "/createlist/0000000000000000003", b"", 200),
    ("hello", "GET", "/info//", b"", 404),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else ("" if isinstance(v, (str, int)) else f"{len(v)}B"))
def test_errors_are_json_and_never_redirect(request, who, method, path, body, status):
    service = request.getfixturevalue(who)
    got, headers, data = _raw(service, method, path, body)
    assert got == status, data[:300]
    assert headers.get("content-type") == "application/json"
    assert "location" not in {k.lower() for k in headers}
    answer = json.loads(data)
    if status == 200:
        assert answer["createds"] == ["0", "1", "2"]
    else:
        assert answer["status"] == status


def _children(pid: int) -> list[int]:
    try:
        out = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in out.split()]


def _close_wait(pid: int) -> int:
    """Sockets of process ``pid`` in CLOSE-WAIT (state 08 in /proc/<pid>/net/tcp, which lists
    the network namespace's sockets: an upper bound, fine for "no pile")."""
    try:
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return 0
    return sum(1 for line in lines if line.split()[3] == "08")


def _count(directory: Path) -> int:
    try:
        return len(os.listdir(directory))
    except FileNotFoundError:
        return 0


def _wait_for_items(directory: Path, at_least: int, timeout: float = 60) -> None:
    """Until DIRECTORY holds AT_LEAST entries (TIMEOUT only bounds a hang)."""
    poll(lambda: _count(directory) >= at_least, timeout=timeout, interval=0.01,
         what=f"{at_least} items in {directory}")


N = 100_000


def _get_in_background(url: str, answer: dict) -> threading.Thread:
    def run():
        answer["resp"] = requests.get(url, timeout=120)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _kill_workers(storage) -> list[int]:
    workers = _children(storage.pid)
    assert workers, "no storage worker processes found"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    return workers


def test_a_storage_worker_killed_mid_createlist_leaves_an_honest_report(storage, app):
    """kill -9 of the storage workers while createlist/100000 runs: the app re-sends the batch
    (its idempotency key), a replaced worker finishes it; createds is exactly what exists."""
    answer = {}
    thread = _get_in_background(f"{app.url}/createlist/{N}", answer)
    _wait_for_items(storage.items, 1000)
    workers = _kill_workers(storage)
    thread.join(120)
    resp = answer["resp"]
    assert resp.status_code == 200, resp.text[:300]
    body = resp.json()
    existing = set(requests.get(storage.url + "/items", timeout=30).json()["items"])
    assert set(body["createds"]) <= existing
    assert not set(body["faileds"]) & existing
    assert len(body["createds"]) == len(existing) == N  # the re-sent batch completed the job
    assert sorted(_children(storage.pid)) != sorted(workers)  # replaced, same master


def test_a_storage_worker_killed_mid_clear_leaves_an_honest_report(storage, app):
    """kill -9 of the storage workers while clear deletes 100000 items: the re-sent batch (same
    idempotency key) reports the items its first attempt deleted too; deleteds is every item."""
    resp = requests.get(f"{app.url}/createlist/{N}", timeout=120)
    assert len(resp.json()["createds"]) == N
    answer = {}
    thread = _get_in_background(f"{app.url}/clear", answer)
    poll(lambda: _count(storage.items) <= N - 1000, timeout=60, interval=0.01,
         what="clear's first 1000 items deleted")
    _kill_workers(storage)
    thread.join(120)
    resp = answer["resp"]
    assert resp.status_code == 200, resp.text[:300]
    body = resp.json()
    assert requests.get(storage.url + "/items", timeout=30).json()["items"] == []
    assert body["faileds"] == []
    assert len(body["deleteds"]) == len(set(body["deleteds"])) == N


def test_the_whole_storage_killed_mid_createlist_faileds_names_no_existing_item(tmp_path):
    items = tmp_path / "items"
    storage = ServiceProcess(STORAGE, free_port(), {"STO_STORAGE": str(items)}).start().wait_ready()
    try:
        with ServiceProcess(APP, free_port(), {"STO_API": storage.url, "API_BATCH_SIZE": "5000"}) as app:
            answer = {}
            thread = _get_in_background(f"{app.url}/createlist/{N}", answer)
            _wait_for_items(items, 12_000)
            os.killpg(storage.pid, signal.SIGKILL)
            storage.proc.wait(10)
            thread.join(120)
            resp = answer["resp"]
            assert resp.status_code == 200, resp.text[:300]
            body = resp.json()
            existing = set(n for n in os.listdir(items) if not n.startswith("."))
            assert body["createds"] and set(body["createds"]) <= existing
            assert body["faileds"], "the storage died: some items were never sent"
            assert not set(body["faileds"]) & existing, "faileds names items that exist"
    finally:
        storage.stop()


def test_temporary_files_of_a_crashed_process_are_swept_without_a_restart(storage):
    """A process creating items in the same directory is killed -9 while holding its temporary
    file; the running service removes that file at its next listing."""
    code = ("import os, sys, time\n"
            "from storage_api.store import _LinkSource\n"
            "source = _LinkSource(sys.argv[1]).__enter__()\n"
            "source.link_to(os.path.join(sys.argv[1], 'made-before-the-kill'))\n"
            "print(os.path.basename(source.path), flush=True)\n"
            "import signal; signal.pause()\n")  # alive until the test kills it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STORAGE.directory), str(STORAGE.directory.parent / "common")])}
    requests.get(storage.url + "/items", timeout=10)  # the directory exists
    proc = subprocess.Popen([sys.executable, "-c", code, str(storage.items)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        temp = proc.stdout.readline().strip()
        assert temp.startswith(".sto-tmp-") and (storage.items / temp).exists()
    finally:
        proc.kill()
        proc.wait(10)
    assert requests.get(storage.url + "/items", timeout=10).json() == {"items": ["made-before-the-kill"]}
    assert not (storage.items / temp).exists()
