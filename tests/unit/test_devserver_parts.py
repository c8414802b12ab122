"""twotier_service.devserver's parts: which files count as code, the syntax check that keeps the
old code serving, the settle wait that lets a whole Tilt sync land before a reload, the code a
new worker imports afresh, a retiring worker's last accept."""
from __future__ import annotations

import os
import socket
import sys
import threading
import types

import pytest

from twotier_service import devserver


def watcher(tmp_path, exclude=()):
    return devserver.Watcher([str(tmp_path)], set(exclude))


class Event:
    def __init__(self, event_type, src_path, dest_path="", is_directory=False):
        self.event_type, self.src_path, self.dest_path, self.is_directory = (
            event_type, src_path, dest_path, is_directory)


def test_only_python_sources_outside_excluded_dirs_count(tmp_path):
    w = watcher(tmp_path, exclude=[str(tmp_path / "data")])
    assert w.relevant(str(tmp_path / "app_api" / "routes.py"))
    assert not w.relevant(str(tmp_path / "app_api" / "__pycache__" / "routes.cpython-311.py"))
    assert not w.relevant(str(tmp_path / "data" / "item.py"))  # items are data, not code
    assert not w.relevant(str(tmp_path / "README.md"))


def test_events_collect_changed_code_and_a_move_counts_by_its_destination(tmp_path):
    w = watcher(tmp_path)
    w.on_any_event(Event("opened", str(tmp_path / "a.py")))  # reading a file is no change
    w.on_any_event(Event("modified", str(tmp_path / "pkg"), is_directory=True))
    assert not w.pending.is_set()
    w.on_any_event(Event("moved", str(tmp_path / ".a.py.swp"), str(tmp_path / "a.py")))  # an editor's save
    w.on_any_event(Event("closed", str(tmp_path / "b.py")))
    assert w.pending.is_set()
    assert w.settle() == [str(tmp_path / "a.py"), str(tmp_path / "b.py")]
    assert not w.changed


def test_settle_waits_for_events_to_stop_and_takes_those_that_came_meanwhile(tmp_path):
    w = watcher(tmp_path)
    first, later = str(tmp_path / "a.py"), str(tmp_path / "b.py")
    w.on_any_event(Event("modified", first))
    calls = []
    wait = w.pending.wait

    def wait_and_deliver(timeout):  # the burst's next event arrives during the first quiet wait
        if not calls:
            w.on_any_event(Event("modified", later))
        calls.append(timeout)
        return wait(timeout)

    w.pending.wait = wait_and_deliver
    assert w.settle() == [first, later]
    assert calls[0] == calls[-1] == devserver.SETTLE_S and len(calls) == 2


def test_syntax_errors_name_the_file_and_line_and_deleted_files_pass(tmp_path):
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text("x = 1\n")
    bad.write_text("x = 1\ndef f(:\n")
    errors = devserver._syntax_errors([str(good), str(bad), str(tmp_path / "gone.py")])
    assert len(errors) == 1
    assert errors[0].startswith(f"SyntaxError in {bad}:2")


def test_watch_roots_collapse_nested_dirs_and_skip_excluded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    roots = devserver._watch_roots({"/usr", "/opt/venv", str(tmp_path / "data")})
    assert str(tmp_path) in roots
    assert not any(r.startswith(str(tmp_path) + "/") for r in roots)
    assert not any(r == "/usr" or r.startswith("/usr/") for r in roots)


def test_a_new_worker_forgets_the_code_modules_but_keeps_main_and_libraries(tmp_path, monkeypatch):
    code = types.ModuleType("app_code")
    code.__file__ = str(tmp_path / "app_code" / "__init__.py")
    main = types.ModuleType("__main__")
    main.__file__ = str(tmp_path / "app_code" / "__main__.py")
    monkeypatch.setitem(sys.modules, "app_code", code)
    monkeypatch.setitem(sys.modules, "__main__", main)
    devserver._forget_modules([str(tmp_path)])
    assert "app_code" not in sys.modules  # imported again from disk by the new worker
    assert sys.modules["__main__"] is main
    assert "threading" in sys.modules and sys.modules["threading"] is threading


def test_a_retiring_worker_accepts_no_more_while_the_masters_socket_queues(monkeypatch):
    monkeypatch.delenv(devserver.ENV_DEBUG_PORT, raising=False)
    with socket.create_server(("127.0.0.1", 0)) as master:
        worker_fd = os.dup(master.fileno())  # the worker's copy of the one listening socket
        app = devserver._DevApp(types.SimpleNamespace(__rsgi__=None), worker_fd, None)
        app._retire()
        with socket.socket(fileno=worker_fd) as worker, \
                socket.create_connection(master.getsockname(), timeout=5):
            with pytest.raises(BlockingIOError):
                worker.accept()  # the worker's descriptor is an idle socket now
            master.settimeout(5)
            accepted, _ = master.accept()  # the connection waited for the next worker
            accepted.close()
