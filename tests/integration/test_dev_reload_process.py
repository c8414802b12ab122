"""The reloading dev server (twotier_service.devserver: granian and the RSGI bridge, as in
production) as a real process on loopback: a save synced the way Tilt does it (`tar -x` over the
running code) while requests keep coming, a saved syntax error, an import error, a crashed
worker, the debugger handed to the new worker. Nothing may be refused or fail, and a broken save
must leave the previous code serving."""
from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time

import psutil
import requests

from tests.support.dap import DapClient, attach_when_ready
from twotier.dev.servers import HELLO, ServiceProcess
from twotier.poll import Timeout, poll
from twotier.ports import free_port

OLD = 'return {"a": 1}'


def _copy_hello(tmp_path):
    code = tmp_path / "hello"
    shutil.copytree(HELLO.directory, code, ignore=shutil.ignore_patterns("__pycache__"))
    return code, code / "hello_app" / "__init__.py"


def _tar_sync(code, relpath: str, text: str) -> None:
    """What Tilt's live_update does in the container: a tar archive extracted over the code."""
    data = text.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        info = tarfile.TarInfo(relpath)
        info.size, info.mtime, info.mode = len(data), time.time(), 0o644
        archive.addfile(info, io.BytesIO(data))
    subprocess.run(["tar", "-C", str(code), "-x", "-f", "-"], input=buf.getvalue(), check=True, timeout=30)


def _wait_for(url: str, expected: dict, timeout: float = 60) -> dict:
    """Until URL answers EXPECTED; the last answer (TIMEOUT only bounds a hang)."""
    last = [None]

    def answered() -> bool:
        last[0] = requests.get(url, timeout=5).json()
        return last[0] == expected

    try:
        poll(answered, timeout=timeout, interval=0.05, what=f"{url} answering {expected}")
    except Timeout:
        pass
    return last[0]


def _wait_output(service, text: str, timeout: float) -> None:
    """Until a line of SERVICE's output contains TEXT (TIMEOUT only bounds a hang)."""
    poll(lambda: any(text in line for line in service.output), timeout=timeout, interval=0.05,
         what=f"{text!r} in the dev server's output")


class Hammer:
    """Requests in a loop (bounded) from a thread; every outcome recorded."""

    def __init__(self, url: str, max_requests: int = 5000):
        self.url = url
        self.max_requests = max_requests
        self.outcomes: dict[str, int] = {}
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        for _ in range(self.max_requests):
            if self.stop.is_set():
                return
            try:
                status = str(requests.get(self.url, timeout=10).status_code)
            except requests.RequestException as err:
                status = type(err).__name__
                self.errors.append(repr(err)[:300])
            self.outcomes[status] = self.outcomes.get(status, 0) + 1
            self.stop.wait(0.01)  # the client's pace, not a wait for anything

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def _worker_pid(service) -> int:
    """The dev server's one worker process (while no reload runs)."""
    (worker,) = psutil.Process(service.pid).children()
    return worker.pid


def test_tar_synced_saves_reload_without_a_refused_or_failed_request(tmp_path):
    code, module = _copy_hello(tmp_path)
    original = module.read_text()
    with ServiceProcess(HELLO, free_port(), dev=True, directory=code) as hello:
        with Hammer(hello.url + "/healthz") as hammer:
            for value in range(2, 8):
                _tar_sync(code, "hello_app/__init__.py", original.replace(OLD, f'return {{"a": {value}}}'))
                assert _wait_for(hello.url + "/", {"a": value}) == {"a": value}
        assert set(hammer.outcomes) == {"200"}, (hammer.outcomes, hammer.errors[:3], "".join(hello.output)[-3000:])
        assert sum(hammer.outcomes.values()) > 10
        assert hello.alive()
    output = "".join(hello.output)
    assert "Detected change" in output and "reload: serving the new code" in output
    assert "Starting granian" in output  # production's server ...
    assert '"GET /healthz HTTP/1.1" 200' in output  # ... and its bridge's access log
    assert "killed" not in output  # every old worker stopped gracefully


def test_a_saved_syntax_error_keeps_the_previous_code_serving_until_fixed(tmp_path):
    code, module = _copy_hello(tmp_path)
    original = module.read_text()
    with ServiceProcess(HELLO, free_port(), dev=True, directory=code) as hello:
        module.write_text(original.replace(OLD, 'return {"a": 2'))  # unclosed brace
        _wait_output(hello, "SyntaxError", timeout=30)
        assert any("not reloading: SyntaxError" in line and "keeps serving" in line for line in hello.output)
        assert requests.get(hello.url + "/", timeout=5).json() == {"a": 1}
        module.write_text(original.replace(OLD, 'return {"a": 3}'))
        assert _wait_for(hello.url + "/", {"a": 3}) == {"a": 3}
        assert hello.alive()


def test_an_import_error_keeps_the_previous_code_serving_until_fixed(tmp_path):
    code, module = _copy_hello(tmp_path)
    original = module.read_text()
    with ServiceProcess(HELLO, free_port(), dev=True, directory=code) as hello:
        module.write_text(original + "\nraise RuntimeError('broken at import')\n")
        _wait_output(hello, "did not start", timeout=60)
        assert any("the previous code keeps serving" in line for line in hello.output), "".join(hello.output)
        assert any("broken at import" in line for line in hello.output)  # the error is shown
        assert requests.get(hello.url + "/", timeout=5).json() == {"a": 1}
        module.write_text(original.replace(OLD, 'return {"a": 4}'))
        assert _wait_for(hello.url + "/", {"a": 4}) == {"a": 4}
        assert hello.alive()


def test_a_crashed_worker_is_replaced_and_sigterm_stops_everything(tmp_path):
    code, _module = _copy_hello(tmp_path)
    with ServiceProcess(HELLO, free_port(), dev=True, directory=code) as hello:
        os.kill(_worker_pid(hello), signal.SIGKILL)
        _wait_output(hello, "restart: serving the new code", timeout=60)
        assert requests.get(hello.url + "/", timeout=5).json() == {"a": 1}
        assert hello.stop() == 0

    def refused() -> bool:
        try:
            requests.get(hello.url + "/healthz", timeout=2)
        except requests.ConnectionError:
            return True
        return False

    # the master has exited (its worker before it): the port must be closed now, and stay so
    assert refused(), "the port must be closed once the dev server stopped"


def test_a_reload_hands_the_debugger_to_the_new_worker_despite_a_stale_client(tmp_path):
    """A client still connected to the old worker's debugger (one that connected in the instant
    of a reload, or never detached) is cut off by the reload, and the new worker's debugger takes
    an attach, although the old worker also held an idle keep-alive connection."""
    code, module = _copy_hello(tmp_path)
    original = module.read_text()
    line = next(i for i, text in enumerate(original.splitlines(), 1) if OLD in text)
    debug_port = free_port()
    with ServiceProcess(HELLO, free_port(), dev=True, directory=code,
                        env={"TWOTIER_DEBUG_PORT": str(debug_port)}) as hello:
        _wait_output(hello, "debugpy listening", timeout=30)
        stale = DapClient("127.0.0.1", debug_port, timeout=10)
        stale.initialize()
        with socket.create_connection(("127.0.0.1", hello.port), timeout=10) as idle:
            idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert idle.recv(4096).startswith(b"HTTP/1.1 200")  # and then it stays open, idle
            _tar_sync(code, "hello_app/__init__.py", original.replace(OLD, 'return {"a": 2}'))
            assert _wait_for(hello.url + "/", {"a": 2}) == {"a": 2}
            dap, _placed = attach_when_ready("127.0.0.1", debug_port, {str(module): [line]},
                                             timeout=60, session_timeout=30, retry_every=0.2)
            with dap:
                answer = {}
                thread = threading.Thread(target=lambda: answer.update(
                    requests.get(hello.url + "/", timeout=30).json()), daemon=True)
                thread.start()
                stopped = dap.wait_event("stopped", timeout=30)
                frame, _locals = dap.frame_locals(stopped["body"]["threadId"])
                assert frame["name"] == "home" and frame["line"] == line
                dap.request("continue", {"threadId": stopped["body"]["threadId"]})
                thread.join(30)
            assert answer == {"a": 2}  # the new code, stopped at in the new worker
            # the old worker's debug session ends with it (the deadline only bounds a hang)
            poll(lambda: stale.closed, timeout=60, interval=0.05,
                 what="the old worker's debug session ended by the reload")
        assert hello.alive()
