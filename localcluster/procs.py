"""Start and stop the cluster's host processes: one pid file and one log file per component."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

from localcluster import layout as L


def pidfile(name: str) -> Path:
    return L.PIDS / f"{name}.pid"


def logfile(name: str) -> Path:
    return L.LOGS / f"{name}.log"


def pid_of(name: str) -> int | None:
    """The pid of a component we started, if that process is still alive."""
    try:
        pid = int(pidfile(name).read_text().strip())
    except (OSError, ValueError):
        return None
    try:  # a zombie is not running
        return pid if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def running(name: str) -> bool:
    return pid_of(name) is not None


def start(name: str, argv: list[str], env: dict | None = None) -> int:
    """Start argv in its own session, detached from the caller; output goes to the log file."""
    L.PIDS.mkdir(parents=True, exist_ok=True)
    L.LOGS.mkdir(parents=True, exist_ok=True)
    with open(logfile(name), "ab") as log:
        log.write(f"\n=== {time.strftime('%F %T')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})}, close_fds=True)
    pidfile(name).write_text(str(proc.pid))
    return proc.pid


def stop(name: str, timeout: float = 15) -> bool:
    """SIGTERM, then SIGKILL after timeout. Returns True if a process was stopped."""
    pid = pid_of(name)
    if pid is None:
        pidfile(name).unlink(missing_ok=True)
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_of(name) is not None:
        time.sleep(0.1)
    if pid_of(name) is not None:
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    pidfile(name).unlink(missing_ok=True)
    return True


def tail(name: str, lines: int = 15) -> str:
    try:
        return "\n".join(logfile(name).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def find(predicate) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line satisfies predicate."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or ())
        if cmd and predicate(cmd):
            found.append((proc.info["pid"], cmd))
    return found


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def wait_for(check, what: str, timeout: float, progress=print, interval: float = 0.5, name: str | None = None):
    """Poll check() until it returns truthy; show a progress line every few seconds."""
    start = time.monotonic()
    last = start
    while True:
        try:
            result = check()
        except Exception:
            result = None
        if result:
            return result
        now = time.monotonic()
        if name and not running(name):
            from localcluster.errors import ClusterError as UserError
            raise UserError(f"{name} exited while waiting for {what}. Last log lines:\n{tail(name)}",
                            hint=f"full log: {logfile(name)}")
        if now - start > timeout:
            from localcluster.errors import ClusterError as UserError
            raise UserError(f"timed out after {timeout:.0f}s waiting for {what}",
                            hint=f"see {logfile(name) if name else L.LOGS}")
        if now - last >= 5:
            progress(f"  ... still waiting for {what} ({now - start:.0f}s)")
            last = now
        time.sleep(interval)
