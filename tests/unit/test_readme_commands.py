"""The README test's reading of README.md (tests/e2e/test_readme.py runs what it reads)."""
from pathlib import Path

from tests.e2e.test_readme import output_matches, readme_commands

README = Path(__file__).resolve().parents[2] / "README.md"


def test_quick_start_verification_and_cleanup_are_read_in_order():
    commands = readme_commands(README.read_text())
    texts = [c.text for c in commands]
    assert texts[0] == "./bootstrap.sh up"
    assert texts[1] == 'eval "$(.venv/bin/invoke cluster.env)"'  # the one line a new shell needs
    assert {c.section for c in commands} == {"Quick start", "Verification", "Cleanup"}
    assert texts[-1] == "invoke cluster.down"
    curl = next(c for c in commands if c.text.startswith("curl"))
    assert curl.expected == ['{"createds":["0","1","2"],"deleteds":[],"faileds":[]}']


def test_the_loader_session_is_typed_inside_invoke_loader_shell():
    shell = next(c for c in readme_commands(README.read_text()) if c.text == "invoke loader-shell")
    assert shell.expected == []
    assert [c.text for c in shell.inside][-1] == "exit"
    assert all(c.expected for c in shell.inside[:-1])  # every answer of the seed is checked


def test_no_export_or_pasted_path_in_the_executable_blocks():
    for c in readme_commands(README.read_text()):
        assert not c.text.startswith("export "), c.text
        assert "/var/cache/twotier" not in c.text, c.text


def test_output_matching():
    assert output_matches(["a ...", "...", "z"], ["a  b", "x", "y", "z"])
    assert output_matches(["NAME   TYPE"], ["NAME TYPE"])  # runs of blanks count as one
    assert output_matches(["..."], [])
    assert not output_matches(["a"], ["a", "b"])
    assert not output_matches(['{"items":[]}'], ['{"items":["0"]}'])


def test_output_before_any_command_is_refused():
    import pytest

    with pytest.raises(AssertionError):
        readme_commands("## Quick start\n```console\nstray\n```\n## Verification\n"
                        "```console\n$ a\n```\n## Cleanup\n```console\n$ b\n```\n")
