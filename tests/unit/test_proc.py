"""twotier.proc.Background: the one way the project runs a process in the background."""
from __future__ import annotations

import io
import sys

from twotier.poll import poll
from twotier.proc import Background


def test_output_is_kept_echoed_with_the_label_and_handed_on():
    echo, seen = io.StringIO(), []
    with Background([sys.executable, "-c", "print('one'); print('two')"], label="demo", echo=echo,
                    on_line=seen.append) as proc:
        poll(lambda: "" in seen, timeout=30, interval=0.05, what="the end of the output")
    assert list(proc.output) == ["one\n", "two\n"]
    assert echo.getvalue() == "demo | one\ndemo | two\n"
    assert seen == ["one\n", "two\n", ""]  # "" = the output ended
    assert proc.returncode == 0 and not proc.alive()


def test_stop_ends_the_whole_group_and_says_the_code(tmp_path):
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
           "print('started', flush=True); time.sleep(60)"
    proc = Background([sys.executable, "-c", code], log_path=tmp_path / "logs" / "run.log").start()
    poll(lambda: "started" in proc.tail(), timeout=30, interval=0.05, what="the child starting")
    assert proc.alive()
    assert proc.stop(timeout=5) == -15  # SIGTERM was enough for the parent
    assert not proc.alive() and proc.tail() == "started"


def test_a_process_that_ignores_sigterm_is_killed(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    proc = Background([sys.executable, "-c", code]).start()
    poll(lambda: proc.output, timeout=30, interval=0.05, what="the process starting")
    assert proc.stop(timeout=0.5) == -9
