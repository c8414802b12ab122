"""`eval "$(invoke cluster.env)"` sets KUBECONFIG and puts invoke, kubectl and tilt on PATH."""
import subprocess
import sys
from pathlib import Path

from localcluster import layout as L
from twotier.dev import shellenv

ROOT = Path(__file__).resolve().parents[2]


def built(cache: Path, component: str, name: str) -> Path:
    path = cache / "bin" / f"{component}-{L.versions()[component.upper() + '_VERSION']}" / name
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\necho " + name + "\n")
    path.chmod(0o755)
    (path.parent / ".complete").touch()
    return path


def test_lines_put_the_pinned_tools_first_and_are_idempotent(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "CACHE", tmp_path)
    kubectl, tilt = built(tmp_path, "kubernetes", "kubectl"), built(tmp_path, "tilt", "tilt")
    lines = shellenv.env_lines({"PATH": "/usr/bin:/bin"})
    assert lines[0] == f"export KUBECONFIG={L.KUBECONFIG}"
    path = lines[1].removeprefix("export PATH=").strip("'")
    assert path.split(":")[-4:] == [str(kubectl.parent), str(tilt.parent), "/usr/bin", "/bin"]
    assert str(Path(sys.prefix) / "bin") in path.split(":")  # the venv's invoke
    again = shellenv.env_lines({"PATH": path})
    assert again == lines  # eval'd twice: the same PATH, no duplicates


def test_missing_builds_are_said_in_comments(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "CACHE", tmp_path)
    lines = shellenv.env_lines({"PATH": "/bin"})
    assert "# kubectl is not built yet: `invoke cluster.up` builds it" in lines
    assert "# tilt builds from source on its first use (once, about 6 min on 2 cores)" in lines
    path = lines[1].removeprefix("export PATH=").strip("'").split(":")
    assert str(L.HERE / "bin") in path and (L.HERE / "bin" / "tilt").stat().st_mode & 0o111  # the first-use tilt


def test_eval_in_a_bare_shell_finds_invoke_kubectl_and_tilt(tmp_path):
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "TWOTIER_CACHE": str(tmp_path)}
    built(tmp_path, "kubernetes", "kubectl")
    built(tmp_path, "tilt", "tilt")
    script = (f'eval "$({sys.executable} -m invoke cluster.env)" && echo "$KUBECONFIG" && '
              'command -v invoke && kubectl && tilt')
    res = subprocess.run(["bash", "--noprofile", "--norc", "-c", script], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[0] == str(L.KUBECONFIG) and out[1].endswith("/bin/invoke") and out[2:] == ["kubectl", "tilt"]
