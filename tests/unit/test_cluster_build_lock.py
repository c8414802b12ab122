"""Concurrent builds and cluster.up/down take turns; a cold build says what it does, logs the rest.

Real processes and real flock(2) locks on files under tmp_path; the component builds are a tiny
fake build script, so each test takes about a second.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from localcluster import build, lock
from localcluster import layout as L
from localcluster.errors import ClusterError
from twotier.poll import poll

REPO = Path(__file__).resolve().parents[2]
BOUND = 30  # seconds any child process may take before the test fails


def fake_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "fake-build.sh"
    script.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + textwrap.dedent(body))
    return script


def env_with_go(tmp_path: Path, **extra) -> dict:
    """os.environ with a stand-in `go` on PATH (the fake builds never call it)."""
    gobin = tmp_path / "gobin"
    gobin.mkdir(exist_ok=True)
    (gobin / "go").write_text("#!/bin/sh\n")
    (gobin / "go").chmod(0o755)
    return {**os.environ, "PATH": f"{gobin}:{os.environ['PATH']}", **extra}


def wait_for(predicate, what: str, timeout: float = BOUND):
    return poll(predicate, timeout=timeout, interval=0.05, what=f"waiting for {what}")


# --------------------------------------------------------------------------- the lock itself

# A holder given "hold" keeps the lock until a line (or EOF: the test is gone) on its stdin.
HOLDER = """
import sys
from pathlib import Path
from localcluster import lock
events = Path(sys.argv[2])
with lock.hold(Path(sys.argv[1]), "build", progress=lambda m: print(m, flush=True)):
    with events.open("a") as f: f.write(f"{sys.argv[3]} acquired\\n")
    if sys.argv[4:] == ["hold"]:
        sys.stdin.readline()
    with events.open("a") as f: f.write(f"{sys.argv[3]} released\\n")
"""


def spawn(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, args)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_second_holder_waits_names_the_first_and_goes_on_after_it(tmp_path):
    path, events = tmp_path / "x.lock", tmp_path / "events"
    first = spawn(path, events, "first", "hold")
    wait_for(lambda: events.exists() and "first acquired" in events.read_text(), "the first holder")
    second = spawn(path, events, "second")
    # The second says it waits, for whom, and does not get the lock while the first holds it.
    line = second.stdout.readline()
    assert line.strip() == f"waiting for another build (pid {first.pid}) to finish ..."
    assert events.read_text().splitlines() == ["first acquired"]
    out_first, _ = first.communicate("\n", timeout=BOUND)  # the release
    out_second, _ = second.communicate(timeout=BOUND)
    assert first.returncode == 0 and second.returncode == 0, out_first + out_second
    assert events.read_text().splitlines() == ["first acquired", "first released",
                                               "second acquired", "second released"]
    assert "the other build finished after" in out_second
    assert out_first == ""  # the first never waited, so it said nothing


def test_a_killed_holder_releases_the_lock(tmp_path):
    path, events = tmp_path / "x.lock", tmp_path / "events"
    first = spawn(path, events, "first", "hold")
    wait_for(lambda: events.exists() and "first acquired" in events.read_text(), "the first holder")
    first.kill()
    first.wait(timeout=BOUND)
    with lock.hold(path, "build", progress=lambda m: pytest.fail(f"should not wait: {m}")):
        assert path.read_text().strip() == str(os.getpid())


def test_holder_pid_is_read_from_proc_locks(tmp_path):
    path = tmp_path / "x.lock"
    with lock.hold(path, "build") as fd:
        assert lock.holder_pid(fd) == os.getpid()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert lock.holder_pid(fd) is None
    finally:
        os.close(fd)


def test_cluster_up_and_down_are_under_the_cluster_lock(tmp_path, monkeypatch):
    import localcluster

    monkeypatch.setattr(L, "STATE", tmp_path / "state" / "cluster")
    seen = []
    with lock.hold(lock.cluster_lock_path(), "test"):
        waiter = subprocess.Popen(
            [sys.executable, "-c", "import localcluster.lock as k, sys; from pathlib import Path;"
             "k.L.STATE = Path(sys.argv[1]);"
             "k.exclusive('cluster.up/down')(lambda progress=print: print('ran', flush=True))()",
             str(L.STATE)], cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        seen.append(waiter.stdout.readline().strip())
    out, _ = waiter.communicate(timeout=BOUND)
    assert seen == [f"waiting for another cluster.up/down (pid {os.getpid()}) to finish ..."]
    assert out.splitlines()[-1] == "ran"
    # and the real entry points carry the decorator
    assert localcluster.up.__wrapped__ and localcluster.down.__wrapped__


# --------------------------------------------------------------------------- builds

ETCD = L.versions()["ETCD_VERSION"]  # the chosen release's (localcluster/versions.py)

DRIVER = """
import sys
from pathlib import Path
from localcluster import build, layout
layout.CACHE = Path(sys.argv[1])
build.ensure(["etcd"], progress=lambda m: print(m, flush=True), script=Path(sys.argv[2]))
"""

TINY_BUILD = """
out="$CACHE/bin/etcd-$ETCD_VERSION"
echo "start $$" >>"$CACHE/builds"
echo "[build 00:00:00] etcd $ETCD_VERSION: compiling" >&2
echo "go: downloading go.etcd.io/etcd/server/v3 $ETCD_VERSION" >&2
read -r -t 30 _ <"$CACHE/release"  # the test's go (a FIFO it holds open); 30 s bounds a hang
mkdir -p "$out" && touch "$out/.complete"
echo "end $$" >>"$CACHE/builds"
"""


def test_two_concurrent_builds_build_once_and_the_second_waits(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.mkfifo(cache / "release")
    release = os.open(cache / "release", os.O_RDWR)  # read-write: never blocks, keeps a writer
    script = fake_script(tmp_path, f'CACHE={cache}\n' + TINY_BUILD)
    env = env_with_go(tmp_path)

    def start():
        return subprocess.Popen([sys.executable, "-c", DRIVER, str(cache), str(script)], cwd=REPO,
                                env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    first = start()
    wait_for(lambda: (cache / "builds").exists(), "the first build to start")
    second = start()
    assert second.stdout.readline().startswith(f"waiting for another build (pid {first.pid})")
    os.write(release, b"go\n")
    os.close(release)
    out1, _ = first.communicate(timeout=BOUND)
    out2, _ = second.communicate(timeout=BOUND)
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    assert [ln.split()[0] for ln in (cache / "builds").read_text().splitlines()] == ["start", "end"]
    assert f"built etcd {ETCD} in" in out1
    assert "building" not in out2  # it found the first one's result and built nothing


def test_build_script_waits_for_a_python_holder_of_the_same_lock(tmp_path, monkeypatch):
    """build-binaries.sh run by hand and `invoke cluster.build` exclude each other."""
    monkeypatch.setattr(L, "CACHE", tmp_path / "cache")
    (L.bin_dir("etcd")).mkdir(parents=True)
    (L.bin_dir("etcd") / ".complete").touch()  # so the script has nothing to compile once it may go
    env = {**os.environ, "TWOTIER_CACHE": str(L.CACHE)}
    env.pop("TWOTIER_BUILD_LOCK_FD", None)
    with lock.hold(lock.build_lock_path(), "build"):
        proc = subprocess.Popen(["bash", str(L.BUILD_SCRIPT), "etcd"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = proc.stderr.readline()
        assert f"waiting for another build (pid {os.getpid()}) to finish" in line
        assert proc.poll() is None  # still waiting while we hold it
    _, err = proc.communicate(timeout=BOUND)
    assert proc.returncode == 0, err


def test_progress_shows_the_phases_and_the_log_has_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "CACHE", tmp_path / "cache")
    script = fake_script(tmp_path, """
        echo "[build 10:00:00] etcd $ETCD_VERSION: resolving its Go modules" >&2
        for i in $(seq 50); do echo "go: downloading example.com/m$i v1.0.0" >&2; done
        echo "[build 10:00:01] etcd $ETCD_VERSION: compiling" >&2
        echo "[build 10:00:02] etcd $ETCD_VERSION: done" >&2
        echo "the build's stdout"
        mkdir -p "$TWOTIER_CACHE_BIN" && touch "$TWOTIER_CACHE_BIN/.complete"
    """)
    lines = []
    build.ensure(["etcd"], progress=lines.append, script=script,
                 environ=env_with_go(tmp_path, TWOTIER_CACHE_BIN=str(L.bin_dir("etcd"))))
    log = build.log_path("etcd")
    assert lines[0].startswith(f"[1/1] building etcd {ETCD} from source, once (cold: about ")
    assert f"full log: {log}" in lines[0]
    assert [ln.strip() for ln in lines[1:3]] == [f"[build 10:00:00] etcd {ETCD}: resolving its Go modules",
                                                 f"[build 10:00:01] etcd {ETCD}: compiling"]
    assert lines[3].startswith(f"[1/1] built etcd {ETCD} in ")
    assert len(lines) == 4  # no `go: downloading` pages
    text = log.read_text()
    assert text.count("go: downloading") == 50 and "the build's stdout" in text
    # cached now: a second call says nothing and runs nothing
    build.ensure(["etcd"], progress=lines.append, script=tmp_path / "absent.sh")
    assert len(lines) == 4


def test_a_failed_build_names_its_log_and_shows_the_last_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "CACHE", tmp_path / "cache")
    script = fake_script(tmp_path, """
        echo "go: downloading example.com/m v1.0.0" >&2
        echo "go: example.com/m@v1.0.0: reading https://proxy.golang.org/...: 502 Bad Gateway" >&2
        exit 1
    """)
    with pytest.raises(ClusterError) as info:
        build.ensure(["etcd"], progress=lambda m: None, script=script,
                     environ=env_with_go(tmp_path))
    log = build.log_path("etcd")
    assert f"the full log is {log}" in info.value.message
    assert "502 Bad Gateway" in info.value.message
    assert str(log) in info.value.hint


def test_go_is_found_in_usr_local_go_when_not_on_path(tmp_path):
    fallback = tmp_path / "go" / "bin"
    fallback.mkdir(parents=True)
    (fallback / "go").write_text("#!/bin/sh\n")
    (fallback / "go").chmod(0o755)
    env = build.go_env({"PATH": "/usr/bin:/bin"}, fallback=fallback)
    assert env["PATH"] == f"/usr/bin:/bin:{fallback}"
    on_path = build.go_env({"PATH": f"{fallback}:/bin"}, fallback=tmp_path / "none")
    assert on_path["PATH"] == f"{fallback}:/bin"  # left alone
    with pytest.raises(ClusterError) as info:
        build.go_env({"PATH": str(tmp_path)}, fallback=tmp_path / "none")
    assert "Go" in info.value.message and "go.dev" in info.value.hint


def test_an_unknown_component_is_named_with_the_choices():
    with pytest.raises(ClusterError) as info:
        build.ensure(["kubelet"])
    assert "kubelet" in info.value.message and "kubernetes" in info.value.hint


def test_a_lock_taken_by_an_exited_flock_command_names_the_script_that_holds_it(tmp_path):
    """As build-binaries.sh does it: `flock 9` (a process that exits) on the script's descriptor."""
    path = tmp_path / "x.lock"
    script = subprocess.Popen(["bash", "-c", f'exec 9<>"{path}"; flock 9; echo $$ >"{path}"; echo locked; '
                               'read -r _'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert script.stdout.readline().strip() == "locked"
        lines = []
        waiter = subprocess.Popen(
            [sys.executable, "-c", "import sys; from pathlib import Path; from localcluster import lock\n"
             "with lock.hold(Path(sys.argv[1]), 'build', progress=lambda m: print(m, flush=True)): pass",
             str(path)], cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines.append(waiter.stdout.readline().strip())
        assert lines == [f"waiting for another build (pid {script.pid}) to finish ..."]
    finally:
        script.communicate("\n", timeout=BOUND)
    out, _ = waiter.communicate(timeout=BOUND)
    assert waiter.returncode == 0 and "the other build finished" in out


def test_a_holder_that_wrote_no_pid_is_found_by_its_open_descriptor(tmp_path):
    """A script that locked through an exited `flock` and wrote nothing (an older build script)."""
    path = tmp_path / "x.lock"
    script = subprocess.Popen(["bash", "-c", f'exec 9>"{path}"; flock 9; echo locked; read -r _'],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert script.stdout.readline().strip() == "locked"
        fd = os.open(path, os.O_RDONLY)
        try:
            assert lock.holder_pid(fd) == script.pid
        finally:
            os.close(fd)
    finally:
        script.communicate("\n", timeout=BOUND)
