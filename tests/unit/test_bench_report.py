"""Pure parts of `invoke bench` (bench/report.py): the report's blocks and the docs regenerated
from them, and docker's memory figures."""
from __future__ import annotations

import pytest

from bench import report
from bench.report import _mib
from twotier.errors import UserError


@pytest.mark.parametrize("text, mib", [("39.12MiB", 39.12), ("812KiB", 812 / 1024), ("1.5GiB", 1536.0),
                                       ("50MB", 50e6 / 2**20), ("0B", 0.0)])
def test_docker_stats_sizes_in_mib(text, mib):
    assert _mib(text) == pytest.approx(mib)


def test_an_unexpected_docker_stats_figure_is_a_clear_error():
    with pytest.raises(UserError, match="unexpected `docker stats` memory figure"):
        _mib("n/a")


DOC = """# Benchmarks

Prose the generator never touches.

<!-- bench:api -->
| old | table |
<!-- /bench:api -->

More prose.

<!-- bench:deploy -->
an older deploy table
<!-- /bench:deploy -->

<!-- bench:one-off -->
old one-offs
<!-- /bench:one-off -->
"""


@pytest.fixture
def one_run(tmp_path, monkeypatch):
    """A report written by `run` with the api section faked (no services started)."""
    monkeypatch.setattr(report, "api_section", lambda settings, progress, **options: "| N | createlist |\n|---|---|\n| 10 | 1.0 ms |")
    path = tmp_path / "bench.md"
    report.run(None, only="api", progress=lambda _line: None, report=path)
    return path


def test_one_run_writes_one_block_per_section_with_its_provenance(one_run):
    blocks = report.blocks(one_run.read_text())
    assert list(blocks) == ["api", "one-off"]
    assert "| 10 | 1.0 ms |" in blocks["api"]
    assert "`invoke bench --only api`; commit " in blocks["api"] and " UTC; " in blocks["api"]  # command, commit, date, machine
    assert "docs/decisions/server.md" in blocks["one-off"]


def test_the_docs_tables_are_regenerated_between_their_markers(one_run, tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC)
    said = []
    assert report.regenerate(one_run, (doc,), out=said.append) == {doc: ["api", "one-off"]}
    text = doc.read_text()
    assert "| 10 | 1.0 ms |" in text and "| old | table |" not in text
    assert "an older deploy table" in text  # not in this run's report: left as it was, and said
    assert "left as they were: deploy" in said[0]
    assert text.startswith("# Benchmarks\n\nProse the generator never touches.\n") and "More prose." in text
    report.regenerate(one_run, (doc,), out=said.append)
    assert doc.read_text() == text  # idempotent


def test_regenerating_without_a_report_or_markers_says_what_to_do(one_run, tmp_path):
    with pytest.raises(UserError, match="no benchmark report") as err:
        report.regenerate(tmp_path / "missing.md", (tmp_path / "doc.md",))
    assert "invoke bench" in err.value.hint
    bare = tmp_path / "bare.md"
    bare.write_text("# no markers\n")
    with pytest.raises(UserError, match="no <!-- bench:NAME --> markers"):
        report.regenerate(one_run, (bare,))


def test_sections_are_chosen_by_name():
    assert report.choose() == list(report.SECTIONS)
    assert report.choose(only="api,deploy", skip="deploy") == ["api"]
    with pytest.raises(UserError, match="unknown benchmark section"):
        report.choose(only="servers")
