"""The application API (granian, real process) when its storage tier is dead, hung, answers
garbage or restarts: always a fast JSON 502/503/504, never a 500, and it recovers."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from twotier.dev.servers import APP, STORAGE, ServiceProcess
from twotier.poll import poll
from twotier.ports import free_port


class FakeTier:
    """A TCP server on loopback standing in for a broken storage tier: ``reply`` is the raw
    bytes sent to each connection (None = accept and never answer)."""

    def __init__(self, reply: bytes | None, drop_first: int = 0):
        self.reply = reply
        self.drop_first = drop_first  # close this many connections at once, unanswered
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.reply is None:
                self.held.append(conn)  # hung: keep it open, say nothing
                continue
            if self.drop_first > 0:
                self.drop_first -= 1
                conn.recv(65536)
                conn.close()
                continue
            try:
                conn.recv(65536)
                conn.sendall(self.reply)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


def _timed(url):
    """The answer and how long it took. The time only ever backs a lower bound that causality
    gives (a timeout cannot fire before its limit); the 30 s client timeout bounds a hang. How
    fast the errors come is a benchmark's figure, not a test's threshold."""
    start = time.monotonic()
    resp = requests.get(url, timeout=30)
    return resp, time.monotonic() - start


def _assert_json_error(resp, status, error):
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert (body["error"], body["status"]) == (error, status)
    return body


@pytest.mark.parametrize("path", ["/createlist/5", "/clear"])
def test_dead_storage_is_a_fast_json_503(path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with ServiceProcess(APP, free_port(), {"STO_API": dead}) as app:
        resp, _elapsed = _timed(app.url + path)
        body = _assert_json_error(resp, 503, "storage_unreachable")
        assert body["message"] == "cannot connect to the storage tier"  # no address in a public answer
        # the reason goes to the app's log, under the request's id
        poll(lambda: any(body["request_id"] in line and "Connection refused" in line for line in app.output),
             timeout=30, interval=0.05, what=f"the app's log line for request {body['request_id']}")
        assert requests.get(app.url + "/readyz", timeout=5).status_code == 200  # still ready


def test_unresolvable_storage_host_is_a_json_503():
    with ServiceProcess(APP, free_port(), {"STO_API": "http://no-such-host.invalid:5000"}) as app:
        resp, _elapsed = _timed(app.url + "/createlist/2")
        _assert_json_error(resp, 503, "storage_unreachable")


@pytest.fixture(scope="module")
def fake_tier():
    fake = FakeTier(None)
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def app_on_fake_tier(fake_tier):
    env = {"STO_API": f"http://127.0.0.1:{fake_tier.port}", "API_READ_TIMEOUT": "0.5"}
    with ServiceProcess(APP, free_port(), env) as app:
        yield app


def test_hung_storage_is_a_json_504_after_the_read_timeout(fake_tier, app_on_fake_tier):
    fake_tier.reply = None
    held_before = len(fake_tier.held)
    resp, elapsed = _timed(app_on_fake_tier.url + "/createlist/5")  # POST: never re-sent
    body = _assert_json_error(resp, 504, "storage_timeout")
    assert "within 0.5 s (API_READ_TIMEOUT)" in body["message"], body["message"]
    assert elapsed >= 0.5, f"a 504 after {elapsed:.2f} s cannot come from a 0.5 s read timeout"
    resp, elapsed = _timed(app_on_fake_tier.url + "/clear")  # GET: not re-sent after a timeout
    body = _assert_json_error(resp, 504, "storage_timeout")
    assert "within 0.5 s (API_READ_TIMEOUT)" in body["message"], body["message"]
    assert elapsed >= 0.5
    # not re-sent: the hung tier saw one connection per request (held open, never answered)
    assert len(fake_tier.held) == held_before + 2, f"{len(fake_tier.held) - held_before} connections for 2 requests"


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\nnot json!",
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"items\": 42}",
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!",
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"",  # closes without a word
], ids=["not-json", "wrong-json", "http-500", "not-http", "silent-close"])
def test_garbage_from_storage_is_a_json_502(fake_tier, app_on_fake_tier, reply):
    fake_tier.reply = reply
    for path in ("/createlist/3", "/clear"):
        resp, _elapsed = _timed(app_on_fake_tier.url + path)
        _assert_json_error(resp, 502, "storage_bad_response")


def test_a_batch_dropped_before_any_answer_is_sent_again(fake_tier, app_on_fake_tier):
    """A keep-alive connection closed by the storage server just as the app reuses it (or a
    storage worker killed and replaced) must not fail the request: the idempotent batch is
    re-sent up to twice, with the same Idempotency-Key; a read timeout is not."""
    batch = b'{"created":["0"],"existing":[],"deleted":[],"missing":[],"failed":{}}'
    fake_tier.reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(batch), batch))
    fake_tier.drop_first = 1
    resp = requests.get(app_on_fake_tier.url + "/createlist/1", timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"createds": ["0"], "deleteds": [], "faileds": []}
    fake_tier.drop_first = 2  # dropped twice: the third sending gets through
    assert requests.get(app_on_fake_tier.url + "/createlist/1", timeout=30).status_code == 200
    fake_tier.drop_first = 3  # dropped three times: a clean 502
    _assert_json_error(requests.get(app_on_fake_tier.url + "/createlist/1", timeout=30), 502,
                       "storage_bad_response")
    fake_tier.drop_first = 0


def test_app_recovers_when_the_storage_tier_restarts(tmp_path):
    port = free_port()
    env = {"STO_STORAGE": str(tmp_path)}
    storage = ServiceProcess(STORAGE, port, env).start().wait_ready()
    try:
        with ServiceProcess(APP, free_port(), {"STO_API": storage.url}) as app:
            assert requests.get(app.url + "/createlist/3", timeout=10).json()["createds"] == ["0", "1", "2"]
            storage.stop()
            resp, _elapsed = _timed(app.url + "/createlist/5")
            _assert_json_error(resp, 503, "storage_unreachable")
            storage = ServiceProcess(STORAGE, port, env).start().wait_ready()
            # pooled keep-alive connections to the old process are dead: the app must not care
            for _ in range(4):
                resp = requests.get(app.url + "/createlist/5", timeout=10)
                assert resp.status_code == 200, resp.text
            assert requests.get(app.url + "/clear", timeout=10).json()["deleteds"] == ["0", "1", "2", "3", "4"]
    finally:
        storage.stop()
