"""Port-forwards to Services on 127.0.0.1, for clusters whose NodePorts the host cannot reach
(Docker Desktop, kind or minikube on macOS/Windows, a remote cluster).

Generic Kubernetes layer (no knowledge of the project's tiers): ``PortForward`` runs
``kubectl port-forward svc/NAME LOCAL:PORT --address 127.0.0.1`` for one cluster/context/namespace
and reads the local port kubectl chose (``LOCAL`` 0 = a free one); ``forwards(...)`` opens several
at once as a context manager. kubectl's forward goes through the API server to one ready pod of
the Service, so it works wherever `kubectl` does; it ends when that pod goes away (a rollout),
so callers open one per task run, after the rollout.

Setting ``twotier.access``: ``nodeport`` (default) or ``port-forward``; ``ACCESS_MODES``.
"""
from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections import deque

from twotier.errors import UserError

ACCESS_MODES = ("nodeport", "port-forward")
LOOPBACK = "127.0.0.1"
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)")


def access_mode(settings) -> str:
    """The validated access setting (``twotier.access``)."""
    mode = str((settings or {}).get("access") or "nodeport").strip()
    if mode not in ACCESS_MODES:
        raise UserError(f"access must be one of {', '.join(ACCESS_MODES)}, got {mode!r}",
                        "set twotier.access in invoke.yaml, or INVOKE_TWOTIER_ACCESS=port-forward")
    return mode


class PortForward:
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
        self.proc: subprocess.Popen | None = None
        self.output: deque[str] = deque(maxlen=50)
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.local_port}"

    def argv(self) -> list[str]:
        from twotier.kube import kubectl_binary

        kubectl = self.kubectl or kubectl_binary()
        local = str(self.wanted_local) if self.wanted_local else ""
        return [kubectl, *self.cluster.kubectl_args(), "port-forward", f"svc/{self.service}",
                f"{local}:{self.port}", "--address", LOOPBACK]

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.output.append(line.rstrip())
            match = _FORWARDING.search(line)
            if match and self.local_port is None:
                self.local_port = int(match.group(1))
                self._ready.set()
        self._ready.set()  # exited: start() reports it

    def start(self) -> PortForward:
        import os

        env = dict(os.environ, **self.cluster.kubectl_env())
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        threading.Thread(target=self._read, daemon=True, name=f"port-forward-{self.service}").start()
        if not self._ready.wait(self.start_timeout) or self.local_port is None:
            self.stop()
            said = "; ".join(self.output) or "no output"
            raise UserError(f"`kubectl port-forward svc/{self.service} :{self.port}` did not start ({said})",
                            f"is service/{self.service} deployed with a ready pod? `invoke status` shows it; "
                            "or use access nodeport if the node's NodePorts are reachable")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> PortForward:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def forwards(cluster, services: dict[str, int], local_ports: dict[str, int] | None = None):
    """Port-forwards to several Services at once: {service: port} -> {service: PortForward}."""
    opened: dict[str, PortForward] = {}
    try:
        with contextlib.ExitStack() as stack:
            for service, port in services.items():
                opened[service] = stack.enter_context(
                    PortForward(cluster, service, port, (local_ports or {}).get(service, 0)))
            yield opened
    finally:
        opened.clear()


def wait_answering(url: str, timeout: float = 10.0) -> int | None:
    """The HTTP status URL answers with through a fresh forward (None if nothing answered)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
