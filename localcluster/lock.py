"""One at a time: builds share the binary cache, cluster.up/down share the host's cluster state.

Two terminals that start the cluster at once (`invoke test` in one, `invoke up` in the other, or a
user retrying while the first build runs) must not compile into the same source tree or start the
same components twice. Each of those runs under an exclusive ``flock(2)`` on a lock file; the
kernel releases it when the holder exits, however it exits, so a killed build never leaves a stale
lock. A caller that has to wait says for whom (the pid comes from /proc/locks), then waits.

The build lock is the file build-binaries.sh locks too (it takes it itself when run by hand), so a
script run from a terminal and a Python caller exclude each other. The cluster lock is not the
machine-wide /tmp/twotier-cluster.lock that people wrap whole test runs in: `invoke test` calls
cluster.up inside such a hold, and taking that file again here would wait for ourselves.
"""
from __future__ import annotations

import fcntl
import functools
import os
import time
from contextlib import contextmanager
from pathlib import Path

from localcluster import layout as L

STILL_WAITING_EVERY = 60.0  # seconds between "still waiting" lines, so a long wait is not silent


def build_lock_path() -> Path:
    return L.CACHE / ".build.lock"


def cluster_lock_path() -> Path:
    # Beside the state directory, not in it: cluster.down deletes the state directory.
    return L.STATE.parent / ".cluster.lock"


def _alive(pid: int) -> bool:
    return pid > 0 and Path(f"/proc/{pid}").exists()


def holder_pid(fd: int) -> int | None:
    """The pid holding a flock on the file open as ``fd``, if any.

    /proc/locks names the process that took the lock; that may be a `flock` command that has
    exited while the script that ran it holds on. Then the pid the holder wrote into the file."""
    st = os.fstat(fd)
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        lines = []
    locked = None
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 11925 fe:00:778373 0 EOF"; waiters are "1: -> FLOCK ...".
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK":
            dev_ino = parts[5].split(":")
            if len(dev_ino) == 3 and dev_ino[2] == str(st.st_ino) and parts[4].isdigit():
                locked = int(parts[4])
                break
    if locked is None:
        return None
    if _alive(locked):
        return locked
    try:
        written = int(os.pread(fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError):
        written = 0
    if _alive(written):
        return written
    return _oldest_opener(os.readlink(f"/proc/self/fd/{fd}")) or locked


def _oldest_opener(path: str) -> int | None:
    """The process (other than us) that has ``path`` open and whose parent has not: the script,
    not the compilers it runs, which inherit the descriptor. The oldest if there are several."""
    openers = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) == path for fd in (proc / "fd").iterdir()):
                # /proc/PID/stat after the command's closing paren: state ppid ... starttime (22nd)
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                openers[int(proc.name)] = (int(fields[1]), int(fields[19]))
        except (OSError, ValueError, IndexError):  # gone, or not ours to read
            continue
    roots = [pid for pid, (ppid, _) in openers.items() if ppid not in openers]
    return min(roots, key=lambda pid: openers[pid][1]) if roots else None


@contextmanager
def hold(path: Path, what: str, progress=print, poll: float = 0.2, clock=time.monotonic):
    """Hold an exclusive lock on ``path`` for the block; yields the open descriptor.

    ``what`` names the activity in the waiting line: "waiting for another build (pid N)"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder_pid(fd)
            progress(f"waiting for another {what} (pid {pid if pid else 'unknown'}) to finish ...")
            start = last = clock()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    now = clock()
                    if now - last >= STILL_WAITING_EVERY:
                        progress(f"still waiting for another {what} (pid {holder_pid(fd) or 'unknown'}), "
                                 f"{now - start:.0f}s so far")
                        last = now
                    time.sleep(poll)
            progress(f"the other {what} finished after {clock() - start:.0f}s; going on")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for a person who looks at the file
        yield fd
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def exclusive(kind: str):
    """Decorator: run the function under the cluster lock (``kind`` names it in the waiting line).

    The function's ``progress`` keyword (default print) also carries the waiting lines."""

    def wrap(func):
        @functools.wraps(func)
        def inner(*args, **kwargs):
            with hold(cluster_lock_path(), kind, progress=kwargs.get("progress", print)):
                return func(*args, **kwargs)

        return inner

    return wrap
