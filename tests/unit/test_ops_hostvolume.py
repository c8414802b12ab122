"""local-pv's directory on the local cluster's node: owned by the storage server, never via a link."""
from __future__ import annotations

import os
import stat

import pytest

from twotier.errors import UserError
from twotier.ops import hostvolume
from twotier.ops.render import render_stage
from twotier.settings import Settings


def test_the_storage_stage_asks_for_its_directory_owned_as_the_server_runs():
    objs = render_stage(Settings(), "storage", {"sto-img": "r/sto-img:1"})
    assert hostvolume.host_volumes(objs) == [("/var/lib/twotier/kubetestpv", 10001, 10001)]


def test_a_missing_directory_is_made_with_owner_and_mode(tmp_path):
    path = tmp_path / "a" / "kubetestpv"
    assert hostvolume.prepare(str(path), 10001, 10001) is True
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (10001, 10001, 0o770)
    assert hostvolume.prepare(str(path), 10001, 10001) is False  # idempotent


def test_a_root_owned_directory_the_kubelet_made_is_handed_over(tmp_path):
    path = tmp_path / "kubetestpv"
    path.mkdir(mode=0o755)
    os.chown(path, 0, 0)
    assert hostvolume.prepare(str(path), 10001, 10001) is True
    assert (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode)) == (10001, 0o770)


@pytest.mark.parametrize("where", ["itself", "parent"])
def test_a_planted_link_is_refused_not_followed(tmp_path, where):
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    if where == "itself":
        path = tmp_path / "kubetestpv"
        path.symlink_to(victim)
    else:
        (tmp_path / "data").symlink_to(victim)
        path = tmp_path / "data" / "kubetestpv"
    with pytest.raises(UserError, match="symbolic link"):
        hostvolume.prepare(str(path), 10001, 10001)
    assert victim.stat().st_uid == 0 and os.listdir(victim) == []
