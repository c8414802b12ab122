"""The README is a test: every command block of README.md that can run here, run as written.

Every ```console and ```sh block of README.md is read, in document order, except a block right
after the comment `<!-- not run by the README test: REASON -->` (the reason is required; the test
prints it). In a `console` block a line `$ CMD` is a command typed
in a shell, the lines after it (up to the next command) its documented output; `loader $ CMD`
is typed in the shell `invoke loader-shell` opens in the loader pod. A documented output must
match line by line (runs of blanks count as one; `...` in a line is any text, a line that is only
`...` any number of lines); a command without documented output must exit 0. In a `sh` block every line that is not blank or a
comment is a command that must exit 0.

The VS Code launch.json that tests/e2e/test_tilt_debug.py attaches with is read from
docs/dev-loop.md by ``launch_configuration`` below.

Each command runs in a fresh login-like shell: bash without profile or rc files under `env -i`
with only HOME, PATH (Debian's default for root) and TERM, as a new terminal has, on a real
pseudo-terminal (so `invoke loader-shell` gets the terminal it requires, and its `kubectl exec -it`
a real one to put in raw mode). `./bootstrap.sh ...` runs in a shell of its own and the commands
after it in another new one: what the bootstrap decided must reach a later shell without exports.

The README's Cleanup stops the cluster (`invoke cluster.down`); the test brings it back up after.
Items a user had stored on the volume are set aside and put back (tests/e2e/conftest.py).
"""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, run_invoke
from twotier.poll import Timeout, poll

# the README's own commands: ./bootstrap.sh alone may take TIMEOUTS["./bootstrap.sh"] (above the suite's 900 s)
pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("clean_slate"), pytest.mark.timeout(2400)]

RUN_LANGUAGES = ("console", "sh")
NOT_RUN = re.compile(r"<!--\s*not run by the README test:(?P<reason>.*?)-->", re.S)
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
HEADING = re.compile(r"^#{1,6} (?P<title>.+)$", re.M)
DEV_LOOP = REPO / "docs" / "dev-loop.md"
FRESH_ENV = {"HOME": os.environ.get("HOME", "/root"),
             "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "TERM": "xterm"}
HOST_MARK = re.compile(r"__RC_(\d+)__")
LOADER_MARK = re.compile(r"__LOADER_RC_(\d+)__")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")
TIMEOUTS = {"./bootstrap.sh": 1200}  # warm: about a minute; more if images must be rebuilt
DEFAULT_TIMEOUT = 300


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)
    inside: list[Command] = field(default_factory=list)  # loader $ lines of an interactive shell
    section: str = ""


# --------------------------------------------------------------------------------- the README

@dataclass
class Block:
    """A fenced block of a Markdown file: its language, the section it is in, its text, and the
    reason it is not run (None: it is run, if its language is one the test runs)."""
    lang: str
    section: str
    body: str
    not_run: str | None = None


def blocks(text: str) -> list[Block]:
    """Every fenced block of TEXT in document order, with the `not run` reason written before it.
    A `not run` comment must sit right before a block (only blank lines between) and give a reason."""
    found: list[Block] = []
    last_end, section = 0, ""
    for m in FENCE.finditer(text):
        before = text[last_end:m.start()]  # prose between two blocks: headings and comments
        section = (HEADING.findall(before) or [section])[-1]
        reason = None
        comment = NOT_RUN.search(before)
        if comment:
            assert not before[comment.end():].strip(), \
                f"a `not run by the README test` comment not right before a block: {comment.group(0)}"
            reason = " ".join(comment.group("reason").split())
            assert reason, f"a `not run by the README test` comment without its reason: {comment.group(0)}"
        found.append(Block(m.group("lang"), section, m.group("body"), reason))
        last_end = m.end()
    assert not NOT_RUN.search(text[last_end:]), "a `not run by the README test` comment after the last block"
    return found


def skipped(text: str) -> list[Block]:
    """The command blocks the README says cannot run here, each with its reason."""
    return [b for b in blocks(text) if b.lang in RUN_LANGUAGES and b.not_run is not None]


def readme_commands(text: str) -> list[Command]:
    """The commands of every console and sh block that is run, in document order."""
    commands: list[Command] = []
    for block in blocks(text):
        if block.lang not in RUN_LANGUAGES or block.not_run is not None:
            continue
        section = block.section
        if block.lang == "sh":
            commands += [Command(line.strip(), section=section) for line in block.body.splitlines()
                         if line.strip() and not line.strip().startswith("#")]
            continue
        current = None  # a console block: `$ ` commands, `loader $ ` lines, their output
        for line in block.body.splitlines():
            if line.startswith("$ "):
                current = Command(line[2:].strip(), section=section)
                commands.append(current)
            elif line.startswith("loader $ "):
                assert current is not None and "loader-shell" in current.text, \
                    f"a `loader $` line outside `invoke loader-shell`: {line}"
                current.inside.append(Command(line[len("loader $ "):].strip(), section=section))
            elif line.strip():
                assert current is not None, f"output before any command in {section}: {line}"
                (current.inside[-1] if current.inside else current).expected.append(line)
    return commands


def launch_configuration(tier: str, workspace: Path = REPO, doc: Path = DEV_LOOP) -> dict:
    """The VS Code launch.json configuration of docs/dev-loop.md that attaches to TIER's pod (the one
    mapping ``services/<tier>``), with ``${workspaceFolder}`` replaced by WORKSPACE."""
    launches = [json.loads(b.body) for b in blocks(doc.read_text()) if b.lang == "json"]
    launches = [data for data in launches if isinstance(data, dict) and "configurations" in data]
    assert len(launches) == 1, f"{doc} should hold one launch.json block, found {len(launches)}"
    chosen = [c for c in launches[0]["configurations"]
              if any(m["localRoot"].endswith(f"/services/{tier}") for m in c.get("pathMappings", []))]
    assert len(chosen) == 1, f"{doc}'s launch.json should have one configuration for {tier}"
    return json.loads(json.dumps(chosen[0]).replace("${workspaceFolder}", str(workspace)))


def normalize(line: str) -> str:
    return " ".join(line.split())


def line_matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in normalize(expected).split("..."))
    return re.fullmatch(pattern, normalize(actual)) is not None


def output_matches(expected: list[str], actual: list[str]) -> bool:
    if not expected:
        return not actual
    if normalize(expected[0]) == "...":
        return any(output_matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and line_matches(expected[0], actual[0]) and output_matches(expected[1:], actual[1:])


# --------------------------------------------------------------------------------- a terminal

class Terminal:
    """bash on a pseudo-terminal, in a fresh login-like environment."""

    def __init__(self, cwd: Path):
        pid, fd = pty.fork()
        if pid == 0:  # the child: becomes the new terminal's shell
            try:
                os.chdir(cwd)
                os.execve("/bin/bash", ["bash", "--noprofile", "--norc", "--noediting", "-i"], FRESH_ENV)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # no wrapped tables
        self.buffer = ""
        self.log: list[str] = []
        # Test plumbing, not the user's environment: no echo, no prompt, and after every
        # command a marker with its exit status (PROMPT_COMMAND is a shell variable: not exported).
        self.send("stty -echo; PS1=''; PS2=''; PROMPT_COMMAND='printf \"\\n__RC_%s__\\n\" \"$?\"'")
        self.read_until(HOST_MARK, 30)

    def send(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def read_until(self, pattern: re.Pattern, timeout: float) -> tuple[str, re.Match]:
        """Read until ``pattern`` appears; returns (text before it, the match); consumes both."""
        deadline = time.monotonic() + timeout
        while True:
            clean = ANSI.sub("", self.buffer).replace("\r", "")
            match = pattern.search(clean)
            if match:
                self.buffer = clean[match.end():]
                return clean[:match.start()], match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern.pattern!r} within {timeout:.0f}s; the terminal showed:\n"
                                     + clean[-3000:])
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the shell is gone
                    chunk = ""
                if not chunk:
                    raise AssertionError("the shell exited; it showed:\n" + clean[-3000:])
                self.buffer += chunk
                self.log.append(chunk)

    def close(self) -> None:
        try:
            self.send("exit")
            try:
                poll(lambda: os.waitpid(self.pid, os.WNOHANG)[0], timeout=10, interval=0.1,
                     what="the README's shell to exit")
            except Timeout:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        except (OSError, ChildProcessError):
            pass
        finally:
            os.close(self.fd)


def output_lines(text: str, drop=()) -> list[str]:
    return [ln.rstrip() for ln in text.split("\n") if ln.strip() and not any(d in ln for d in drop)]


def run_host(term: Terminal, cmd: Command) -> list[str]:
    timeout = next((t for prefix, t in TIMEOUTS.items() if cmd.text.startswith(prefix)), DEFAULT_TIMEOUT)
    start = time.monotonic()
    term.send(cmd.text)
    failures = run_loader_session(term, cmd) if cmd.inside else []
    before, mark = term.read_until(HOST_MARK, timeout)
    took = time.monotonic() - start
    rc = int(mark.group(1))
    print(f"$ {cmd.text}   [{cmd.section}: exit {rc}, {took:.1f}s]\n{before.strip()}")
    if rc != 0:
        failures.append(f"`{cmd.text}` ({cmd.section}) exited with {rc}:\n{before.strip()[-3000:]}")
    elif cmd.expected and not output_matches(cmd.expected, output_lines(before)):
        failures.append(f"`{cmd.text}` ({cmd.section}) printed\n" + "\n".join(output_lines(before))
                        + "\nwhere the README shows\n" + "\n".join(cmd.expected))
    return failures


def run_loader_session(term: Terminal, cmd: Command) -> list[str]:
    """Type the `loader $` lines into the loader pod's shell, check each answer, leave with exit."""
    failures = []
    shown, _ = term.read_until(re.compile(r"try: curl.*\n"), DEFAULT_TIMEOUT)
    print(shown.strip())
    term.read_until(re.compile(r"\$ $"), 60)  # the pod's shell prompt: it is reading now
    for line in cmd.inside:
        if line.text == "exit":
            term.send("exit")
            continue
        # The exit status marker goes on a line of its own, typed right after; its echo by the
        # pod's terminal contains "%s", never digits, so only the real marker matches.
        term.send(line.text)
        term.send("printf '\\n__LOADER_RC_%s__\\n' \"$?\"")
        before, mark = term.read_until(LOADER_MARK, 60)
        lines = [re.sub(r"^\$ ", "", ln) for ln in output_lines(before, drop=("__LOADER_RC_",))]
        lines = [ln for ln in lines if ln.strip() and ln.strip() != line.text and ln.strip() != "$"]
        print(f"loader $ {line.text}   [exit {mark.group(1)}]\n" + "\n".join(lines))
        if mark.group(1) != "0":
            failures.append(f"`{line.text}` in the loader shell exited with {mark.group(1)}: {lines}")
        elif line.expected and not output_matches(line.expected, lines):
            failures.append(f"`{line.text}` in the loader shell printed {lines}, the README shows "
                            f"{line.expected}")
        term.read_until(re.compile(r"\$ $"), 30)
    return failures


# --------------------------------------------------------------------------------- the test

@pytest.fixture
def cluster_back_up():
    """The README's Cleanup stops the cluster; leave it up, as every other test expects it."""
    yield
    res = run_invoke("cluster.up", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr


def test_readme_commands_run_as_written_in_fresh_shells(cluster_back_up):
    text = (REPO / "README.md").read_text()
    for block in skipped(text):
        print(f"not run ({block.section}): {block.not_run}\n{block.body.strip()}")
    commands = readme_commands(text)
    assert not [c.text for c in commands if c.text.rstrip().endswith("\\")], "no continuation lines"
    failures: list[str] = []
    term = None
    try:
        for cmd in commands:
            if term is None or cmd.text.startswith("./bootstrap.sh"):
                if term is not None:
                    term.close()
                term = Terminal(REPO)
            failures += run_host(term, cmd)
            if cmd.text.startswith("./bootstrap.sh"):
                term.close()
                term = None  # the next command is typed in a new terminal
            if failures:
                break  # later commands build on this one
    finally:
        if term is not None:
            term.close()
    assert not failures, "\n\n".join(failures)
