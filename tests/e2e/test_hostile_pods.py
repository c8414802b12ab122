"""The deployed pods resist slow clients too: through the NodePorts of the full stage, dozens of
connections dribbling their request headers or body do not stop either tier from answering
(in the container the services run exactly as on loopback: granian as PID 1, the RSGI bridge).
Bounded: 48 hostile connections, at most 20 s of dribbling, every request with a timeout."""
from __future__ import annotations

import json
import socket
import threading
import urllib.request
from contextlib import ExitStack

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("clean_slate")]

STORAGE_PORT, APP_PORT = 31000, 31001
HEAD = b"GET /items HTTP/1.1\r\nHost: x\r\n"
BODY = b"POST /items:batch HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"create\": ["


def _get(url: str) -> tuple[int, object]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


@pytest.mark.parametrize("port, path", [(STORAGE_PORT, "/items"), (APP_PORT, "/createlist/3")])
def test_slow_clients_do_not_stop_a_deployed_tier(full_stage, node_ip, port, path):
    stop = threading.Event()
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.create_connection((node_ip, port), timeout=10))
                 for _ in range(48)]
        for i, sock in enumerate(socks):
            sock.sendall(HEAD if i % 2 else BODY)

        dribbling = threading.Event()

        def dribble():
            for _ in range(40):  # at most 20 s
                if stop.wait(0.5):
                    return
                for i, sock in enumerate(socks):
                    try:
                        sock.sendall(b"X-Slow: 1\r\n" if i % 2 else b'"s",')
                    except OSError:
                        pass  # the server cut it off: fine
                dribbling.set()

        thread = threading.Thread(target=dribble, daemon=True)
        thread.start()
        try:
            assert dribbling.wait(60), "the hostile connections never sent their second part"
            for _ in range(6):  # while they dribble
                status, _ = _get(f"http://{node_ip}:{port}{path}")
                assert status == 200
                stop.wait(0.5)  # pacing: the checks spread over the dribbling; nothing is awaited
        finally:
            stop.set()
            thread.join(5)
