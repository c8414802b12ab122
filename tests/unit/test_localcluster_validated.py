"""The README's "Last validated on" line is written from the e2e records, not by hand."""
from __future__ import annotations

import pytest

from localcluster import validated, versions

INFO = {"kubeletVersion": "v1.37.2", "containerRuntimeVersion": "containerd://v2.4.2",
        "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1"}


def rec(tmp_path, version, runtime="v2.4.2"):
    return validated.record(version, {**INFO, "kubeletVersion": version,
                                      "containerRuntimeVersion": f"containerd://{runtime.lstrip('v')}"}, records=tmp_path)


def test_the_line_names_the_default_and_the_oldest_supported_release(tmp_path):
    base = versions.defaults()
    default = base["KUBERNETES_VERSION"]
    oldest = base["OLDEST_KUBERNETES_MINOR"]
    for v in (default, f"v{oldest}.3", f"v{oldest}.4", "v1.36.3"):
        rec(tmp_path, v)
    chosen = validated.chosen(validated.load(tmp_path))
    assert [r["kubernetes"] for r in chosen] == [default, f"v{oldest}.4"]  # not 1.36, not an older patch
    text = validated.line(chosen)
    assert text.startswith(f"Last validated on **Kubernetes {default}** (containerd v2.4.2, etcd ")
    assert f" and **Kubernetes v{oldest}.4** (" in text and "by CI on the local cluster (Debian 12, cgroup v" in text
    assert "\n" not in text


def test_no_records_is_an_error_not_a_stale_line(tmp_path):
    with pytest.raises(SystemExit, match="no validation records"):
        validated.line(validated.chosen(validated.load(tmp_path)))


def test_write_replaces_the_wrapped_line_and_nothing_else(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\nintro\n\nLast validated on **Kubernetes v1.34.4** (the local cluster: containerd v2.2.9,\n"
                      "CoreDNS v1.12.4; Debian 12, cgroup v1), 2026-12-01.\n\n## Contents\n")
    assert validated.write(readme, "Last validated on X.")
    assert readme.read_text() == "# t\n\nintro\n\nLast validated on X.\n\n## Contents\n"
    assert not validated.write(readme, "Last validated on X.")


def test_check_fails_when_the_readme_says_something_else(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(validated, "RECORDS", tmp_path / "records")
    rec(tmp_path / "records", versions.defaults()["KUBERNETES_VERSION"])
    readme = tmp_path / "README.md"
    readme.write_text("Last validated on something else.\n")
    assert validated.main(["--check", str(readme)]) == 1
    assert validated.main(["--write", str(readme)]) == 0
    assert validated.main(["--check", str(readme)]) == 0
