"""The e2e tier keeps a user's stored items: set aside before, put back after (tests/e2e/conftest.py)."""
import pytest

from tests.e2e import conftest as e2e


@pytest.fixture
def volume(tmp_path, monkeypatch):
    pv = tmp_path / "kubetestpv"
    monkeypatch.setattr(e2e, "PV_DIR", pv)
    monkeypatch.setattr(e2e, "KEPT", tmp_path / "kubetestpv.kept-by-e2e")
    return pv


def test_items_are_set_aside_and_put_back_with_their_owner(volume):
    volume.mkdir()
    for name in ("0", "1", "2"):
        (volume / name).touch()
    inode = (volume / "1").stat().st_ino
    assert e2e.set_aside() == ["0", "1", "2"]
    assert list(volume.iterdir()) == []            # the tests start on an empty volume
    (volume / "3").touch()                         # what a test left behind
    assert e2e.empty_volume() == ["3"]
    (volume / "FromFirst").touch()
    assert e2e.put_back() == ["0", "1", "2"]
    assert sorted(p.name for p in volume.iterdir()) == ["0", "1", "2"]
    assert (volume / "1").stat().st_ino == inode   # moved, not copied: owner and mode unchanged
    assert not e2e.KEPT.exists()


def test_an_interrupted_run_loses_nothing(volume):
    volume.mkdir()
    (volume / "mine").touch()
    e2e.set_aside()
    (volume / "later").touch()                     # stored after the interrupted run
    (volume / "mine").touch()                      # the same item again
    assert e2e.set_aside() == ["later"]            # the one already kept stays kept
    assert e2e.put_back() == ["later", "mine"]


def test_no_volume_directory_yet(volume, monkeypatch):
    monkeypatch.setattr(e2e, "KEPT", volume.parent / "absent" / "kept")  # its parent is missing too
    assert e2e.set_aside() == []
    assert e2e.put_back() == []
    assert not e2e.KEPT.exists()
