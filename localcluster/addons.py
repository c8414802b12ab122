"""Images the cluster needs without a registry (pause, CoreDNS) and the addons it runs."""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from localcluster import layout as L
from localcluster.errors import ClusterError as UserError

ADDONS = L.HERE / "addons"


def _run(argv: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise UserError(f"{what} failed: {(res.stderr or res.stdout).strip()[-800:]}")
    return res


def ctr(*args: str, address: Path = L.CONTAINERD_SOCK) -> list[str]:
    return [str(L.binary("containerd", "ctr")), "--address", str(address), "-n", "k8s.io", *args]


def has_image(ref: str, address: Path = L.CONTAINERD_SOCK) -> bool:
    res = subprocess.run(ctr("images", "ls", "-q", f"name=={ref}", address=address), capture_output=True, text=True)
    return ref in res.stdout.split()


def import_scratch_image(ref: str, files: dict[str, Path], entrypoint: list[str],
                         address: Path = L.CONTAINERD_SOCK) -> None:
    """Build a FROM-scratch image holding `files` with docker and import it into containerd."""
    if has_image(ref, address):
        return
    with tempfile.TemporaryDirectory() as tmp:
        copies = []
        for dest, src in files.items():
            (Path(tmp) / Path(dest).name).write_bytes(Path(src).read_bytes())
            (Path(tmp) / Path(dest).name).chmod(0o755)
            copies.append(f"COPY {Path(dest).name} {dest}")
        entry = ", ".join(f'"{a}"' for a in entrypoint)
        (Path(tmp) / "Dockerfile").write_text("FROM scratch\n" + "\n".join(copies) + f"\nENTRYPOINT [{entry}]\n")
        _run(["docker", "build", "-q", "-t", ref, tmp], f"docker build of {ref}",
             env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin"})
    save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
    _run(ctr("images", "import", "--all-platforms", "-", address=address), f"import of {ref} into containerd",
         stdin=save.stdout)
    save.wait()


def pause_binary() -> Path:
    """Compile upstream's build/pause/linux/pause.c (from the kubernetes module) statically."""
    out = L.CACHE / "bin" / "pause" / "pause"
    if out.exists():
        return out
    src = Path(subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"], capture_output=True,
                              text=True, cwd=L.CACHE / "src" / f"kubernetes-{L.versions()['KUBERNETES_VERSION']}"
                              ).stdout.strip()) / "build" / "pause" / "linux" / "pause.c"
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(["gcc", "-Os", "-Wall", "-Werror", "-static", "-DVERSION=v3.10-twotier", "-o", str(out), str(src)],
         "compiling pause.c")
    _run(["strip", str(out)], "strip pause")
    return out


def ensure_images(address: Path = L.CONTAINERD_SOCK) -> None:
    import_scratch_image(L.PAUSE_IMAGE, {"/pause": pause_binary()}, ["/pause"], address)
    import_scratch_image(coredns_image(), {"/coredns": L.binary("coredns")}, ["/coredns"], address)


def coredns_image() -> str:
    return f"twotier.local/coredns:{L.versions()['COREDNS_VERSION']}"


def manifests() -> str:
    text = (ADDONS / "coredns.yaml").read_text()
    text = text.replace("__DNS_IP__", L.DNS_IP).replace("__DNS_DOMAIN__", L.DNS_DOMAIN)
    text = text.replace("__IMAGE__", coredns_image())
    from localcluster.configs import local_registry_hosting
    return text + "---\n" + local_registry_hosting()
