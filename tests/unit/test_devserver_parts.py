"""twotier_service.devserver's pure parts: which files count as code, the syntax check that keeps
the old code serving, the settle wait that lets a whole Tilt sync land before a reload."""
from __future__ import annotations

import time

from twotier_service import devserver


def supervisor(tmp_path, exclude=()):
    return devserver.Supervisor("127.0.0.1", 0, set(exclude), [str(tmp_path)])


def test_only_python_sources_outside_excluded_dirs_count(tmp_path):
    sup = supervisor(tmp_path, exclude=[str(tmp_path / "data")])
    assert sup._relevant(str(tmp_path / "app_api" / "routes.py"))
    assert not sup._relevant(str(tmp_path / "app_api" / "__pycache__" / "routes.cpython-311.py"))
    assert not sup._relevant(str(tmp_path / "data" / "item.py"))  # items are data, not code
    assert not sup._relevant(str(tmp_path / "README.md"))


def test_syntax_errors_name_the_file_and_line_and_deleted_files_pass(tmp_path):
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text("x = 1\n")
    bad.write_text("x = 1\ndef f(:\n")
    errors = devserver._syntax_errors([str(good), str(bad), str(tmp_path / "gone.py")])
    assert len(errors) == 1
    assert errors[0].startswith(f"SyntaxError in {bad}:2")


def test_settle_returns_only_after_a_quiet_time_since_the_last_event(tmp_path):
    sup = supervisor(tmp_path)
    path = str(tmp_path / "a.py")
    with sup.lock:
        last = sup.changed[path] = time.monotonic()
    assert sup._settle() == [path]
    assert time.monotonic() - last >= devserver.SETTLE_S  # the whole sync had time to land
    assert not sup.changed


def test_watch_roots_collapse_nested_dirs_and_skip_excluded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    roots = devserver._watch_roots({"/usr", "/opt/venv", str(tmp_path / "data")})
    assert str(tmp_path) in roots
    assert not any(r.startswith(str(tmp_path) + "/") for r in roots)
    assert not any(r == "/usr" or r.startswith("/usr/") for r in roots)
