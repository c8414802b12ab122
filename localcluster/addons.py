"""Images the cluster needs without a registry (pause, CoreDNS) and the addons it runs."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
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
    out = L.CACHE / "bin" / f"pause-{L.versions()['PAUSE_VERSION']}" / "pause"
    if out.exists():
        return out
    src = Path(subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"], capture_output=True,
                              text=True, cwd=L.CACHE / "src" / f"kubernetes-{L.versions()['KUBERNETES_VERSION']}"
                              ).stdout.strip()) / "build" / "pause" / "linux" / "pause.c"
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{L.versions()['PAUSE_VERSION']}-twotier",
          "-o", str(out), str(src)],
         "compiling pause.c")
    _run(["strip", str(out)], "strip pause")
    return out


def ensure_images(address: Path = L.CONTAINERD_SOCK) -> None:
    import_scratch_image(L.pause_image(), {"/pause": pause_binary()}, ["/pause"], address)
    import_scratch_image(coredns_image(), {"/coredns": L.binary("coredns")}, ["/coredns"], address)


def coredns_image() -> str:
    return f"twotier.local/coredns:{L.versions()['COREDNS_VERSION']}"


def manifests() -> str:
    text = (ADDONS / "coredns.yaml").read_text()
    text = text.replace("__DNS_IP__", L.DNS_IP).replace("__DNS_DOMAIN__", L.DNS_DOMAIN)
    text = text.replace("__IMAGE__", coredns_image())
    from localcluster.configs import local_registry_hosting
    return text + "---\n" + local_registry_hosting()


# ------------------------------------------------------------------------------------------ built addons
#
# A cluster addon built from source: one declaration (Addon) names its Go module and main package,
# the versions.env line that pins it, and its manifest localcluster/addons/<name>.yaml. cluster.up
# builds the binary once (build-binaries.sh go-tool, cached by version in $CACHE/bin/<name>-<version>
# like every other component), packs it into an image pushed to the local registry (so every node
# pulls it the way it pulls the project's images), applies the manifest and waits for the workload.

@dataclass(frozen=True)
class Addon:
    name: str                  # binary, image and manifest name
    version_key: str           # its line in versions.env
    module: str                # the Go module the proxy serves
    package: str               # its main package
    workload: tuple[str, str]  # (kind, name) in kube-system that must become available
    ldflags: str = ""          # "{version}" is replaced by the pinned version
    cold_seconds: int = 120    # measured cold build on 2 cores, only a guide for the person waiting
    # Host programs the addon executes (iptables, ipset): copied into the image with the shared
    # libraries ldd names, plus host directories (plugins they load) and symlinks (name, target).
    host_tools: tuple[tuple[str, str], ...] = ()   # (host executable, apt package that has it)
    host_dirs: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()

    @property
    def version(self) -> str:
        return L.versions()[self.version_key]

    @property
    def bin_dir(self) -> Path:
        return L.CACHE / "bin" / f"{self.name}-{self.version}"

    @property
    def binary(self) -> Path:
        return self.bin_dir / self.name

    @property
    def image(self) -> str:
        return self.image_at(L.REGISTRY_HOST)

    def image_at(self, registry: str) -> str:
        return f"{registry}/twotier-addons/{self.name}:{self.version}"

    def manifest(self, registry: str = L.REGISTRY_HOST) -> str:
        return (ADDONS / f"{self.name}.yaml").read_text().replace("__IMAGE__", self.image_at(registry))


BUILT_ADDONS = (
    # Resource metrics (kubectl top, HorizontalPodAutoscaler); cold build 4m46s measured on 2 cores.
    Addon("metrics-server", "METRICS_SERVER_VERSION", "sigs.k8s.io/metrics-server",
          "sigs.k8s.io/metrics-server/cmd/metrics-server", ("Deployment", "metrics-server"),
          ldflags="-X k8s.io/client-go/pkg/version.gitVersion={version} "
                  "-X k8s.io/component-base/version.gitVersion={version}",
          cold_seconds=286),
    # NetworkPolicy enforcement: kube-router's firewall only (no routing, no service proxy), with
    # iptables (nft backend, as kube-proxy here) and ipset. kube-network-policies, SIG Network's
    # reference, cannot run on this kernel: its nftables `queue` rule needs CONFIG_NFT_QUEUE, which is
    # not set (adding the rule fails with "netlink receive: no such file or directory").
    Addon("kube-router", "KUBE_ROUTER_VERSION", "github.com/cloudnativelabs/kube-router/v2",
          "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router", ("DaemonSet", "kube-router"),
          ldflags="-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version={version}",
          cold_seconds=216,  # 3m36s measured
          host_tools=(("/usr/sbin/xtables-nft-multi", "iptables"), ("/usr/sbin/ipset", "ipset")),
          host_dirs=("/usr/lib/x86_64-linux-gnu/xtables",),
          links=tuple((f"/usr/sbin/{n}", "xtables-nft-multi") for n in (
              "iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"))),
)
POLICY_ADDONS = tuple(a for a in BUILT_ADDONS if a.name == "kube-router")


def addon_log(addon: Addon) -> Path:
    return L.CACHE / "logs" / f"build-{addon.name}-{addon.version}.log"


def ensure_addon_binaries(progress=print, addons=BUILT_ADDONS, script: Path = L.BUILD_SCRIPT) -> None:
    """Build each addon's binary once, under the build lock, one line before and one after."""
    todo = [a for a in addons if not (a.bin_dir / ".complete").exists()]
    if not todo:
        return
    from localcluster import build, lock

    env = build.go_env()
    with lock.hold(lock.build_lock_path(), "build", progress=progress) as fd:
        for a in [a for a in todo if not (a.bin_dir / ".complete").exists()]:
            log = addon_log(a)
            log.parent.mkdir(parents=True, exist_ok=True)
            progress(f"addon {a.name} {a.version}: building from source, once (cold: about "
                     f"{build.rough(a.cold_seconds)} on 2 cores; full log: {log})")
            start = time.monotonic()
            with log.open("w") as out:
                code = subprocess.run(
                    ["bash", str(script), "go-tool", a.name, a.version, a.module, a.package,
                     a.ldflags.format(version=a.version)],
                    stdout=out, stderr=subprocess.STDOUT, env={**env, "TWOTIER_BUILD_LOCK_FD": str(fd)},
                    pass_fds=(fd,)).returncode
            if code != 0 or not a.binary.exists():
                tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-12:])
                raise UserError(f"building addon {a.name} {a.version} failed (exit {code}); its log {log} ends:\n    {tail}",
                                hint="the Go module proxy must be reachable; run the command again to retry")
            progress(f"addon {a.name} {a.version}: built in {build.rough(time.monotonic() - start)}")


def registry_has(image: str) -> bool:
    """Does the local registry hold this image (repository:tag)?"""
    host, rest = image.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}", method="HEAD", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return False
        raise


def _libraries(executable: str) -> list[str]:
    """The shared libraries ldd says the executable loads (absolute paths), the loader included."""
    out = subprocess.run(["ldd", executable], capture_output=True, text=True).stdout
    return [w for line in out.splitlines() for w in line.split() if w.startswith("/")]


def image_root(addon: Addon, root: Path) -> None:
    """The image's file tree: /<name> (the static binary), the host tools and what they need."""
    shutil.copy2(addon.binary, root / addon.name)
    missing = [pkg for tool, pkg in addon.host_tools if not Path(tool).is_file()]
    if missing:
        raise UserError(f"addon {addon.name} runs host tools that are not installed",
                        hint="install them: apt-get install -y " + " ".join(sorted(set(missing))))
    files = {f for tool, _ in addon.host_tools for f in (tool, *_libraries(tool))}
    for f in sorted(files):
        dest = root / f.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)  # follows links: the soname path gets the library itself
    for d in addon.host_dirs:
        shutil.copytree(d, root / d.lstrip("/"), dirs_exist_ok=True)
    for name, target in addon.links:
        (root / name.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / name.lstrip("/")).symlink_to(target)


def dockerfile(addon: Addon) -> str:
    # Without host tools nothing needs root inside: the image runs as nobody (the manifest may say more).
    user = "" if addon.host_tools else "USER 65534:65534\n"
    return (f"FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            f"{user}ENTRYPOINT [\"/{addon.name}\"]\n")


def ensure_addon_images(progress=print, addons=BUILT_ADDONS, registry: str = L.REGISTRY_HOST) -> None:
    """Each addon's image in REGISTRY (the local cluster's, or the kind provider's): FROM scratch with
    the static binary, pushed once."""
    for a in addons:
        image = a.image_at(registry)
        if registry_has(image):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "rootfs").mkdir()
            image_root(a, Path(tmp) / "rootfs")
            (Path(tmp) / "Dockerfile").write_text(dockerfile(a))
            _run(["docker", "build", "-q", "-t", image, tmp], f"docker build of {image}",
                 env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin"})
        _run(["docker", "push", "-q", image], f"docker push of {image}")
        progress(f"addon {a.name} {a.version}: image {image} pushed to {registry}")


def install(apply, available, registry: str = L.REGISTRY_HOST, progress=print, timeout: float = 120,
            addons=BUILT_ADDONS) -> None:
    """Every addon on a cluster: its image in REGISTRY, its manifest through APPLY(text), then
    AVAILABLE(addon) awaited. The local cluster and the kind provider differ only in those three."""
    from localcluster import procs

    ensure_addon_binaries(progress=progress, addons=addons)
    ensure_addon_images(progress, addons, registry)
    for a in addons:
        progress(f"applying addon {a.name} {a.version}")
        apply(a.manifest(registry))
    for a in addons:
        procs.wait_for(lambda a=a: available(a), f"addon {a.name} available", timeout, progress)


def workload_available(kind: str, obj: dict) -> bool:
    """Has this Deployment or DaemonSet (KIND, OBJ as the API serves it) rolled out its current spec,
    every replica ready?"""
    st, meta = obj.get("status") or {}, obj["metadata"]
    if st.get("observedGeneration", 0) < meta.get("generation", 1):
        return False
    if kind == "DaemonSet":
        want = st.get("desiredNumberScheduled", 0)
        return want > 0 and st.get("numberReady", 0) == want and st.get("updatedNumberScheduled", 0) == want
    want = obj["spec"].get("replicas", 1)
    return st.get("updatedReplicas", 0) == want and st.get("availableReplicas", 0) >= want


IPSET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-", "TMP-", "inet6:KUBE-SRC-", "inet6:KUBE-DST-")  # kube-router's


def remove_ipsets(prefixes=IPSET_PREFIXES) -> int:
    """Destroy the host's ipsets that the policy addon made (cluster.down, after the iptables rules
    that use them); nodes 2..N lose theirs with their network namespace. Returns how many."""
    if not shutil.which("ipset"):
        return 0
    names = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout.split()
    gone = 0
    for name in (n for n in names if n.startswith(prefixes)):
        gone += subprocess.run(["ipset", "destroy", name], capture_output=True).returncode == 0
    return gone
