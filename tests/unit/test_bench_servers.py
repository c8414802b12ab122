"""The server benchmark's "before" candidate: the project's services/ at an older revision."""
from __future__ import annotations

import pytest

from twotier.bench import servers as serverbench
from twotier.dev.servers import STORAGE
from twotier.errors import UserError
from twotier.shape import ROOT


def test_the_tree_of_a_revision_is_extracted_and_run_from_its_own_code(tmp_path):
    tree = serverbench.before_tree("HEAD", tmp_path / "before")
    assert (tree / "services" / "storage" / "storage_api" / "__init__.py").is_file()
    assert (tree / "services" / "common" / "twotier_service" / "serving.py").is_file()
    server = serverbench.Server(serverbench.BEFORE, STORAGE, {}, tmp_path, code=tree)
    assert server.directory == tree / STORAGE.directory.relative_to(ROOT)
    assert server.env["PYTHONPATH"] == str(tree / "services" / "common")
    assert serverbench._argv(serverbench.BEFORE, "storage_api", 5000)[1:] == ["-m", "storage_api"]


def test_an_unknown_revision_says_what_to_give():
    with pytest.raises(UserError, match="cannot read services/ at revision 'no-such-rev'") as err:
        serverbench.before_tree("no-such-rev", ROOT / "build" / "never")
    assert "a48ed72" in err.value.hint
