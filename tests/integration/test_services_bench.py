"""`invoke bench.api` (bench.api): a small real run, and its table/goal logic."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import api as apibench
from bench.api import Row
from twotier.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def test_small_real_run_measures_both_clients():
    """A real run gives every figure (how they compare is the benchmark's report, not a test's
    threshold: timings on a shared 2-core machine vary)."""
    rows = apibench.measure([10, 300], repeat=1, baseline_max=300)
    assert [r.n for r in rows] == [10, 300]
    big = rows[1]
    assert big.create > 0 and big.clear > 0
    assert big.create_ratio > 0, apibench.table(rows)  # the per-item client was measured too


def test_invoke_bench_api_prints_the_table_and_the_goals():
    result = subprocess.run([sys.executable, "-m", "invoke", "bench.api", "--sizes", "10,50",
                             "--repeat", "1", "--baseline-max", "50"],
                            cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "createlist  per-item PUTs  speed-up" in result.stdout
    assert "load average" in result.stdout
    assert "goal createlist/1000 >= 20x faster than the per-item baseline (not measured): -" in result.stdout


def test_table_and_goals():
    rows = [Row(1000, 0.02, 0.01, 1.0, 0.5), Row(10000, 0.6, 0.2)]
    text = apibench.table(rows)
    assert "50.0x" in text and "20.0 ms" in text and "   -" in text
    (ratio_text, ratio_met), (fast_text, fast_met) = apibench.goals(rows)
    assert ratio_met is True and "50.0x" in ratio_text
    assert fast_met is False and "0.600 s" in fast_text


def test_check_flag_fails_when_a_goal_is_missed(monkeypatch, capsys):
    monkeypatch.setattr(apibench, "measure", lambda *a, **k: [Row(10000, 0.9, 0.2)])
    with pytest.raises(UserError, match="goal"):
        apibench.main(sizes="10000", repeat=1, check=True)
    assert "NOT MET" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["", "a,b", "10,-1", "0"])
def test_bad_sizes_are_user_errors(text):
    with pytest.raises(UserError):
        apibench.parse_sizes(text)
