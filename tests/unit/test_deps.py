"""The Python pins: each requirements*.in is compiled into the requirements*.txt beside it."""
import re

import pytest

from twotier import deps

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)", re.M)


def names(text: str) -> set[str]:
    out = set()
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            out.add(re.split(r"[\[<>=~! ]", line)[0].lower().replace("_", "-"))
    return out


def pins(path) -> dict[str, str]:
    return {n.lower().replace("_", "-"): v for n, v in PIN.findall(path.read_text())}


@pytest.mark.parametrize("src", deps.in_files(), ids=lambda p: str(p.relative_to(deps.ROOT)))
def test_every_package_an_in_file_names_is_pinned_in_its_compiled_file(src):
    compiled = src.with_suffix(".txt")
    assert compiled.exists(), f"run invoke deps.compile: {compiled} is missing"
    missing = names(src.read_text()) - set(pins(compiled))
    assert not missing, f"{compiled.name} lacks {missing}: run invoke deps.compile"
    text = compiled.read_text()
    assert "invoke deps.upgrade" in text and "--hash=" not in text and "--find-links" not in text


def test_the_host_venv_has_exactly_the_images_versions_of_shared_packages():
    host = pins(deps.ROOT / "requirements-dev.txt")
    for f in (deps.ROOT / "services").glob("*/requirements*.txt"):
        for name, version in pins(f).items():
            assert host.get(name, version) == version, f"{name}: {f} pins {version}, requirements-dev.txt {host[name]}"


def test_compiled_in_order_runtime_then_dev_extras_then_host():
    order = [str(p.relative_to(deps.ROOT)) for p in deps.in_files()]
    assert order[-1] == "requirements-dev.in"
    assert max(i for i, p in enumerate(order) if p.endswith("/requirements.in")) < \
        min(i for i, p in enumerate(order) if p.endswith("/requirements-dev.in"))


def test_upgrade_asks_pip_compile_for_the_newest_and_no_hashes(tmp_path):
    cmd = deps.compile_command(tmp_path / "requirements.in", upgrade=True)
    assert "--upgrade" in cmd and "--generate-hashes" not in cmd and "requirements.in" in cmd
    assert cmd[cmd.index("--output-file") + 1] == "requirements.txt"
    one = deps.compile_command(tmp_path / "requirements.in", upgrade=False, packages=("invoke",))
    assert "--upgrade" not in one and one[one.index("--upgrade-package") + 1] == "invoke"


def test_current_majors():
    host = pins(deps.ROOT / "requirements-dev.txt")
    majors = {n: int(host[n].split(".")[0]) for n in ("invoke", "kubernetes", "pytest", "watchdog")}
    assert majors["invoke"] >= 3 and majors["kubernetes"] >= 37 and majors["pytest"] >= 9 and majors["watchdog"] >= 7
    bakeoff = {"gunicorn", "gevent", "waitress", "uvicorn", "a2wsgi", "zope.interface"}
    assert not bakeoff & set(host), "the server bake-off packages left with issue 23"
