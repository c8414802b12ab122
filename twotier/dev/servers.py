"""The services as local processes: `invoke serve` / `invoke dev`, integration tests, benchmarks.

Each service runs as ``python -m <package>`` from its own folder (exactly as in its image), with
``services/common`` (the shared package ``twotier_service``, ``/app/twotier_service`` in the image)
on ``PYTHONPATH``, as a ``twotier.proc.Background`` process (its docstring: session, stop order).

``serve`` starts each tier after those it ``uses``, wired through ``<PREFIX>_API`` (the app's
``STO_API``); the storage tier's items go to ``<PREFIX>_STORAGE``.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import requests

from twotier import shape
from twotier.errors import UserError
from twotier.poll import Timeout, poll
from twotier.ports import LOOPBACK, check_port_free, parse_port
from twotier.proc import Background
from twotier.shape import SERVICES

#: the services' shared package (twotier_service) lives here; in an image it is in /app
COMMON = SERVICES / shape.load().common
#: the tier whose items `--storage-dir` holds (its ``<PREFIX>_STORAGE``)
STORAGE_TIER = "storage"
SERVED_STAGE = "full"


def service_env(env: dict | None = None) -> dict:
    """ENV (default: this process's environment) with services/common first on PYTHONPATH."""
    env = dict(os.environ if env is None else env)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(COMMON)]
    env["PYTHONPATH"] = os.pathsep.join([str(COMMON), *rest])
    return env


# The tiers as system.yaml declares them (package, env prefix, port, folder).
STORAGE = shape.load().tier("storage")
APP = shape.load().tier("app")
HELLO = shape.load().tier("hello")


class ServiceProcess(Background):
    """A service started as a real process on loopback; use as a context manager."""

    def __init__(self, service: shape.Tier, port: int, env: dict | None = None, *, dev: bool = False,
                 host: str = LOOPBACK, echo=None, label: str | None = None,
                 directory: Path | None = None):
        self.service = service
        self.port = port
        self.host = host
        self.dev = dev
        self.extra_env = dict(env or {})
        super().__init__([sys.executable, "-m", service.package],
                         cwd=Path(directory) if directory else service.directory,  # where the code is
                         label=label or service.name, echo=echo, die_with_parent=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServiceProcess:
        prefix = self.service.env_prefix
        self.env = {**service_env(), **self.extra_env, "PYTHONUNBUFFERED": "1",
                    "TWOTIER_DEV": "1" if self.dev else "0",
                    f"{prefix}_HOST": self.host, f"{prefix}_PORT": str(self.port)}
        super().start()
        return self

    def wait_ready(self, timeout: float = 60.0) -> ServiceProcess:
        """Poll ``/readyz`` until 200; a clear UserError (with the last output) otherwise."""
        def ready() -> bool:
            if not self.alive():
                raise UserError(f"the {self.service.title} exited (code {self.returncode}) while starting"
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

    def __enter__(self) -> ServiceProcess:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.stop()
            raise

    def _tail(self, lines: int = 15) -> str:
        if not self.output or self.echo is not None:  # already shown to the user
            return ""
        return "; its last output:\n" + "".join("    " + line for line in list(self.output)[-lines:]).rstrip()


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


def serve(storage_dir: str | None, ports: Mapping[str, int | str | None], *, dev: bool = False,
          out=None) -> None:
    """Run the full stage's tiers on loopback in the foreground until Ctrl-C / SIGTERM, then stop
    them all. PORTS: {tier: port} (a missing or empty one: the tier's port in system.yaml)."""
    out = out or sys.stdout
    tiers = shape.load().stage(SERVED_STAGE).tiers  # system.yaml's order: a tier after those it uses
    flags = {t.name: f"--{t.name}-port" for t in tiers}
    chosen = {t.name: parse_port(ports.get(t.name) or t.port, flags[t.name]) for t in tiers}
    for name, port in chosen.items():
        twins = [n for n, p in chosen.items() if p == port and n != name]
        if twins:
            raise UserError(f"{flags[name]} and {flags[twins[0]]} are both {port}",
                            "give the services different ports")
    for name, port in chosen.items():
        check_port_free(port, flags[name], avoid=set(chosen.values()) - {port})
    directory, temporary = prepare_storage_dir(storage_dir)

    mode = "dev server, reloads on code change" if dev else "granian"
    width = max(len(t.name) for t in tiers)
    procs: dict[str, ServiceProcess] = {}
    for t in tiers:
        env = {f"{shape.load().tier(used).env_prefix}_API": procs[used].url for used in t.uses}
        if t.name == STORAGE_TIER:
            env[f"{t.env_prefix}_STORAGE"] = str(directory)
        procs[t.name] = ServiceProcess(t, chosen[t.name], env, dev=dev, echo=out, label=t.name.ljust(width))
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def _on_signal(signum, frame):
        raise _Stop(signal.Signals(signum).name)

    for sig in previous:
        signal.signal(sig, _on_signal)
    both = "both" if len(procs) == 2 else "all"
    try:
        for t in tiers:
            proc = procs[t.name]
            kept = "temporary, removed on exit" if temporary else "kept"
            where = f", items in {directory} ({kept})" if t.name == STORAGE_TIER else ""
            print(f"starting the {t.title} ({mode}) on {proc.url}{where}", file=out, flush=True)
            proc.start().wait_ready()
        tries = "".join(f"  curl {procs[t.name].url}{t.check_path}\n" for t in tiers)
        print(f"\nready: {', '.join(p.url for p in procs.values())} - try:\n{tries}"
              + ("edit services/*/*_api/*.py or services/common and the service reloads\n" if dev else "")
              + f"Ctrl-C stops {both}\n", file=out, flush=True)
        while True:
            for proc in procs.values():
                if not proc.alive():
                    raise UserError(f"the {proc.service.title} exited unexpectedly "
                                    f"(code {proc.returncode})", "see its output above")
            time.sleep(0.25)
    except (KeyboardInterrupt, _Stop):
        print(f"\nstopping {both} services ...", file=out, flush=True)
    finally:
        for sig in previous:  # a second Ctrl-C or SIGTERM must not interrupt the shutdown
            signal.signal(sig, signal.SIG_IGN)
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in reversed(procs.values()):  # users first, then what they use
                proc.stop()
            if temporary:
                shutil.rmtree(directory, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, sigint)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    print("stopped", file=out, flush=True)
