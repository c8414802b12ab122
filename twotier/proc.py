"""One way to run a process in the background: ``Background(argv, ...)``.

The child gets its own session (a terminal's Ctrl-C reaches only us, and we stop the children in
order) and, with ``die_with_parent``, SIGTERM if this process dies without cleaning up (Linux
parent-death signal). Its output is read line by line into ``output`` (the last lines, for error
messages), handed to ``on_line`` and optionally echoed with a label; or, with ``log_path``, written
to a file. ``stop()`` sends SIGTERM, waits, then SIGKILLs the whole process group.
"""
from __future__ import annotations

import collections
import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path


class Background:
    def __init__(self, argv: list[str], *, cwd=None, env: dict | None = None, label: str = "",
                 echo=None, on_line: Callable[[str], None] | None = None, log_path: Path | None = None,
                 die_with_parent: bool = False, keep: int = 400):
        self.argv = list(argv)
        self.cwd, self.env = cwd, env
        self.label = label or Path(self.argv[0]).name
        self.echo = echo  # a text stream to copy the output to (prefixed with the label), or None
        self.on_line = on_line
        self.log_path = log_path
        self.die_with_parent = die_with_parent
        self.output: collections.deque[str] = collections.deque(maxlen=keep)
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Background:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
            stdout=self._log or subprocess.PIPE, stderr=subprocess.STDOUT,
            text=self._log is None, bufsize=1 if self._log is None else -1,
            errors="replace" if self._log is None else None, start_new_session=True,
            preexec_fn=_die_with_parent if self.die_with_parent else None)
        if self._log is None:
            self._reader = threading.Thread(target=self._read, daemon=True, name=f"output-{self.label}")
            self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.output.append(line)
            if self.on_line is not None:
                self.on_line(line)
            if self.echo is not None:
                try:
                    self.echo.write(f"{self.label} | {line}")
                    self.echo.flush()
                except (OSError, ValueError):
                    pass
        if self.on_line is not None:
            self.on_line("")  # end of output: the process is gone

    def tail(self, lines: int = 40) -> str:
        """The last LINES lines of output (from the log file when there is one)."""
        if self.log_path is not None:
            try:
                return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
            except OSError:
                return ""
        return "".join(list(self.output)[-lines:]).rstrip()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to TIMEOUT, then SIGKILL the whole process group; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            _signal(os.kill, self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal(os.killpg, self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        _signal(os.killpg, self.proc.pid, signal.SIGKILL)  # stragglers (workers, reloader child)
        if self._reader:
            self._reader.join(timeout=2)
        if self._log is not None:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Background:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal(send, pid: int, sig: int) -> None:
    try:
        send(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _load_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
