"""The service processes themselves: `invoke serve` / `invoke dev` started and stopped like a
user does, busy ports, the dev server's reload, the server's graceful stop, entry-point errors."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from twotier.dev.servers import APP, HELLO, STORAGE, ServiceProcess, service_env
from twotier.errors import UserError
from twotier.poll import Timeout, poll
from twotier.ports import check_port_free, free_port, port_owner

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    """All descendants of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Invoke:
    """`python -m invoke <args>` from the project root, output collected line by line."""

    def __init__(self, *args: str, new_session: bool = False):
        self.proc = subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=new_session)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def all_output(self) -> str:
        """Everything it printed, once it has exited (the reader has seen the end of its output)."""
        self.reader.join(30)
        return self.text

    def wait_for(self, marker: str, timeout: float = 90) -> None:
        """Until MARKER is printed; TIMEOUT only bounds a hang."""
        def printed() -> bool:
            if marker in self.text:
                return True
            if self.proc.poll() is not None:
                pytest.fail(f"invoke exited ({self.proc.returncode}) before {marker!r}:\n{self.all_output()}")
            return False

        try:
            poll(printed, timeout=timeout, interval=0.1, what=f"{marker!r} from invoke")
        except Timeout:
            self.proc.kill()
            pytest.fail(f"no {marker!r} within {timeout} s:\n{self.all_output()}")


@pytest.mark.parametrize("task, sig, group", [
    ("serve", signal.SIGINT, True),    # Ctrl-C in a terminal: the whole foreground group
    ("serve", signal.SIGTERM, False),  # a supervisor stopping invoke alone
    ("dev", signal.SIGINT, False),
])
def test_invoke_serve_runs_both_services_and_stops_both(tmp_path, task, sig, group):
    sport, aport = free_port(), free_port()
    items = tmp_path / "items" / "new"  # missing: created
    run = Invoke(task, "--storage-dir", str(items), "--storage-port", str(sport),
                 "--app-port", str(aport), new_session=group)
    try:
        run.wait_for("Ctrl-C stops both")
        assert requests.get(f"http://127.0.0.1:{aport}/createlist/3", timeout=10).json() == {
            "createds": ["0", "1", "2"], "deleteds": [], "faileds": []}
        assert requests.get(f"http://127.0.0.1:{sport}/items", timeout=10).json() == {"items": ["0", "1", "2"]}
        # the items (and the batch's idempotency record, in the hidden .sto-idem directory)
        assert sorted(n for n in os.listdir(items) if not n.startswith(".")) == ["0", "1", "2"]
        children = _children(run.proc.pid)
        assert len(children) >= 2, children
        if group:
            os.killpg(run.proc.pid, sig)
        else:
            run.proc.send_signal(sig)
        assert run.proc.wait(timeout=30) == 0, run.text
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert "stopped" in run.all_output()
    # invoke has exited; its children are reaped by init: wait for that, not for a fixed time
    poll(lambda: not [pid for pid in children if _alive(pid)], timeout=30, interval=0.05,
         what=f"the servers {sorted(children)} gone after invoke stopped")
    for port in (sport, aport):
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert sorted(n for n in os.listdir(items) if not n.startswith(".")) == ["0", "1", "2"]  # kept


def test_invoke_serve_on_a_busy_port_says_which_flag_to_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = Invoke("serve", "--storage-port", str(port), "--app-port", str(free_port()))
        assert run.proc.wait(timeout=60) == 1
    out = run.all_output()
    assert f"error: port {port} is in use on 127.0.0.1 by python" in out
    assert "hint: use --storage-port " in out
    assert "Traceback" not in out


def test_busy_port_error_names_the_owner_and_a_free_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert port_owner(port) == f"{Path(sys.executable).resolve().name[:15]} (pid {os.getpid()})" \
            or port_owner(port).endswith(f"(pid {os.getpid()})")
        with pytest.raises(UserError) as err:
            check_port_free(port, "--app-port")
    assert f"port {port} is in use" in err.value.message
    assert err.value.hint.startswith("use --app-port ")


def _answer(url: str):
    try:
        return requests.get(url, timeout=5).json()
    except (requests.RequestException, ValueError):
        return None


def test_dev_server_reloads_an_edited_file(tmp_path):
    """The new code answers after a save (how soon is a benchmark's figure: bench.reload)."""
    code = tmp_path / "hello"
    shutil.copytree(HELLO.directory, code, ignore=shutil.ignore_patterns("__pycache__"))
    with ServiceProcess(HELLO, free_port(), dev=True, directory=code) as hello:
        assert requests.get(hello.url + "/", timeout=5).json() == {"a": 1}
        module = code / "hello_app" / "__init__.py"
        module.write_text(module.read_text().replace('return {"a": 1}', 'return {"a": 2}'))
        poll(lambda: _answer(hello.url + "/") == {"a": 2}, timeout=60, interval=0.05,
             what="the dev server answering with the saved code")
        assert any(f"Detected change in '{module}'" in line for line in hello.output), "".join(hello.output)


def test_dev_server_does_not_reload_when_items_look_like_code(tmp_path):
    code = tmp_path / "storage"
    shutil.copytree(STORAGE.directory, code, ignore=shutil.ignore_patterns("__pycache__"))
    items = code / "data"  # worst case: the items live inside the watched code directory
    with ServiceProcess(STORAGE, free_port(), {"STO_STORAGE": str(items)}, dev=True,
                        directory=code) as storage:
        assert requests.put(storage.url + "/items/reload.py", timeout=5).status_code == 201
        # No fixed wait for "nothing happened": a real code change saved after the item is seen by
        # the same watcher after it (one inotify queue, in order); once that change is reported,
        # the item's event has been handled too, and it must not have been reported.
        probe = code / "storage_api" / "e2e_watch_probe.py"
        probe.write_text("# a code file saved after the item\n")
        poll(lambda: any(str(probe) in line for line in storage.output), timeout=60, interval=0.05,
             what="the dev server reporting the code file saved after the item")
        changes = [line for line in storage.output if "Detected change" in line]
        assert not [line for line in changes if str(items) in line], "".join(storage.output)
        assert requests.get(storage.url + "/items", timeout=5).json() == {"items": ["reload.py"]}


def test_the_server_finishes_in_flight_requests_on_sigterm(tmp_path):
    with ServiceProcess(STORAGE, free_port(), {"STO_STORAGE": str(tmp_path)}) as storage:
        env = {"STO_API": storage.url, "API_BATCH_SIZE": "500"}
        app = ServiceProcess(APP, free_port(), env).start().wait_ready()
        try:
            answer = {}

            def slow_request():  # 60 sequential batch calls: long enough to be in flight
                answer["resp"] = requests.get(app.url + "/createlist/30000", timeout=60)

            thread = threading.Thread(target=slow_request)
            thread.start()
            # in flight: the first of its batches has reached the storage, not the last one
            def stored() -> int:
                return len([p for p in tmp_path.iterdir() if not p.name.startswith(".")])

            poll(stored, timeout=60, interval=0.01, what="the createlist's first items stored")
            assert stored() < 30000, "the request ended before the SIGTERM: nothing was in flight"
            os.kill(app.pid, signal.SIGTERM)
            thread.join(60)
            assert answer["resp"].status_code == 200
            assert len(answer["resp"].json()["createds"]) == 30000
            assert app.proc.wait(timeout=20) == 0
            assert any("Shutting down granian" in line for line in app.output)
        finally:
            app.stop()


@pytest.mark.parametrize("service, env, message", [
    (STORAGE, {}, "error: storage API: STO_STORAGE is not set"),
    (APP, {}, "error: application API: STO_API is not set"),
    (APP, {"STO_API": "in-svc:5000"}, "error: application API: STO_API must be an http://"),
    (APP, {"STO_API": "http://x:5000", "API_MAX_ITEMS": "lots"},
     "error: application API: API_MAX_ITEMS must be an integer"),
])
def test_entry_point_config_errors_are_one_clear_line(service, env, message):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STO_", "API_"))}
    result = subprocess.run([sys.executable, "-m", service.package], cwd=service.directory,
                            env=service_env({**clean, **env}), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr
