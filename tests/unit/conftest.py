"""Unit tests never read this machine's settings: not its twotier.local.yaml (./bootstrap.sh
writes one), nor the INVOKE_TWOTIER_* variables of the shell that runs them (`eval "$(invoke
cluster.env --provider kind)"` sets some; `tilt ci` runs the unit tests in that environment)."""
import os

import pytest


@pytest.fixture(autouse=True)
def no_machine_settings(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TWOTIER_LOCAL_SETTINGS", str(tmp_path_factory.mktemp("machine") / "twotier.local.yaml"))
    for name in [n for n in os.environ if n.startswith("INVOKE_TWOTIER_")]:
        monkeypatch.delenv(name)
