"""The README test's reading of README.md (tests/e2e/test_readme.py runs what it reads), and the
VS Code launch.json of docs/dev-loop.md that tests/e2e/test_tilt_debug.py attaches with."""
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_readme import RUN_LANGUAGES, blocks, launch_configuration, output_matches, readme_commands, skipped

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def test_every_console_and_sh_block_is_run_or_says_why_not():
    text = README.read_text()
    command_blocks = [b for b in blocks(text) if b.lang in RUN_LANGUAGES]
    run = [b for b in command_blocks if b.not_run is None]
    assert len(run) >= 4 and {b.section for b in run} >= {"Quick start", "Verification", "Cleanup"}
    assert all(len(b.not_run) > 20 for b in skipped(text))  # a reason a reader can act on
    # no other fenced language hides a command: only diagrams and data besides
    assert {b.lang for b in blocks(text)} <= {*RUN_LANGUAGES, "mermaid", "json", "yaml"}


def test_the_readme_follows_the_guide_order_and_stays_short():
    text = README.read_text()
    sections = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    guide = ["Purpose", "Prerequisites", "Quick start", "Verification", "Develop with Tilt", "Cleanup",
             "Troubleshooting"]
    assert [s for s in sections if s in guide] == guide
    assert sections[0] == "Contents"
    assert len(text.splitlines()) < 300
    assert "Last validated on " in text


def test_commands_are_read_in_document_order():
    commands = readme_commands(README.read_text())
    texts = [c.text for c in commands]
    assert texts[0] == "./bootstrap.sh up"
    assert texts[1] == 'eval "$(.venv/bin/invoke cluster.env)"'  # the one line a new shell needs
    assert texts[-1] == "invoke cluster.down"
    curl = next(c for c in commands if c.text.startswith("curl"))
    assert curl.expected == ['{"createds":["0","1","2"],"deleteds":[],"faileds":[]}']
    assert not [t for t in texts if t.rstrip().endswith("\\")], "no continuation lines"


def test_the_loader_session_is_typed_inside_invoke_loader_shell():
    shell = next(c for c in readme_commands(README.read_text()) if c.text == "invoke loader-shell")
    assert shell.expected == []
    assert [c.text for c in shell.inside][-1] == "exit"
    assert all(c.expected for c in shell.inside[:-1])  # every answer of the seed is checked


def test_no_export_or_pasted_path_in_the_executable_blocks():
    for c in readme_commands(README.read_text()):
        assert not c.text.startswith("export "), c.text
        assert "/var/cache/twotier" not in c.text, c.text


def test_sh_blocks_are_commands_and_not_run_blocks_are_left_out():
    text = ("## Setup\n\n```sh\n# a comment\ninvoke a   # trailing comment\n\ninvoke b\n```\n\n"
            "## Mac\n\n<!-- not run by the README test: macOS only -->\n```sh\nbrew install x\n```\n\n"
            "```console\n$ c\nout\n```\n\n```json\n{}\n```\n")
    commands = readme_commands(text)
    assert [(c.text, c.section) for c in commands] == [("invoke a   # trailing comment", "Setup"),
                                                       ("invoke b", "Setup"), ("c", "Mac")]
    assert commands[-1].expected == ["out"]
    assert [(b.section, b.not_run, b.body) for b in skipped(text)] == [("Mac", "macOS only", "brew install x\n")]


@pytest.mark.parametrize("text, message", [
    ("<!-- not run by the README test: -->\n```sh\nx\n```\n", "without its reason"),
    ("<!-- not run by the README test: why -->\n\nprose\n\n```sh\nx\n```\n", "not right before a block"),
    ("```sh\nx\n```\n<!-- not run by the README test: why -->\n", "after the last block"),
    ("## Quick start\n```console\nstray\n```\n", "output before any command"),
])
def test_misplaced_markers_and_stray_output_are_refused(text, message):
    with pytest.raises(AssertionError, match=message):
        readme_commands(text)


def test_output_matching():
    assert output_matches(["a ...", "...", "z"], ["a  b", "x", "y", "z"])
    assert output_matches(["NAME   TYPE"], ["NAME TYPE"])  # runs of blanks count as one
    assert output_matches(["..."], [])
    assert not output_matches(["a"], ["a", "b"])
    assert not output_matches(['{"items":[]}'], ['{"items":["0"]}'])


@pytest.mark.parametrize("tier", ["app", "storage"])
def test_the_launch_json_of_the_dev_loop_page_parses_and_matches_the_debug_ports(tier, tmp_path):
    config = launch_configuration(tier, workspace=tmp_path)
    system = yaml.safe_load((ROOT / "system.yaml").read_text())
    assert config["type"] == "debugpy" and config["request"] == "attach"
    assert config["connect"] == {"host": "127.0.0.1", "port": system["tiers"][tier]["debug_port"]}
    assert f"--debug={tier}" in config["name"]
    mappings = {m["remoteRoot"]: m["localRoot"] for m in config["pathMappings"]}
    assert mappings == {"/app/twotier_service": f"{tmp_path}/services/common/twotier_service",
                        "/app": f"{tmp_path}/services/{system['tiers'][tier]['folder']}"}
    for local in launch_configuration(tier)["pathMappings"]:  # the real checkout: the folders exist
        assert Path(local["localRoot"]).is_dir(), local
