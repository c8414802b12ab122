"""Port-forwards to Services on 127.0.0.1 that follow the Service, for clusters whose NodePorts the
host cannot reach (Docker Desktop, kind or minikube on macOS/Windows, a remote cluster).

Generic Kubernetes layer (no knowledge of the project's tiers). ``PortForward(cluster, service,
port, local_port)`` listens on 127.0.0.1:LOCAL itself (0 = a free port) and, for each connection,
opens a port-forward stream through the API server (the Python client's ``portforward``) to one
ready pod of the Service, in turn, and copies bytes both ways. The ready pods come from a watch of
the Service's EndpointSlices, so a rollout's new pods take connections as soon as they are ready
and a terminating pod gets no new ones. A connection whose pod refused it (nothing listening: the
stream's error says so, and nothing reached the server) goes to another ready pod with the bytes
the client had sent. `kubectl port-forward svc/NAME` instead picks one pod when it starts and stops
working when that pod goes (kubernetes/kubectl#686): docs/local-cluster.md has both measured.

``forwards(...)`` opens several at once as a context manager; ``python -m twotier.kube.portforward
SERVICE PORT --local-port N`` runs one until stopped (Tilt's tier forwards).

The setting that picks port-forward access, ``twotier.access``, is validated with the other settings.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from twotier.errors import UserError
from twotier.poll import poll

LOOPBACK = "127.0.0.1"
MAX_CONNECTIONS = 64       # served at once (two threads each); more wait in the listen backlog
ATTEMPTS = 3               # pods tried for one connection
REPLAY_LIMIT = 64 * 1024   # unanswered client bytes kept, to resend them if the pod refused them
CHUNK = 64 * 1024
SEND_TIMEOUT = 60.0        # a peer that takes nothing for this long ends its connection
TICK = 0.5                 # how often blocked loops look at the stop flag
POD_WAIT = 20.0            # how long a connection waits for a ready pod (a rollout, a first start)
READY_GRACE = 5.0          # start(): how long the pods, once read, may take to be ready (slices lag)
LINGER = 10.0              # after the client's EOF, how long an awaited answer may be silent
WATCH_SECONDS = 15         # one watch of the EndpointSlices (below the API client's read timeout)
# What a runtime's port-forward says when nothing listens on the pod's port (containerd, CRI-O,
# cri-dockerd): the connection never reached a server, so its bytes may go to another pod.
REFUSED_MARKERS = ("failed to connect to localhost", "connection refused")


@dataclass(frozen=True, order=True)
class Endpoint:
    pod: str
    address: str
    port: int  # the pod's port behind the Service port


def ready_endpoints(slices: list[dict], port_name: str) -> list[Endpoint]:
    """The pods that should take connections for the Service port named PORT_NAME ("" when
    unnamed), from the Service's EndpointSlices: the ready ones; when none is, the terminating
    ones that still serve (kube-proxy's rule)."""
    ready, serving = set(), set()
    for item in slices:
        number = next((p.get("port") for p in item.get("ports") or [] if (p.get("name") or "") == port_name), None)
        if number is None:
            continue
        for ep in item.get("endpoints") or []:
            ref, conditions = ep.get("targetRef") or {}, ep.get("conditions") or {}
            if ref.get("kind") != "Pod" or not ep.get("addresses"):
                continue
            endpoint = Endpoint(ref["name"], ep["addresses"][0], int(number))
            if conditions.get("ready") is not False:  # unset means ready (EndpointSlice API)
                ready.add(endpoint)
            elif conditions.get("serving") and conditions.get("terminating"):
                serving.add(endpoint)
    return sorted(ready or serving)


def refused(error: str) -> bool:
    """Whether a stream's error says the pod's port refused the connection."""
    return any(marker in error.lower() for marker in REFUSED_MARKERS)


class ServiceEndpoints:
    """One Service port's ready pods, kept current by a thread that lists and watches the
    Service's EndpointSlices until ``stop()``; ``pick()`` hands them out in turn."""

    def __init__(self, cluster, service: str, port_name: str, say: Callable[[str], None] = lambda _m: None):
        self.cluster, self.service, self.port_name, self.say = cluster, service, port_name, say
        self.error = ""  # the last failure to read them (they are kept meanwhile)
        self.listed = threading.Event()  # read once at least
        self._endpoints: list[Endpoint] = []
        self._turn = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ServiceEndpoints:
        self._resource = self.cluster.resource("discovery.k8s.io/v1", "EndpointSlice")
        self._thread = threading.Thread(target=self._follow, daemon=True, name=f"endpoints-{self.service}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def current(self) -> list[Endpoint]:
        with self._changed:
            return list(self._endpoints)

    def update(self, slices: list[dict]) -> None:
        endpoints = ready_endpoints(slices, self.port_name)
        with self._changed:
            if endpoints == self._endpoints:
                return
            self._endpoints = endpoints
            self._changed.notify_all()
        self.say(f"service/{self.service}: pods taking connections: "
                 + (", ".join(e.pod for e in endpoints) or "none ready"))

    def pick(self, tried=(), timeout: float = POD_WAIT) -> Endpoint | None:
        """The next ready pod, one not in TRIED when there is one; waits up to TIMEOUT for a
        first one (None: still none, or stopped)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._endpoints and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, TICK))
            if not self._endpoints:
                return None
            fresh = [e for e in self._endpoints if e.pod not in tried] or self._endpoints
            self._turn += 1
            return fresh[self._turn % len(fresh)]

    def _follow(self) -> None:
        selector = f"kubernetes.io/service-name={self.service}"
        while not self._stop.is_set():
            try:
                listed = self._resource.get(namespace=self.cluster.namespace, label_selector=selector,
                                            _request_timeout=self.cluster.timeout).to_dict()
                slices = {s["metadata"]["name"]: s for s in listed.get("items") or []}
                self.update(list(slices.values()))
                self.error = ""
                self.listed.set()
                for event in self.cluster.dynamic.watch(
                        self._resource, namespace=self.cluster.namespace, label_selector=selector,
                        resource_version=listed["metadata"]["resourceVersion"], timeout=WATCH_SECONDS):
                    obj = event["raw_object"]
                    if event["type"] == "DELETED":
                        slices.pop(obj["metadata"]["name"], None)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        slices[obj["metadata"]["name"]] = obj
                    self.update(list(slices.values()))
                    if self._stop.is_set():
                        return
            except Exception as err:  # any failure: keep the last pods, read them again
                if str(err) != self.error:
                    self.say(f"service/{self.service}: cannot read its endpoints ({err}); retrying")
                self.error = str(err)
                self._stop.wait(1.0)


class Stream:
    """A port-forward stream to one pod's port: ``sock`` to copy through, ``error()`` what the
    pod's side reported when it ended."""

    def __init__(self, forward, port: int):
        self._forward, self._port = forward, port
        self.sock = forward.socket(port)

    def error(self) -> str:
        return self._forward.error(self._port) or ""

    def close(self) -> None:
        self._forward.close()


def api_streams(cluster) -> Callable[[Endpoint], Stream]:
    """Opens streams through the cluster's API server with the Python client's ``portforward``."""
    from kubernetes import client
    from kubernetes.stream import portforward

    configuration = cluster.api_client.configuration

    def open_stream(endpoint: Endpoint) -> Stream:
        # a client of its own: portforward() swaps its client's call_api while it connects
        core = client.CoreV1Api(client.ApiClient(configuration))
        try:
            forward = portforward(core.connect_get_namespaced_pod_portforward, endpoint.pod, cluster.namespace,
                                  ports=str(endpoint.port))
        except Exception as err:  # ApiException or a websocket error: another pod is tried
            raise OSError(errno.ECONNREFUSED, f"no port-forward to pod {endpoint.pod}: {err}") from None
        return Stream(forward, endpoint.port)
    return open_stream


class _Relay:
    """One client connection, relayed to a pod (to another when the first refused it)."""

    def __init__(self, conn: socket.socket, stopping: threading.Event):
        self.conn, self.stopping = conn, stopping
        self.unanswered = b""      # sent by the client, no pod answered yet
        self.replayable = True     # UNANSWERED holds all of it (within REPLAY_LIMIT)
        self.client_open = True

    def pipe(self, stream: Stream) -> bool:
        """Copy both ways until either side ends. True when the pod refused the connection and
        UNANSWERED can go to another pod."""
        pod = stream.sock
        pod.settimeout(SEND_TIMEOUT)
        answered, awaiting, quiet_since = False, bool(self.unanswered), time.monotonic()

        def ended() -> bool:  # the pod's side is gone: refused before anything reached it?
            return not answered and self.replayable and refused(stream.error())

        if self.unanswered and not _send(pod, self.unanswered):
            return ended()
        while not self.stopping.is_set():
            readable, _, _ = select.select([pod, self.conn] if self.client_open else [pod], [], [], TICK)
            if self.conn in readable:
                data = _recv(self.conn)
                if data:
                    if not answered and self.replayable:
                        self.unanswered += data
                        self.replayable = len(self.unanswered) <= REPLAY_LIMIT
                        self.unanswered = self.unanswered if self.replayable else b""
                    if not _send(pod, data):
                        return ended()
                    awaiting = True
                else:
                    self.client_open = False  # a half-close: the answer may still be on its way
                    quiet_since = time.monotonic()
                    if not awaiting:
                        return False
            if pod in readable:
                data = _recv(pod)
                if not data:
                    return ended()
                answered, awaiting, quiet_since = True, False, time.monotonic()
                self.unanswered = b""
                self.conn.sendall(data)
            if not self.client_open and time.monotonic() - quiet_since > LINGER:
                return False
        return False


def _send(sock, data: bytes) -> bool:
    """Send all of DATA to a stream; False when the stream is already closed."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def _recv(sock) -> bytes:
    try:
        return sock.recv(CHUNK)
    except (ConnectionResetError, ConnectionAbortedError):
        return b""


class PortForward:
    """127.0.0.1:LOCAL -> one Service port, following the Service's ready pods; a context manager."""

    def __init__(self, cluster, service: str, port: int, local_port: int = 0, start_timeout: float = 30.0,
                 say: Callable[[str], None] = lambda _m: None,
                 open_stream: Callable[[Endpoint], Stream] | None = None, endpoints: ServiceEndpoints | None = None):
        """SAY gets a line when the pods change or a connection fails over; OPEN_STREAM and
        ENDPOINTS replace the API server's streams and the EndpointSlice watch."""
        self.cluster = cluster
        self.service = service
        self.port = int(port)
        self.wanted_local = int(local_port)
        self.start_timeout = start_timeout
        self.say = say
        self.local_port: int | None = None
        self.endpoints = endpoints
        self.open_stream = open_stream
        self.stats: collections.Counter = collections.Counter()  # connections, failovers, failed
        self.pods_used: collections.Counter = collections.Counter()  # connections each pod took
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.local_port}"

    def port_name(self) -> str:
        """The name of the Service port PORT (EndpointSlices name their ports after it)."""
        from twotier.kube.objects import dig

        svc = self.cluster.get("v1", "Service", self.service)
        if svc is None:
            raise UserError(f"cannot port-forward to service/{self.service}: it does not exist in namespace "
                            f"{self.cluster.namespace!r}", "deploy it first (`invoke up`); `invoke status` shows "
                            "what is deployed")
        for entry in dig(svc, "spec.ports", []):
            if int(entry.get("port", 0)) == self.port:
                return entry.get("name") or ""
        raise UserError(f"service/{self.service} has no port {self.port}",
                        f"its ports: {', '.join(str(p.get('port')) for p in dig(svc, 'spec.ports', []))}")

    def start(self, wait_ready: bool = True) -> PortForward:
        """Listen, follow the Service's pods and, with WAIT_READY, wait until one is ready."""
        if self.endpoints is None:
            self.endpoints = ServiceEndpoints(self.cluster, self.service, self.port_name(), say=self.say)
        if self.open_stream is None:
            self.open_stream = api_streams(self.cluster)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((LOOPBACK, self.wanted_local))
        except OSError as err:
            listener.close()
            raise UserError(f"cannot listen on {LOOPBACK}:{self.wanted_local} for service/{self.service}: "
                            f"{err.strerror}", "another process holds the port (`ss -ltnp` names it); "
                            "stop it or choose another local port") from None
        listener.listen(128)
        listener.settimeout(TICK)
        self._listener, self.local_port = listener, listener.getsockname()[1]
        self.endpoints.start()
        self._acceptor = threading.Thread(target=self._accept, daemon=True, name=f"forward-{self.service}")
        self._acceptor.start()
        if wait_ready:
            try:  # as kubectl, no waiting for pods that are not ready (`invoke status` of a broken tier)
                poll(self.endpoints.listed.is_set, timeout=self.start_timeout, interval=0.1,
                     what=f"the endpoints of service/{self.service}")
                poll(self.endpoints.current, timeout=min(READY_GRACE, self.start_timeout), interval=0.1,
                     what=f"a ready pod behind service/{self.service}")
            except UserError:
                self.stop()
                said = f" ({self.endpoints.error})" if self.endpoints.error else ""
                raise UserError(f"service/{self.service} has no ready pod to forward to{said}",
                                f"is service/{self.service} deployed with a ready pod? `invoke status` shows it; "
                                "or use access nodeport if the node's NodePorts are reachable") from None
        return self

    def alive(self) -> bool:
        return self._acceptor is not None and self._acceptor.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self.endpoints is not None:
            self.endpoints.stop()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        with self._lock:
            conns = list(self._open)
        for conn in conns:  # their relays see the stop flag within TICK and close their streams
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> PortForward:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self._slots.acquire(timeout=TICK):
                    continue
                try:
                    conn, _addr = self._listener.accept()
                except (TimeoutError, OSError):
                    self._slots.release()
                    continue
                with self._lock:
                    self._open.add(conn)
                threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                 name=f"forward-{self.service}-conn").start()
        finally:
            self._listener.close()

    def _count(self, key: str, pod: str = "") -> None:
        with self._lock:
            (self.pods_used if pod else self.stats)[pod or key] += 1

    def _serve(self, conn: socket.socket) -> None:
        self._count("connections")
        conn.settimeout(SEND_TIMEOUT)
        relay, tried = _Relay(conn, self._stopping), []
        try:
            for _attempt in range(ATTEMPTS):
                endpoint = self.endpoints.pick(tried)
                if endpoint is None:
                    break
                tried.append(endpoint.pod)
                try:
                    stream = self.open_stream(endpoint)
                except OSError as err:
                    self.say(f"service/{self.service}: {err.strerror}; trying another ready pod")
                    self._count("failovers")
                    continue
                try:
                    again = relay.pipe(stream)
                finally:
                    stream.close()
                if not again:
                    self._count("", endpoint.pod)
                    return
                self.say(f"service/{self.service}: pod {endpoint.pod} refused the connection "
                         f"({stream.error().strip()}); trying another ready pod")
                self._count("failovers")
            self._count("failed")
            self.say(f"service/{self.service}: a connection found no ready pod that took it "
                     f"(tried: {', '.join(tried) or 'none ready'})")
        except OSError as err:  # the client went away, or a peer took nothing for SEND_TIMEOUT
            self._count("broken")
            self.say(f"service/{self.service}: a connection ended: {err}")
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            with self._lock:
                self._open.discard(conn)
            self._slots.release()


@contextlib.contextmanager
def forwards(cluster, services: dict[str, int], local_ports: dict[str, int] | None = None):
    """Port-forwards to several Services at once: {service: port} -> {service: PortForward}."""
    with contextlib.ExitStack() as stack:
        yield {service: stack.enter_context(
                   PortForward(cluster, service, port, (local_ports or {}).get(service, 0)))
               for service, port in services.items()}


def wait_answering(url: str, timeout: float = 10.0) -> int | None:
    """The HTTP status URL answers with through a fresh forward (None if nothing answered)."""
    import urllib.error
    import urllib.request

    def status() -> int | None:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return None

    try:
        return poll(status, timeout=timeout, interval=0.2, what=f"{url} answering")
    except UserError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Forward 127.0.0.1:LOCAL to SERVICE:PORT until SIGTERM or Ctrl-C, on the cluster the
    project's settings name (what `tilt up -- --access=port-forward` runs per tier)."""
    parser = argparse.ArgumentParser(prog="python -m twotier.kube.portforward", description=main.__doc__)
    parser.add_argument("service")
    parser.add_argument("port", type=int)
    parser.add_argument("--local-port", type=int, default=0, help="127.0.0.1 port (default: a free one)")
    parser.add_argument("--context", default="", help="kube context (default: the settings' twotier.context)")
    parser.add_argument("--namespace", default="", help="namespace (default: the settings' twotier.namespace)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # Tilt stops a serve_cmd with SIGTERM
    try:
        from twotier import settings as settingsmod
        from twotier.ops.cluster import connect

        settings = settingsmod.load().with_flags(context=args.context or None, namespace=args.namespace or None)
        cluster = connect(settings)
        say = lambda line: print(line, flush=True)
        fwd = PortForward(cluster, args.service, args.port, args.local_port, say=say).start(wait_ready=False)
        try:
            say(f"forwarding {LOOPBACK}:{fwd.local_port} -> service/{args.service}:{args.port} "
                f"(context {cluster.context}, namespace {cluster.namespace}), following its ready pods")
            while fwd.alive():
                time.sleep(1)
        finally:
            fwd.stop()
    except UserError as err:
        print(f"error: {err.message}" + (f"\nhint: {err.hint}" if err.hint else ""), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
