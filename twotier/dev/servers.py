"""The services as local processes: `invoke serve` / `invoke dev`, integration tests, benchmarks.

Each service runs as ``python -m <package>`` from its own folder (exactly as in its image), with
``services/common`` (the shared package ``twotier_service``, ``/app/twotier_service`` in the image)
on ``PYTHONPATH``, in its own session so that a terminal's Ctrl-C reaches only us and we stop the children in order:
SIGTERM (the server finishes in-flight requests), then SIGKILL after a timeout. The children also
get SIGTERM if this process dies without cleaning up (Linux parent-death signal).
"""
from __future__ import annotations

import collections
import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from twotier import shape
from twotier.errors import UserError
from twotier.poll import Timeout, poll
from twotier.shape import SERVICES

LOOPBACK = "127.0.0.1"
#: the services' shared package (twotier_service) lives here; in an image it is in /app
COMMON = SERVICES / shape.load().common


def service_env(env: dict | None = None) -> dict:
    """ENV (default: this process's environment) with services/common first on PYTHONPATH."""
    env = dict(os.environ if env is None else env)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(COMMON)]
    env["PYTHONPATH"] = os.pathsep.join([str(COMMON), *rest])
    return env


# The tiers as system.yaml declares them (package, env prefix, port, folder).
Service = shape.Tier
STORAGE = shape.load().tier("storage")
APP = shape.load().tier("app")
HELLO = shape.load().tier("hello")


# ------------------------------------------------------------------------------------------
# One service process
# ------------------------------------------------------------------------------------------
class ServiceProcess:
    """A service started as a real process on loopback; use as a context manager."""

    def __init__(self, service: Service, port: int, env: dict | None = None, *, dev: bool = False,
                 host: str = LOOPBACK, echo=None, label: str | None = None,
                 directory: Path | None = None):
        self.service = service
        self.directory = Path(directory) if directory else service.directory  # where the code is
        self.port = port
        self.host = host
        self.dev = dev
        self.extra_env = dict(env or {})
        self.echo = echo  # a text stream to copy the output to (prefixed with the label), or None
        self.label = label or service.name
        self.output: collections.deque[str] = collections.deque(maxlen=400)
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ServiceProcess:
        env = {**service_env(), **self.extra_env, "PYTHONUNBUFFERED": "1",
               "TWOTIER_DEV": "1" if self.dev else "0",
               f"{self.service.env_prefix}_HOST": self.host, f"{self.service.env_prefix}_PORT": str(self.port)}
        argv = [sys.executable, "-m", self.service.package]
        self.proc = subprocess.Popen(
            argv, cwd=self.directory, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            errors="replace", start_new_session=True, preexec_fn=_die_with_parent)
        self._reader = threading.Thread(target=self._read_output, daemon=True,
                                        name=f"output-{self.label}")
        self._reader.start()
        return self

    def wait_ready(self, timeout: float = 60.0) -> ServiceProcess:
        """Poll ``/readyz`` until 200; a clear UserError (with the last output) otherwise."""
        def ready() -> bool:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise UserError(f"the {self.service.title} exited (code {code}) while starting"
                                + self._tail(), "fix the error shown above and try again")
            try:
                return requests.get(self.url + "/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        try:
            poll(ready, timeout=timeout, interval=0.1, what=f"the {self.service.title} becoming ready on {self.url}")
        except Timeout as err:
            raise UserError(err.message + self._tail(),
                            "the machine may be very busy: try again, or look at the output") from None
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL the whole process group."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            _signal_quietly(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group_quietly(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        _signal_group_quietly(self.proc.pid, signal.SIGKILL)  # stragglers (workers, reloader child)
        if self._reader:
            self._reader.join(timeout=2)
        return self.proc.returncode

    def __enter__(self) -> ServiceProcess:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def _read_output(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.output.append(line)
            if self.echo is not None:
                try:
                    self.echo.write(f"{self.label} | {line}")
                    self.echo.flush()
                except (OSError, ValueError):
                    pass

    def _tail(self, lines: int = 15) -> str:
        tail = list(self.output)[-lines:]
        if not tail or self.echo is not None:  # already shown to the user
            return ""
        return "; its last output:\n" + "".join("    " + line for line in tail).rstrip()


def _load_prctl():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _signal_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_group_quietly(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------------------------------------
# Ports
# ------------------------------------------------------------------------------------------
def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _bind_errno(port: int, host: str = LOOPBACK) -> int | None:
    """None if ``port`` could be listened on now, else the errno of the failed bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
        try:
            sock.bind((host, port))
        except OSError as err:
            return err.errno
    return None


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    return _bind_errno(port, host) is not None


def parse_port(value, flag: str) -> int:
    try:
        port = int(str(value).strip())
    except ValueError:
        raise UserError(f"{flag} must be a port number, got {value!r}", f"e.g. {flag} 5002") from None
    if not 1 <= port <= 65535:
        raise UserError(f"{flag} must be between 1 and 65535, got {port}", f"e.g. {flag} 5002")
    return port


def check_port_free(port: int, flag: str, avoid: set[int] = frozenset(), host: str = LOOPBACK) -> None:
    code = _bind_errno(port, host)
    if code is None:
        return
    if code == errno.EACCES:
        raise UserError(f"port {port} needs more privileges than this user has",
                        f"use {flag} with a port above 1023")
    owner = port_owner(port)
    suggestion = next((p for p in range(port + 1, port + 200)
                       if p not in avoid and not port_in_use(p, host)), None)
    who = f" by {owner}" if owner else ""
    note = " (the local cluster's registry listens on 127.0.0.1:5000)" if port == 5000 else ""
    hint = f"use {flag} {suggestion}" if suggestion else f"use {flag} with a free port"
    raise UserError(f"port {port} is in use on {host}{who}{note}", hint + ", or stop what listens there")


def port_owner(port: int) -> str | None:
    """'name (pid N)' of the process listening on TCP ``port``, best effort (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                    with open(f"/proc/{pid}/comm") as fh:
                        return f"{fh.read().strip()} (pid {pid})"
        except OSError:
            continue
    return None


# ------------------------------------------------------------------------------------------
# invoke serve / invoke dev
# ------------------------------------------------------------------------------------------
class _Stop(Exception):
    """SIGTERM/SIGHUP received."""


def prepare_storage_dir(storage_dir: str | None) -> tuple[Path, bool]:
    """(directory, temporary?) - a missing directory is created, a temporary one when empty."""
    if not storage_dir:
        return Path(tempfile.mkdtemp(prefix="twotier-items-")), True
    path = Path(storage_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UserError(f"--storage-dir {storage_dir} exists and is not a directory",
                        "pass a directory (it is created if missing)")
    if not path.exists():
        try:
            path.mkdir(parents=True)
        except OSError as err:
            raise UserError(f"cannot create --storage-dir {storage_dir}: {err.strerror}",
                            "pass a directory you can write to") from None
        print(f"created {path}", flush=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"--storage-dir {path} is not writable", "pass a directory you can write to")
    return path, False


def serve(storage_dir: str | None, storage_port, app_port, *, dev: bool = False,
          out=None, ready_timeout: float = 60.0) -> None:
    """Run both services on loopback in the foreground until Ctrl-C / SIGTERM, then stop both."""
    out = out or sys.stdout
    sport = parse_port(storage_port, "--storage-port")
    aport = parse_port(app_port, "--app-port")
    if sport == aport:
        raise UserError(f"--storage-port and --app-port are both {sport}",
                        "give the two services different ports")
    check_port_free(sport, "--storage-port", avoid={aport})
    check_port_free(aport, "--app-port", avoid={sport})
    directory, temporary = prepare_storage_dir(storage_dir)

    mode = "dev server, reloads on code change" if dev else "granian"
    storage = ServiceProcess(STORAGE, sport, {"STO_STORAGE": str(directory)}, dev=dev,
                             echo=out, label="storage")
    app = ServiceProcess(APP, aport, {"STO_API": storage.url}, dev=dev, echo=out, label="app    ")
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def _on_signal(signum, frame):
        raise _Stop(signal.Signals(signum).name)

    for sig in previous:
        signal.signal(sig, _on_signal)
    try:
        kept = "temporary, removed on exit" if temporary else "kept"
        print(f"starting the {STORAGE.title} ({mode}) on {storage.url}, items in {directory} ({kept})",
              file=out, flush=True)
        storage.start().wait_ready(ready_timeout)
        print(f"starting the {APP.title} ({mode}) on {app.url}", file=out, flush=True)
        app.start().wait_ready(ready_timeout)
        print(f"\nready: {storage.url}/items and {app.url}/createlist/4 - try:\n"
              f"  curl {storage.url}/items\n  curl {app.url}/createlist/4\n  curl {app.url}/clear\n"
              + ("edit services/*/*_api/*.py or services/common and the service reloads\n" if dev else "")
              + "Ctrl-C stops both\n", file=out, flush=True)
        while True:
            for proc in (storage, app):
                if not proc.alive():
                    raise UserError(f"the {proc.service.title} exited unexpectedly "
                                    f"(code {proc.proc.returncode})", "see its output above")
            time.sleep(0.25)
    except (KeyboardInterrupt, _Stop):
        print("\nstopping both services ...", file=out, flush=True)
    finally:
        for sig in previous:  # a second Ctrl-C or SIGTERM must not interrupt the shutdown
            signal.signal(sig, signal.SIG_IGN)
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            app.stop()
            storage.stop()
            if temporary:
                shutil.rmtree(directory, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, sigint)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    print("stopped", file=out, flush=True)
