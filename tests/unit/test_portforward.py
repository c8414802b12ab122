"""twotier.kube.portforward without a cluster: which pods of a Service take connections (from
EndpointSlices), and the forward's own relay, with HTTP servers on loopback standing in for pods
and a socketpair relay standing in for the runtime's port-forward (it reports a refused port the
way containerd does). tests/e2e/test_portforward_access.py proves it on the real cluster."""
from __future__ import annotations

import http.server
import json
import socket
import threading
import urllib.request
from dataclasses import dataclass

import pytest

from twotier.errors import UserError
from twotier.kube import portforward
from twotier.kube.portforward import Endpoint, ready_endpoints
from twotier.poll import poll


def slice_of(endpoints, port_name="http", port=5000):
    return {"ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": cond, "targetRef": {"kind": "Pod", "name": pod}}
                          for pod, ip, cond in endpoints]}


READY = {"ready": True, "serving": True, "terminating": False}
TERMINATING = {"ready": False, "serving": True, "terminating": True}
STARTING = {"ready": False, "serving": False, "terminating": False}


def test_only_ready_pods_take_connections():
    slices = [slice_of([("new", "10.0.0.2", READY), ("old", "10.0.0.1", TERMINATING)]),
              slice_of([("starting", "10.0.0.3", STARTING), ("unset", "10.0.0.4", {})])]
    assert ready_endpoints(slices, "http") == [Endpoint("new", "10.0.0.2", 5000), Endpoint("unset", "10.0.0.4", 5000)]


def test_terminating_pods_that_still_serve_are_used_only_when_none_is_ready():
    slices = [slice_of([("old", "10.0.0.1", TERMINATING), ("starting", "10.0.0.3", STARTING)])]
    assert ready_endpoints(slices, "http") == [Endpoint("old", "10.0.0.1", 5000)]


def test_the_pods_port_is_the_one_behind_the_named_service_port():
    slices = [slice_of([("a", "10.0.0.1", READY)], port_name="http", port=8080),
              slice_of([("a", "10.0.0.1", READY)], port_name="metrics", port=9090),
              {"ports": None, "endpoints": [{"addresses": ["10.0.0.9"], "conditions": READY,
                                             "targetRef": {"kind": "Pod", "name": "x"}}]},
              slice_of([("n", "10.0.0.5", READY)], port_name="", port=7000)]
    assert ready_endpoints(slices, "http") == [Endpoint("a", "10.0.0.1", 8080)]
    assert ready_endpoints(slices, "") == [Endpoint("n", "10.0.0.5", 7000)]
    assert ready_endpoints([{"ports": [{"port": 7000}], "endpoints": [
        {"addresses": ["10.0.0.6"], "conditions": READY, "targetRef": {"kind": "Node", "name": "n1"}}]}], "") == []


@pytest.mark.parametrize("error, expected", [
    ('error forwarding port 5000 to pod sto-dep-1, uid : failed to connect to localhost:5000 inside namespace '
     '"abc", IPv4: dial tcp4 127.0.0.1:5000: connect: connection refused IPv6 dial tcp6: address ::1: no route', True),
    ("E1204 socat[42] E connect(5, AF=2 127.0.0.1:5000, 16): Connection refused", True),
    ("error forwarding port 5000 to pod x: read: connection reset by peer", False),
    ("", False),
])
def test_only_a_refused_connect_counts_as_nothing_delivered(error, expected):
    assert portforward.refused(error) is expected


# ------------------------------------------------------------------ the relay, with loopback "pods"

class Pod:
    """An HTTP server on loopback answering {"pod": NAME, "path": ...}; stop() closes its port."""

    def __init__(self, name: str):
        self.name = name
        pod = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({"pod": pod.name, "path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                data = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.dumps({"pod": pod.name, "got": len(data)}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.name, "127.0.0.1", self.port)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@dataclass
class FakeStream:
    sock: socket.socket
    on_close: object
    err: str = ""

    def error(self) -> str:
        return self.err

    def close(self) -> None:
        self.sock.close()
        self.on_close()


class Runtime:
    """open_stream for the forward: a socketpair whose far end is copied to the endpoint's port on
    loopback, as the runtime copies to the pod's port; a refused connect ends the stream with the
    runtime's error, after whatever the client sent is gone. Counts the streams open at once."""

    def __init__(self, unreachable=()):
        self.unreachable = set(unreachable)
        self.opened: list[str] = []
        self.now = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, endpoint: Endpoint) -> FakeStream:
        if endpoint.pod in self.unreachable:
            raise OSError(111, f"no port-forward to pod {endpoint.pod}: Handshake status 404 Not Found")
        ours, theirs = socket.socketpair()
        stream = FakeStream(ours, self._closed)
        with self.lock:
            self.opened.append(endpoint.pod)
            self.now += 1
            self.most = max(self.most, self.now)
        threading.Thread(target=self._run, args=(endpoint, theirs, stream), daemon=True).start()
        return stream

    def _run(self, endpoint, theirs, stream):
        try:
            try:
                up = socket.create_connection(("127.0.0.1", endpoint.port), timeout=5)
            except OSError as err:
                stream.err = (f"error forwarding port {endpoint.port} to pod {endpoint.pod}, uid : failed to "
                              f"connect to localhost:{endpoint.port} inside namespace \"x\", IPv4: {err}")
                return
            with up:
                threading.Thread(target=self._copy, args=(up, theirs), daemon=True).start()
                self._copy(theirs, up)
        finally:
            theirs.close()

    def _closed(self):
        with self.lock:
            self.now -= 1

    @staticmethod
    def _copy(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Endpoints(portforward.ServiceEndpoints):
    """The watch replaced by update() calls from the test."""

    def __init__(self, *pods):
        super().__init__(cluster=None, service="in-svc", port_name="http")
        self.set(*pods)

    def start(self):
        self.listed.set()
        return self

    def set(self, *pods):
        with self._changed:  # (each loopback pod has its own port, unlike real pods)
            self._endpoints = [p.endpoint for p in pods]
            self._changed.notify_all()


def get(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


@pytest.fixture
def pods():
    made = []

    def make(*names):
        new = [Pod(n) for n in names]
        made.extend(new)
        return new if len(new) > 1 else new[0]
    yield make
    for pod in made:
        pod.stop()


def forward(endpoints, runtime) -> portforward.PortForward:
    return portforward.PortForward(None, "in-svc", 5000, open_stream=runtime, endpoints=endpoints)


def test_connections_go_to_the_ready_pods_in_turn(pods):
    a, b = pods("a", "b")
    runtime = Runtime()
    with forward(Endpoints(a, b), runtime) as fwd:
        seen = [get(fwd.url + f"/items/{i}")["pod"] for i in range(6)]
    assert sorted(set(seen)) == ["a", "b"] and seen[0::2] == [seen[0]] * 3
    assert fwd.pods_used == {"a": 3, "b": 3} and fwd.stats["failed"] == 0


def test_the_forward_follows_a_rollout(pods):
    old, new = pods("old", "new")
    endpoints = Endpoints(old)
    with forward(endpoints, Runtime()) as fwd:
        assert get(fwd.url + "/")["pod"] == "old"
        endpoints.set(new)  # the new pod is ready, the old one terminating
        old.stop()
        assert {get(fwd.url + f"/{i}")["pod"] for i in range(4)} == {"new"}
    assert fwd.stats["failed"] == 0 and fwd.stats["failovers"] == 0


def test_a_refused_connection_goes_to_another_pod_with_the_bytes_already_sent(pods):
    gone, alive = pods("gone", "alive")
    gone.stop()  # still listed as ready: the endpoints lag behind the pod
    runtime = Runtime()
    with forward(Endpoints(gone, alive), runtime) as fwd:
        body = b"x" * 50_000
        for _ in range(4):
            req = urllib.request.Request(fwd.url + "/upload", data=body, method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert json.loads(resp.read()) == {"pod": "alive", "got": len(body)}
    assert runtime.opened.count("gone") >= 1 and fwd.stats["failovers"] >= 1
    assert fwd.pods_used == {"alive": 4} and fwd.stats["failed"] == 0


def test_a_pod_whose_stream_cannot_open_is_passed_over(pods):
    a, b = pods("a", "b")
    runtime = Runtime(unreachable={"a"})
    with forward(Endpoints(a, b), runtime) as fwd:
        assert [get(fwd.url + f"/{i}")["pod"] for i in range(3)] == ["b"] * 3


def test_a_connection_waits_for_a_first_ready_pod(pods):
    endpoints = Endpoints()
    fwd = forward(endpoints, Runtime()).start(wait_ready=False)
    try:
        answer = {}
        client = threading.Thread(target=lambda: answer.update(get(fwd.url + "/", timeout=30)))
        client.start()
        poll(lambda: fwd.stats["connections"] == 1, timeout=10, interval=0.05, what="the connection accepted")
        endpoints.set(pods("late"))
        client.join(30)
        assert answer.get("pod") == "late"
    finally:
        fwd.stop()


def test_connections_at_once_are_bounded(pods, monkeypatch):
    monkeypatch.setattr(portforward, "MAX_CONNECTIONS", 2)
    runtime = Runtime()
    with forward(Endpoints(pods("a")), runtime) as fwd:
        held = [socket.create_connection(("127.0.0.1", fwd.local_port)) for _ in range(2)]
        poll(lambda: runtime.now == 2, timeout=10, interval=0.05, what="two streams open")
        waiting = {}
        client = threading.Thread(target=lambda: waiting.update(get(fwd.url + "/third", timeout=30)))
        client.start()
        held[0].close()  # a slot frees: the third connection is served
        client.join(30)
        held[1].close()
    assert waiting.get("path") == "/third"
    assert runtime.most == 2


def test_no_ready_pod_at_start_is_a_clear_error():
    fwd = portforward.PortForward(None, "in-svc", 5000, start_timeout=0.5, open_stream=Runtime(), endpoints=Endpoints())
    with pytest.raises(UserError) as err:
        fwd.start()
    assert "service/in-svc has no ready pod" in err.value.message
    assert "invoke status" in err.value.hint
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", fwd.local_port), timeout=2)


def test_a_busy_local_port_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        fwd = portforward.PortForward(None, "in-svc", 5000, local_port=port, open_stream=Runtime(), endpoints=Endpoints())
        with pytest.raises(UserError) as err:
            fwd.start()
    assert f"cannot listen on 127.0.0.1:{port} for service/in-svc" in err.value.message
    assert "ss -ltnp" in err.value.hint


@dataclass
class FakeCluster:
    services: dict
    namespace: str = "default"

    def get(self, api_version, kind, name, namespace=None):
        return self.services.get(name)


def test_the_service_port_is_looked_up_by_number():
    cluster = FakeCluster({"in-svc": {"spec": {"ports": [{"name": "http", "port": 5000, "targetPort": "http"}]}}})
    assert portforward.PortForward(cluster, "in-svc", 5000).port_name() == "http"
    with pytest.raises(UserError, match="has no port 5001"):
        portforward.PortForward(cluster, "in-svc", 5001).port_name()
    with pytest.raises(UserError, match="service/out-svc: it does not exist"):
        portforward.PortForward(cluster, "out-svc", 5001).port_name()
