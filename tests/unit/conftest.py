"""Unit tests never read this machine's twotier.local.yaml (./bootstrap.sh writes one)."""
import pytest


@pytest.fixture(autouse=True)
def no_machine_settings(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TWOTIER_LOCAL_SETTINGS", str(tmp_path_factory.mktemp("machine") / "twotier.local.yaml"))
