"""Port-forwards to Services on 127.0.0.1, for clusters whose NodePorts the host cannot reach
(Docker Desktop, kind or minikube on macOS/Windows, a remote cluster).

Generic Kubernetes layer (no knowledge of the project's tiers): ``PortForward`` runs
``kubectl port-forward svc/NAME LOCAL:PORT --address 127.0.0.1`` for one cluster/context/namespace
and reads the local port kubectl chose (``LOCAL`` 0 = a free one); ``forwards(...)`` opens several
at once as a context manager. kubectl's forward goes through the API server to one ready pod of
the Service, so it works wherever `kubectl` does; it ends when that pod goes away (a rollout),
so callers open one per task run, after the rollout.

The setting that picks it, ``twotier.access``, is validated with the other settings.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading

from twotier.errors import UserError
from twotier.poll import poll
from twotier.proc import Background

LOOPBACK = "127.0.0.1"
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)")


class PortForward(Background):
    """``kubectl port-forward`` of one Service port to 127.0.0.1, as a context manager."""

    def __init__(self, cluster, service: str, port: int, local_port: int = 0,
                 start_timeout: float = 30.0, kubectl: str | None = None):
        self.cluster = cluster
        self.service = service
        self.port = int(port)
        self.wanted_local = int(local_port)
        self.start_timeout = start_timeout
        self.kubectl = kubectl
        self.local_port: int | None = None
        self._ready = threading.Event()
        super().__init__(self.kubectl_argv(), env=dict(os.environ, **cluster.kubectl_env()), keep=50,
                         label=f"port-forward-{service}", on_line=self._line)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.local_port}"

    def kubectl_argv(self) -> list[str]:
        from twotier.kube.client import kubectl_binary

        kubectl = self.kubectl or kubectl_binary()
        local = str(self.wanted_local) if self.wanted_local else ""
        return [kubectl, *self.cluster.kubectl_args(), "port-forward", f"svc/{self.service}",
                f"{local}:{self.port}", "--address", LOOPBACK]

    def _line(self, line: str) -> None:
        match = _FORWARDING.search(line)
        if match and self.local_port is None:
            self.local_port = int(match.group(1))
        if match or not line:  # the port, or the end of the output (exited: start() reports it)
            self._ready.set()

    def start(self) -> PortForward:
        super().start()
        if not self._ready.wait(self.start_timeout) or self.local_port is None:
            self.stop()
            said = "; ".join(line.rstrip() for line in self.output) or "no output"
            raise UserError(f"`kubectl port-forward svc/{self.service} :{self.port}` did not start ({said})",
                            f"is service/{self.service} deployed with a ready pod? `invoke status` shows it; "
                            "or use access nodeport if the node's NodePorts are reachable")
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        return super().stop(timeout)


@contextlib.contextmanager
def forwards(cluster, services: dict[str, int], local_ports: dict[str, int] | None = None,
             kubectl: str | None = None):
    """Port-forwards to several Services at once: {service: port} -> {service: PortForward}."""
    with contextlib.ExitStack() as stack:
        yield {service: stack.enter_context(
                   PortForward(cluster, service, port, (local_ports or {}).get(service, 0), kubectl=kubectl))
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
