"""tests.support.dap against a scripted adapter on loopback: an adapter with no debuggee left
answers `initialize` but refuses `attach` (debugpy: "There is no debug server connected to this
adapter."); the client must say so at once, not wait out its timeout for `initialized`."""
from __future__ import annotations

import json
import socket
import threading

import pytest

from tests.support.dap import DapClient, DapError, attach_when_ready


def _adapter_refusing_attach(listener: socket.socket, stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn, conn.makefile("rb") as stream:
            while True:
                header = stream.readline()
                if not header:
                    break
                length = int(header.split(b":")[1])
                stream.readline()
                request = json.loads(stream.read(length))
                refused = request["command"] == "attach"
                answer = {"seq": 1, "type": "response", "request_seq": request["seq"],
                          "command": request["command"], "success": not refused,
                          "message": "There is no debug server connected to this adapter." if refused else "",
                          "body": {}}
                body = json.dumps(answer).encode()
                conn.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)


@pytest.fixture
def refusing_adapter():
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=_adapter_refusing_attach, args=(listener, stop), daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def test_a_refused_attach_fails_at_once_with_the_adapters_reason(refusing_adapter):
    # the adapter's own reason, not a timeout's (which is what waiting out the 30 s would raise)
    with DapClient("127.0.0.1", refusing_adapter, timeout=30) as client, \
            pytest.raises(DapError, match="attach failed: There is no debug server connected"):
        client.attach({"/x.py": [1]})


def test_attach_when_ready_tries_again_then_reports_the_last_reason(refusing_adapter):
    with pytest.raises(DapError, match=r"within 2s: attach failed: There is no debug server"):
        attach_when_ready("127.0.0.1", refusing_adapter, {"/x.py": [1]}, timeout=2,
                          session_timeout=5, retry_every=0.1)
