"""A new terminal, as a user opens one: bash on a real pseudo-terminal under `env -i` with only
HOME, PATH (Debian's default for root) and TERM, no profile or rc file.

``Terminal.run(cmd)`` types a command and waits for its exit status (a marker printed by
PROMPT_COMMAND, test plumbing that is not exported to the command); ``send``/``read_until`` drive
long-running or interactive programs (``tilt up``, ``invoke loader-shell``): type, then wait for
what the program prints. Every wait is for text on the terminal, with a deadline that only bounds a
hang; ``interrupt()`` is Ctrl-C as typed (the terminal sends SIGINT to the foreground job).
"""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from pathlib import Path

FRESH_ENV = {"HOME": os.environ.get("HOME", "/root"),
             "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "TERM": "xterm"}
RC_MARK = re.compile(r"__RC_(\d+)__")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]|\x1b[=>]")


class Terminal:
    """bash on a pseudo-terminal in a fresh environment; a context manager that closes it."""

    def __init__(self, cwd: Path, env: dict | None = None, rows: int = 50, cols: int = 200):
        pid, fd = pty.fork()
        if pid == 0:  # the child: the new terminal's shell
            try:
                os.chdir(cwd)
                os.execve("/bin/bash", ["bash", "--noprofile", "--norc", "--noediting", "-i"],
                          env or FRESH_ENV)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.buffer = ""
        self.transcript: list[str] = []  # everything the terminal showed, for failure messages
        # Test plumbing, not the user's environment: no echo, no prompt, and after every command
        # a marker with its exit status (PROMPT_COMMAND is a shell variable: not exported).
        self.send("stty -echo; PS1=''; PS2=''; PROMPT_COMMAND='printf \"\\n__RC_%s__\\n\" \"$?\"'")
        self.read_until(RC_MARK, 30)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, text: str, newline: bool = True) -> None:
        os.write(self.fd, (text + ("\n" if newline else "")).encode())

    def interrupt(self) -> None:
        """Ctrl-C, as typed: the terminal driver signals the foreground process group."""
        os.write(self.fd, b"\x03")

    def shown(self, last: int = 3000) -> str:
        return ANSI.sub("", "".join(self.transcript)).replace("\r", "")[-last:]

    def read_until(self, pattern: re.Pattern | str, timeout: float) -> tuple[str, re.Match]:
        """Read until PATTERN appears; returns (the text before it, the match) and consumes both.
        TIMEOUT only bounds a hang: the wait ends as soon as the text is there."""
        if isinstance(pattern, str):
            pattern = re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            clean = ANSI.sub("", self.buffer).replace("\r", "")
            match = pattern.search(clean)
            if match:
                self.buffer = clean[match.end():]
                return clean[:match.start()], match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern.pattern!r} on the terminal within {timeout:.0f}s; "
                                     f"it showed:\n{self.shown()}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the shell is gone
                    chunk = ""
                if not chunk:
                    raise AssertionError("the terminal's shell exited; it showed:\n" + self.shown())
                self.buffer += chunk
                self.transcript.append(chunk)

    def run(self, command: str, timeout: float = 300) -> tuple[int, str]:
        """Type COMMAND, wait for it to end; (exit status, what it printed)."""
        self.send(command)
        before, mark = self.read_until(RC_MARK, timeout)
        return int(mark.group(1)), before.strip()

    def close(self) -> None:
        try:
            self.send("exit")
            _pid, _status = _wait_child(self.pid, 10)
        except (OSError, ChildProcessError):
            pass
        finally:
            os.close(self.fd)


def _wait_child(pid: int, timeout: float) -> tuple[int, int]:
    """Reap PID; SIGKILL it if it has not ended within TIMEOUT (a hung shell)."""
    from twotier.poll import Timeout, poll

    try:
        return poll(lambda: os.waitpid(pid, os.WNOHANG)[0] and (pid, 0), timeout=timeout,
                    what=f"the terminal's shell (pid {pid}) to exit", interval=0.1)
    except Timeout:
        os.kill(pid, signal.SIGKILL)
        return os.waitpid(pid, 0)
