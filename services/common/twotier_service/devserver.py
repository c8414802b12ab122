"""The reloading dev server (``python -m <package> --dev``): production's server, new workers on a save.

granian with the RSGI bridge as in production, one worker, run by a subclass of granian's server:
the master holds the listening socket, a watchdog thread sends SIGHUP once a save has settled and
compiles, and the respawn is blue/green. docs/dev-loop.md ("The dev server") says why each part is
so. ``TWOTIER_DEBUG_PORT``: each worker runs debugpy in-process on 127.0.0.1. The granian internals
overridden here are the pinned release's; tests/integration/test_dev_reload_process.py catches a
change in them.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import linecache
import multiprocessing
import os
import select
import signal
import socket
import sys
import threading
import time
from functools import partial
from multiprocessing.connection import wait as wait_ended

from granian._granian import SocketHolder
from granian.server.mp import MPServer
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

#: quiet time after the last file event before a reload (a sync is a burst of events)
SETTLE_S = 0.1
#: longest wait for the burst to end (a steady stream of writes still reloads eventually)
SETTLE_MAX_S = 5.0
#: how long a new worker may take to import the code and build the app
START_TIMEOUT_S = 120.0
#: between a retiring worker's last accept and its shutdown: a connection accepted an instant
#: before has sent its request by then (granian's shutdown closes one that has not)
HANDOVER_S = 0.1
ENV_DEBUG_PORT = "TWOTIER_DEBUG_PORT"  # debugpy's port in the container (empty: no debugger)
#: where debugpy listens: never 0.0.0.0 (any pod could attach and run code)
DEBUG_HOST = "127.0.0.1"


def log(message: str) -> None:
    print(f" * {message}", file=sys.stderr, flush=True)


def run(app, host: str, port: int, exclude: set[str]) -> int:
    """Entry point from serving._run_dev (APP: built once, for its RELOAD_EXCLUDE)."""
    from twotier_service.serving import PACKAGE_ENV, PREFIX_ENV, server_options

    options = server_options(host, port, os.environ[PREFIX_ENV], os.environ[PACKAGE_ENV], os.environ)
    options["workers"] = 1  # one process to debug, one to reload
    roots = _watch_roots(exclude)
    # the workers are forks of this process (its imports warm), whatever Python's default is
    multiprocessing.set_start_method("fork", force=True)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # a worker's "retire" until it listens for it
    server = DevServer(roots, **options)
    Watcher(roots, exclude).start()
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    log(f"dev server on http://{shown}:{port} (granian; reloads on a change to a .py file under "
        f"{', '.join(roots)})")
    server.serve(target_loader=server.worker_app, wrap_loader=False)
    return 0


# -------------------------------------------------------------------------- the granian master

class DevServer(MPServer):
    """granian's multi-process server with a master-held socket and blue/green respawns."""

    def __init__(self, roots: list[str], **options):
        super().__init__(**options)
        self.roots = roots

    def _init_shared_socket(self) -> None:
        family = socket.AF_INET6 if ":" in self.bind_addr else socket.AF_INET
        self._sso = socket.create_server((self.bind_addr, self.bind_port), family=family,
                                         backlog=self.backlog)
        self._sfd = self._sso.fileno()
        self._ssp, self._shd = None, SocketHolder(self._sfd, False, self.backlog)

    def worker_app(self, ready_fd: int | None = None):
        """In a new worker: the service's code as it is on disk now, behind the RSGI bridge."""
        _forget_modules(self.roots)
        from twotier_service import rsgi  # the fresh copy

        return _DevApp(rsgi.app_from_env(), self._sfd, ready_fd)

    def _respawn_workers(self, workers, spawn_target, target_loader, delay: float = 0) -> None:
        """granian's respawn (a reload, or a worker that died), blue/green: new workers first."""
        started = time.monotonic()
        reload = any(_alive(self.wrks[idx]) for idx in workers)
        new = [self._start(idx, spawn_target, target_loader) for idx in workers]
        if not all([self._serving(wrk, ready) for wrk, ready in new]):
            for wrk, _ in new:
                wrk.kill()
                wrk.join()
            if not self.interrupt_signal:
                keep = "the previous code keeps serving" if reload else "nothing serves"
                log(f"the new code did not start (its error is above); {keep}; fix it and save again")
            return
        old = []
        for wrk, _ in new:
            old.append(self.wrks[wrk.idx])
            self.wrks[wrk.idx] = wrk
            wrk.interrupt_by_parent = False  # from now on, its exit is a crash
        why = "reload" if reload else "restart"
        pids = ", ".join(str(wrk.inner.pid) for wrk, _ in new)
        log(f"{why}: serving the new code (worker pid {pids}) after {time.monotonic() - started:.2f}s")
        self._retire([wrk for wrk in old if _alive(wrk)])

    def _start(self, idx: int, spawn_target, target_loader):
        ready_r, ready_w = os.pipe()
        wrk = self._spawn_worker(idx=idx, target=spawn_target,
                                 callback_loader=partial(target_loader, ready_fd=ready_w))
        wrk.interrupt_by_parent = True  # an exit before it serves is a failed start, not a crash
        wrk.start()
        os.close(ready_w)
        return wrk, ready_r

    def _serving(self, wrk, ready_r: int) -> bool:
        """True once WRK says it serves; False if it exits first (or hangs, or we stop)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline and not self.interrupt_signal:
                if select.select([ready_r], [], [], 0.1)[0]:
                    return os.read(ready_r, 1) == b"1"  # b"": it exited without saying so
            return False
        finally:
            os.close(ready_r)

    def _retire(self, old: list) -> None:
        for wrk in old:
            with contextlib.suppress(ProcessLookupError):
                os.kill(wrk.inner.pid, signal.SIGUSR2)  # stop accepting, end the debug session
        time.sleep(HANDOVER_S)
        for wrk in old:
            wrk.terminate()  # granian's graceful stop: in-flight requests finish
        timeout = self.workers_kill_timeout
        deadline = time.monotonic() + (timeout or 0)
        for wrk in old:
            if not wait_ended([wrk.inner.sentinel], max(0.0, deadline - time.monotonic()) if timeout else None):
                log(f"worker pid {wrk.inner.pid} did not stop within {timeout}s: killed")
                wrk.kill()


def _alive(wrk) -> bool:
    # not is_alive(): granian's own thread may have reaped the process, and then it says True
    return not wait_ended([wrk.inner.sentinel], 0)


def _forget_modules(roots: list[str]) -> None:
    """Drop the modules loaded from ROOTS, so that the next import reads the files again."""
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name != "__main__" and path and _under(os.path.abspath(path), roots):
            del sys.modules[name]
    importlib.invalidate_caches()
    linecache.clearcache()


def _under(path: str, dirs) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


# ---------------------------------------------------------------------------------- a worker

class _DevApp:
    """The bridge as a dev worker serves it, with the dev server's signals: it says when it
    serves (READY_FD), and SIGUSR2 (a newer worker serves) makes it stop accepting: the
    listening descriptor is swapped for an idle socket, while the master's socket stays."""

    def __init__(self, bridge, listen_fd: int, ready_fd: int | None):
        self.bridge = bridge
        self.__rsgi__ = bridge.__rsgi__
        self.listen_fd, self.ready_fd = listen_fd, ready_fd
        self.debugger = _Debugger(os.environ.get(ENV_DEBUG_PORT, "").strip())

    def __rsgi_init__(self, loop) -> None:
        loop.add_signal_handler(signal.SIGUSR2, self._retire)
        if self.debugger.port:
            self.debugger.start()
        if self.ready_fd is not None:
            loop.call_soon(self._ready)  # runs once the worker's loop runs, granian accepting

    def __rsgi_del__(self, loop) -> None:
        self.bridge.__rsgi_del__(loop)

    def _ready(self) -> None:
        os.write(self.ready_fd, b"1")
        os.close(self.ready_fd)

    def _retire(self) -> None:
        with socket.socket(socket.AF_UNIX) as idle:
            idle.bind("")  # an abstract name the kernel picks: nobody connects to it
            idle.listen(1)
            idle.setblocking(False)  # as the listening socket: granian's accept() must not block
            os.dup2(idle.fileno(), self.listen_fd)
        threading.Thread(target=self.debugger.stop, daemon=True).start()


class _Debugger:
    """debugpy for one worker: listening as soon as the port is free, ended when it retires.

    The adapter runs inside the worker (``in_process_debug_adapter``): debugpy's default, a
    separate adapter process, outlives the worker while a client is still connected to it, and
    keeps the port from the new worker's debugger."""

    LISTEN_TIMEOUT_S = 60.0  # the retiring worker holds the port until it has stopped its debugger

    def __init__(self, port: str):
        self.port = int(port) if port else 0
        self.retiring = threading.Event()
        self.lock = threading.Lock()
        self.listening = False

    def start(self) -> None:
        threading.Thread(target=self._listen, daemon=True, name="debugger").start()

    def _listen(self) -> None:
        # Python 3.11+ freezes some stdlib modules; pydevd warns about it at every start, harmlessly.
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        try:
            import debugpy
        except ImportError:
            log(f"{ENV_DEBUG_PORT}={self.port} but debugpy is not installed (the image's dev target has it)")
            return
        deadline = time.monotonic() + self.LISTEN_TIMEOUT_S
        while True:
            with self.lock:
                if self.retiring.is_set():
                    return
                try:
                    _check_free(self.port)  # in-process, debugpy would hang on a taken port, not raise
                    # loopback only: whoever reaches the port can run code in the process; a
                    # port-forward (Tilt's, kubectl's) connects to the pod's own 127.0.0.1
                    debugpy.listen((DEBUG_HOST, self.port), in_process_debug_adapter=True)
                    self.listening = True
                    log(f"debugpy listening on port {self.port} (pid {os.getpid()}); attach a DAP client")
                    return
                except Exception as err:
                    if time.monotonic() > deadline:
                        log(f"debugpy could not listen on port {self.port}: {err}; "
                            "save a file to start a new worker, or restart the dev server")
                        return
            time.sleep(0.2)

    def stop(self) -> None:
        """End the debug session and stop listening (threads paused at a breakpoint go on)."""
        self.retiring.set()
        with self.lock:
            if not self.listening:
                return
            self.listening = False
            import pydevd  # debugpy's vendored debugger, importable once debugpy.listen() ran

            pydevd.stoptrace()


def _check_free(port: int) -> None:
    """OSError when something listens on PORT (bound as pydevd binds it, then let go)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((DEBUG_HOST, port))


# ---------------------------------------------------------------------------- the watcher

def _watch_roots(exclude: set[str]) -> list[str]:
    """The code's directories: the working directory and those of the loaded modules, minus
    Python's own installation, the virtualenv and data directories; nested ones collapse."""
    dirs = {os.path.abspath(os.getcwd())}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py"):
            dirs.add(os.path.dirname(os.path.abspath(path)))
    dirs = {d for d in dirs if not _under(d, exclude) and os.path.isdir(d)}
    return sorted(d for d in dirs if not _under(d, dirs - {d}))


class Watcher(FileSystemEventHandler):
    """watchdog's observer on the code's directories; a thread that asks granian for new workers
    (SIGHUP to this process, granian's master) once the changed files have settled and compile."""

    def __init__(self, roots: list[str], exclude: set[str]):
        super().__init__()
        self.roots = roots
        self.exclude = {e.rstrip("/") for e in exclude}
        self.changed: set[str] = set()
        self.lock = threading.Lock()
        self.pending = threading.Event()

    def start(self) -> None:
        observer = Observer()
        for root in self.roots:
            observer.schedule(self, root, recursive=True)
        observer.daemon = True
        observer.start()
        threading.Thread(target=self._loop, daemon=True, name="reloader").start()

    def relevant(self, path: str) -> bool:
        return path.endswith(".py") and "/__pycache__/" not in path and not _under(path, self.exclude)

    def on_any_event(self, event) -> None:
        if event.event_type in ("opened", "closed_no_write") or event.is_directory:
            return
        paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
        hits = [p for p in paths if self.relevant(p)]
        if hits:
            with self.lock:
                self.changed.update(hits)
            self.pending.set()

    def settle(self) -> list[str]:
        """Wait until no event came for SETTLE_S (at most SETTLE_MAX_S); take the changes."""
        deadline = time.monotonic() + SETTLE_MAX_S
        while time.monotonic() < deadline:
            self.pending.clear()
            if not self.pending.wait(SETTLE_S):
                break
        with self.lock:
            paths = sorted(self.changed)
            self.changed.clear()
        return paths

    def _loop(self) -> None:
        while True:
            self.pending.wait()
            paths = self.settle()
            for path in paths:
                log(f"Detected change in {path!r}, reloading")
            broken = _syntax_errors(paths)
            for message in broken:
                log(f"not reloading: {message}; the previous code keeps serving; fix it and save again")
            if paths and not broken:
                for path in paths:  # bytecode of a same-size save within the same second is stale
                    with contextlib.suppress(OSError, ValueError):
                        os.remove(importlib.util.cache_from_source(path))
                os.kill(os.getpid(), signal.SIGHUP)


def _syntax_errors(paths: list[str]) -> list[str]:
    """One line per changed file that does not compile (a deleted file is fine here)."""
    errors = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                source = fh.read()
        except OSError:
            continue
        try:
            compile(source, path, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as err:
            where = f"{path}:{getattr(err, 'lineno', '?')}"
            errors.append(f"{type(err).__name__} in {where}: {getattr(err, 'msg', err)}")
    return errors
