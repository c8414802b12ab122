"""The e2e module order switch (tests/conftest.py) that CI's second release runs with: reverse or a
seeded shuffle of the e2e modules, each module's tests kept in order, every other test in place."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import conftest

MODULES = [str(conftest.E2E_DIR / f"test_{name}.py") for name in "abcdefgh"]


def test_file_and_reverse():
    assert conftest.e2e_module_order(MODULES, "file") == MODULES
    assert conftest.e2e_module_order(MODULES, "reverse") == MODULES[::-1]


def test_a_seed_gives_the_same_permutation_every_time_and_another_seed_another():
    first = conftest.e2e_module_order(MODULES, "random:1234")
    assert sorted(first) == sorted(MODULES) and first != MODULES
    assert conftest.e2e_module_order(MODULES, "random:1234") == first  # replayable
    assert conftest.e2e_module_order(MODULES, "random:99") != first


def test_an_unknown_order_is_a_usage_error():
    with pytest.raises(pytest.UsageError, match="use file, reverse, random or random:SEED"):
        conftest.e2e_module_order(MODULES, "sideways")


def item(path: str, name: str):
    return SimpleNamespace(path=Path(path), name=name)


def test_modules_move_together_and_other_tiers_keep_their_places():
    unit = item(str(conftest.ROOT / "tests" / "unit" / "test_x.py"), "u")
    a1, a2 = item(MODULES[0], "a1"), item(MODULES[0], "a2")
    b1 = item(MODULES[1], "b1")
    c1, c2 = item(MODULES[2], "c1"), item(MODULES[2], "c2")
    items = [unit, a1, a2, b1, c1, c2]
    config = SimpleNamespace(_e2e_order="reverse")
    conftest.pytest_collection_modifyitems(None, config, items)
    assert [i.name for i in items] == ["u", "c1", "c2", "b1", "a1", "a2"]


def test_the_order_comes_from_the_option_then_the_environment_and_a_bare_random_gets_a_seed(monkeypatch):
    def configured(option, env):
        if env is None:
            monkeypatch.delenv("TWOTIER_E2E_ORDER", raising=False)
        else:
            monkeypatch.setenv("TWOTIER_E2E_ORDER", env)
        config = SimpleNamespace(getoption=lambda name: option)
        conftest.pytest_configure(config)
        return config._e2e_order

    assert configured(None, None) == "file"
    assert configured(None, "reverse") == "reverse"
    assert configured("random:7", "reverse") == "random:7"  # the option wins
    seeded = configured("random", None)
    kind, _, seed = seeded.partition(":")
    assert kind == "random" and seed.isdigit()  # shown in the header, so the order can be replayed
    assert conftest.pytest_report_header(SimpleNamespace(_e2e_order=seeded)) == f"e2e module order: {seeded}"
