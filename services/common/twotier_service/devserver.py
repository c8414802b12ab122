"""The reloading dev server (``python -m <package> --dev``): a supervisor that never stops answering.

Why not Werkzeug's reloader: on a change it ends the serving process and re-executes it, so
nothing answers until the new process has imported everything again (seconds on a CPU-limited,
busy pod; in-flight requests are cut), it restarts once per file event (a Tilt sync, which is
`tar -x` in the container, produces several: unlink, create, write, close, utime), and when the
new code does not import (a syntax error saved, or a file seen half-synced) the whole server
exits, so the container dies and the kubelet restarts it.

Here (blue/green in one container):

- the supervisor (the process started, PID 1 in a container) binds the listening socket once and
  keeps it for its whole life, so a connection is never refused;
- a worker (a fresh interpreter, the same command line) imports the code, builds the app and
  serves on that inherited socket; it tells the supervisor when it is ready;
- on a change to a ``.py`` file the supervisor waits until the files have been quiet for
  ``SETTLE_S`` (the whole sync has landed), compiles the changed files (a syntax error is
  reported and the running code keeps serving), then starts a new worker *while the old one
  keeps serving*; only when the new one is ready does the old one stop accepting, finish its
  in-flight requests and exit. A new worker that fails (an import error, an exception while the
  app is built) is reported and the old one goes on serving; the next save tries again.

Debugging (``TWOTIER_DEBUG_PORT``): each worker, once it is the serving one, starts debugpy's
adapter on that port (all addresses in the container; Tilt forwards it to 127.0.0.1). A reload
ends the debug session with the old worker (its adapter is stopped when it retires); attach
again (the breakpoints come with the client).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time

#: quiet time after the last file event before a reload (a sync is a burst of events)
SETTLE_S = 0.3
#: longest wait for the burst to end (a steady stream of writes still reloads eventually)
SETTLE_MAX_S = 5.0
#: how long a new worker may take to import and build the app
START_TIMEOUT_S = 120.0
#: how long a retiring worker may take to finish its in-flight requests
DRAIN_TIMEOUT_S = 10.0

ENV_FD = "TWOTIER_DEV_LISTEN_FD"  # set for workers: the inherited listening socket
ENV_READY_FD = "TWOTIER_DEV_READY_FD"  # set for workers: write b"ready" there when serving
ENV_DEBUG_PORT = "TWOTIER_DEBUG_PORT"  # debugpy's port in the container (empty: no debugger)
ENV_SUPERVISOR = "TWOTIER_DEV_SUPERVISOR_PID"  # set for workers: their supervisor


def log(message: str) -> None:
    print(f" * {message}", file=sys.stderr, flush=True)


def run(app, host: str, port: int, exclude: set[str]) -> int:
    """Entry point from serving._run_dev: worker or supervisor, by environment."""
    if os.environ.get(ENV_FD):
        return _worker(app, host, port)
    return Supervisor(host, port, exclude, _watch_roots(exclude)).run()


# ---------------------------------------------------------------------------------- the worker

def _die_with_supervisor() -> None:
    """A worker must not outlive a supervisor killed with SIGKILL (it would hold the port)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if str(os.getppid()) != os.environ.get(ENV_SUPERVISOR, ""):
        sys.exit(0)  # the supervisor died before the line above took effect


def _worker(app, host: str, port: int) -> int:
    from werkzeug.serving import make_server

    _die_with_supervisor()
    srv = make_server(host, port, app, threaded=True, fd=int(os.environ[ENV_FD]))
    srv.daemon_threads = False  # socketserver then keeps the handler threads, so retiring can wait for them
    stopping = threading.Event()
    debugger = _Debugger(os.environ.get(ENV_DEBUG_PORT, "").strip(), stopping)

    def retire(*_):
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=srv.shutdown, daemon=True).start()  # ends serve_forever
            threading.Thread(target=debugger.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, retire)
    signal.signal(signal.SIGINT, retire)
    if debugger.port:
        signal.signal(signal.SIGUSR1, lambda *_: debugger.start())
    with os.fdopen(int(os.environ[ENV_READY_FD]), "wb") as ready:
        ready.write(b"ready")
    # socketserver's loop, not Werkzeug's override, which would then wait for every connection
    # thread without a limit (an idle keep-alive connection never ends)
    socketserver.BaseServer.serve_forever(srv, poll_interval=0.1)
    # Every connection this worker accepted gets its answer, including one accepted just before
    # the retirement whose request has not reached the app yet: wait for the handler threads
    # (socketserver keeps them), but not forever, since an idle keep-alive connection never ends.
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    for thread in list(vars(srv).get("_threads") or ()):  # made on the first connection
        thread.join(max(0.0, deadline - time.monotonic()))
    sys.stderr.flush()
    os._exit(0)  # idle keep-alive connection threads must not keep a retired worker alive


class _Debugger:
    """debugpy for one worker: listening when the supervisor says this worker serves, ended as
    soon as it retires.

    The adapter runs inside the worker (``in_process_debug_adapter``), so the port and every
    debug session end with the worker's process. debugpy's default, a separate adapter process,
    outlives the worker while any client is still connected to it (one that connected in the
    instant of a reload, or never detached): it answers ``initialize`` but never ``attach``, keeps
    the port from the serving worker's debugger, and is left as a zombie of the supervisor."""

    LISTEN_TIMEOUT_S = 60.0  # the retiring worker holds the port until it has stopped its debugger

    def __init__(self, port: str, retiring: threading.Event):
        self.port = int(port) if port else 0
        self.retiring = retiring
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
        with self.lock:
            if not self.listening:
                return
            self.listening = False
            import pydevd  # debugpy's vendored debugger, importable once debugpy.listen() ran

            pydevd.stoptrace()


#: where debugpy listens: never 0.0.0.0 (any pod could attach and run code)
DEBUG_HOST = "127.0.0.1"


def _check_free(port: int) -> None:
    """OSError when something listens on PORT (bound as pydevd binds it, then let go)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((DEBUG_HOST, port))


# ------------------------------------------------------------------------------ the supervisor

def _watch_roots(exclude: set[str]) -> list[str]:
    """The code's directories: the working directory and those of the loaded modules, minus
    Python's own installation, the virtualenv and data directories; nested ones collapse."""
    def excluded(path: str) -> bool:
        return any(path == e or path.startswith(e.rstrip("/") + "/") for e in exclude)

    dirs = {os.path.abspath(os.getcwd())}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py"):
            dirs.add(os.path.dirname(os.path.abspath(path)))
    dirs = {d for d in dirs if not excluded(d) and os.path.isdir(d)}
    return sorted(d for d in dirs if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in dirs))


class Supervisor:
    def __init__(self, host: str, port: int, exclude: set[str], roots: list[str]):
        self.host, self.port = host, port
        self.exclude = {e.rstrip("/") for e in exclude}
        self.roots = roots
        self.changed: dict[str, float] = {}
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        self.current: subprocess.Popen | None = None
        self.generation = 0
        self.stop_signal: int | None = None

    # -- file events (watchdog thread)
    def _relevant(self, path: str) -> bool:
        if not path.endswith(".py") or "/__pycache__/" in path:
            return False
        return not any(path == e or path.startswith(e + "/") for e in self.exclude)

    def _on_event(self, event) -> None:
        if event.event_type in ("opened", "closed_no_write") or event.is_directory:
            return
        paths = [p for p in (event.src_path, getattr(event, "dest_path", "")) if p]
        paths = [os.fsdecode(p) for p in paths]
        hits = [p for p in paths if self._relevant(p)]
        if not hits:
            return
        with self.lock:
            for p in hits:
                self.changed[p] = time.monotonic()
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"x")

    def _start_watching(self):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        sup = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                sup._on_event(event)

        observer = Observer()
        for root in self.roots:
            observer.schedule(Handler(), root, recursive=True)
        observer.daemon = True
        observer.start()
        return observer

    # -- workers
    def _spawn(self) -> tuple[subprocess.Popen, int]:
        ready_r, ready_w = os.pipe()
        env = dict(os.environ, **{ENV_FD: str(self.sock.fileno()), ENV_READY_FD: str(ready_w),
                                  ENV_SUPERVISOR: str(os.getpid())})
        proc = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env=env,
                                pass_fds=(self.sock.fileno(), ready_w))
        os.close(ready_w)
        return proc, ready_r

    def _wait_ready(self, proc: subprocess.Popen, ready_r: int) -> bool:
        """True when the worker said it serves; False when it exited (or hung) before that."""
        sel = selectors.DefaultSelector()
        sel.register(ready_r, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline and self.stop_signal is None:
                if sel.select(timeout=0.2):
                    data = os.read(ready_r, 16)
                    return data == b"ready"  # b"" = it exited without saying so
                if proc.poll() is not None:
                    return False
            return False
        finally:
            sel.close()
            os.close(ready_r)

    def _retire(self, proc: subprocess.Popen | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(DRAIN_TIMEOUT_S + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _promote(self, proc: subprocess.Popen) -> None:
        old, self.current = self.current, proc
        self.generation += 1
        # It stops accepting now (the new one already does) and may take a while to answer what
        # it accepted: retire it beside the main loop, which goes on watching files.
        threading.Thread(target=self._retire, args=(old,), daemon=True, name="retire").start()
        if os.environ.get(ENV_DEBUG_PORT):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR1)

    def _try_new_worker(self, why: str) -> bool:
        started = time.monotonic()
        proc, ready_r = self._spawn()
        if self._wait_ready(proc, ready_r):
            self._promote(proc)
            log(f"{why}: serving the new code (worker pid {proc.pid}, generation {self.generation}) "
                f"after {time.monotonic() - started:.2f}s")
            return True
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        if self.stop_signal is None:
            keep = "the previous code keeps serving" if self.current else "nothing serves yet"
            log(f"{why}: the new code did not start (exit code {code}, its error is above); {keep}; "
                "fix it and save again")
        return False

    # -- main loop
    def run(self) -> int:
        self.sock = socket.create_server((self.host, self.port), reuse_port=False, backlog=128)
        self.sock.set_inheritable(True)
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        log(f"dev server on http://{shown}:{self.port} (reloads on a change to a .py file under "
            f"{', '.join(self.roots)})")

        def stop(signum, _frame):
            self.stop_signal = signum
            with contextlib.suppress(OSError):
                os.write(self.wake_w, b"x")

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        observer = self._start_watching()
        try:
            self._loop()
        finally:
            observer.stop()
            self._retire(self.current)
            self.sock.close()
        return 0

    def _loop(self) -> None:
        self._try_new_worker("start")
        sel = selectors.DefaultSelector()
        sel.register(self.wake_r, selectors.EVENT_READ)
        while self.stop_signal is None:
            sel.select(timeout=0.5)
            with contextlib.suppress(BlockingIOError):
                os.set_blocking(self.wake_r, False)
                os.read(self.wake_r, 4096)
            if self.stop_signal is not None:
                return
            if self.current is not None and self.current.poll() is not None:
                log(f"the worker exited (code {self.current.returncode}); starting a new one")
                self.current = None
                self._try_new_worker("restart")
                continue
            if not self.changed:
                continue
            paths = self._settle()
            if self.stop_signal is not None:
                return
            for path in paths:
                log(f"Detected change in {path!r}, reloading")
            broken = _syntax_errors(paths)
            if broken:
                keep = "the previous code keeps serving" if self.current else "nothing serves yet"
                for message in broken:
                    log(f"not reloading: {message}; {keep}; fix it and save again")
                continue
            self._try_new_worker("reload")

    def _settle(self) -> list[str]:
        """Wait until no file event came for SETTLE_S (at most SETTLE_MAX_S); take the changes."""
        first = time.monotonic()
        while self.stop_signal is None:
            with self.lock:
                last = max(self.changed.values(), default=0.0)
            now = time.monotonic()
            if now - last >= SETTLE_S or now - first >= SETTLE_MAX_S:
                break
            time.sleep(min(SETTLE_S - (now - last), 0.1) if now - last < SETTLE_S else 0.05)
        with self.lock:
            paths = sorted(self.changed)
            self.changed.clear()
        return paths


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
