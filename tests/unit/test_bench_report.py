"""Pure parts of `invoke bench` (bench/report.py)."""
from __future__ import annotations

import pytest

from bench.report import _mib
from twotier.errors import UserError


@pytest.mark.parametrize("text, mib", [("39.12MiB", 39.12), ("812KiB", 812 / 1024), ("1.5GiB", 1536.0),
                                       ("50MB", 50e6 / 2**20), ("0B", 0.0)])
def test_docker_stats_sizes_in_mib(text, mib):
    assert _mib(text) == pytest.approx(mib)


def test_an_unexpected_docker_stats_figure_is_a_clear_error():
    with pytest.raises(UserError, match="unexpected `docker stats` memory figure"):
        _mib("n/a")
