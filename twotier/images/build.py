"""Container images: content-derived tags, ``docker build``/``docker push``, the local base image.

Every image of a stage is tagged with a hash of what goes into it (its Dockerfile, the files of its
build context after ``.dockerignore``, the build target, the base image name and, when Docker can
see it, the base image's id). Changing a file therefore changes the tag, so a redeploy really rolls
out, while a rebuild with nothing changed finds the image already present and does nothing.

The Python services (hello, storage, app) share one build context, ``services/`` (their Dockerfile
copies ``common/twotier_service`` and ``<svc>/``; ``services/.dockerignore`` allow-lists both): their
tag hashes only the files under ``services/<svc>/`` and ``services/common/`` of that context, so an
edit to one service never changes another's tag, and an edit to common/ changes all of them. The
loader keeps its own folder as context.

Image references are ``<registry>/<name>:<tag>``: ``registry`` and the names come from settings
(``twotier.registry``, ``twotier.images``). On a kind cluster that advertises no registry, ``push``
loads them into the nodes with ``kind load`` instead (``twotier.images.kindload``).

``base_image`` in settings picks the ``BASE_IMAGE`` build argument: ``""`` keeps each Dockerfile's
default (``python:3.12-slim``, pulled from a registry); ``local`` builds (once) and uses
``twotier-base:bookworm``, a Debian bookworm root filesystem made with debootstrap and imported
with ``docker import``, for machines that reach Debian's mirrors but no container registry; any
other value is used as given.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from twotier import shape
from twotier.errors import UserError
from twotier.shape import BUILD, ROOT, SERVICES

if TYPE_CHECKING:  # annotations only: the settings are handed in
    from twotier.settings import Settings

LOG_DIR = BUILD / "logs"

LOCAL_BASE = "twotier-base:bookworm"
LOCAL_BASE_SETTING = "local"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
#: packages of the local base. python3-venv brings ensurepip's bundled pip wheel, so a venv gets
#: its own pip without python3-pip (which would only add the PEP 668-locked system pip).
LOCAL_BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "curl")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
LOCAL_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "PIP_CERT": IMAGE_CA_BUNDLE,
    "SSL_CERT_FILE": IMAGE_CA_BUNDLE,
}
RECIPE_ENV = "TWOTIER_BASE_RECIPE"  # `docker import --change` takes ENV but not LABEL
CONTENT_LABEL = "io.twotier.content-hash"

Progress = Callable[[str], None]


def say(line: str) -> None:
    """Default progress: one line on stdout, flushed at once (builds take a while)."""
    print(line, flush=True)


@dataclass(frozen=True)
class Image:
    """One image of a stage: where it is built from and the reference it gets."""

    role: str  # hello | storage | app | loader
    name: str  # repository name, e.g. sto-img
    seed_name: str  # the name the k8s/ sources use for it
    context: Path  # build context (services/, or services/<dir> for the loader)
    tag: str
    ref: str  # <registry>/<name>:<tag>
    target: str = ""  # Dockerfile target ("" = the default, production)
    dockerfile: Path | None = None  # services/<dir>/Dockerfile (None: context/Dockerfile)
    sources: tuple[str, ...] = ()  # folders of the context the tag hashes (empty: all of it)

    @property
    def dockerfile_path(self) -> Path:
        return self.dockerfile or self.context / "Dockerfile"


# ---------------------------------------------------------------------------------------------
# docker CLI
# ---------------------------------------------------------------------------------------------

_DAEMON_DOWN = ("Cannot connect to the Docker daemon", "Is the docker daemon running", "docker.sock: connect")


def docker_bin() -> str:
    path = shutil.which("docker")
    if not path:
        raise UserError(
            "docker is not installed (no `docker` on PATH)",
            hint="install it: apt-get install -y docker.io, then start the engine: "
            "nohup dockerd >/var/log/dockerd.log 2>&1 &",
        )
    return path


def docker(args: list[str], *, input: bytes | None = None, timeout: float | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run ``docker ARGS``, capturing output; a stopped engine becomes a UserError."""
    proc = subprocess.run([docker_bin(), *args], input=input, capture_output=True, timeout=timeout)
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0 and any(s in err for s in _DAEMON_DOWN):
        raise UserError(
            "the Docker engine is not reachable: " + _last_lines(err, 1),
            hint="start it: nohup dockerd >/var/log/dockerd.log 2>&1 &  (or systemctl start docker), "
            "then check with: docker info",
        )
    if check and proc.returncode != 0:
        raise UserError(f"docker {args[0]} failed:\n{_last_lines(err or proc.stdout.decode(errors='replace'))}")
    return proc


def image_id(ref: str) -> str | None:
    """The local image id of REF, or None if Docker has no such image."""
    proc = docker(["image", "inspect", "--format", "{{.Id}}", ref], check=False)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def image_env(ref: str, name: str) -> str | None:
    """The value of environment variable NAME in the config of local image REF, if set."""
    proc = docker(["image", "inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", ref],
                  check=False)
    for line in proc.stdout.decode().splitlines() if proc.returncode == 0 else []:
        key, _, value = line.partition("=")
        if key == name:
            return value
    return None


def image_size(ref: str) -> int:
    """Size in bytes of a local image (all layers, as `docker image ls` shows it)."""
    return int(docker(["image", "inspect", "--format", "{{.Size}}", ref]).stdout.decode().strip())


def _last_lines(text: str, n: int = 25) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


# ---------------------------------------------------------------------------------------------
# .dockerignore and content hashes
# ---------------------------------------------------------------------------------------------

def dockerignore_patterns(context: Path) -> list[str]:
    """The patterns of CONTEXT/.dockerignore, as Docker reads them (comments and blanks dropped)."""
    path = context / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def context_files(context: Path) -> list[str]:
    """Relative paths of the files Docker sends as build context (after .dockerignore, with Docker's
    rules: docker-py's PatternMatcher, after moby's fileutils), sorted; .dockerignore itself (which
    Docker always sends, for the daemon to read) is not counted."""
    from docker.utils.build import PatternMatcher

    walked = PatternMatcher(dockerignore_patterns(context)).walk(str(context))
    return sorted(rel.replace(os.sep, "/") for rel in walked
                  if rel != ".dockerignore" and (not (context / rel).is_dir() or (context / rel).is_symlink()))


def source_files(context: Path, sources: tuple[str, ...] = ()) -> list[str]:
    """The context files (after .dockerignore) under the folders SOURCES (all when empty), sorted."""
    prefixes = tuple(s.strip("/") + "/" for s in sources)
    return [rel for rel in context_files(context)
            if not prefixes or rel.startswith(prefixes) or rel + "/" in prefixes]


def content_hash(context: Path, *, dockerfile: Path | None = None, base_image: str = "",
                 base_id: str | None = None, target: str = "", sources: tuple[str, ...] = ()) -> str:
    """Hash of everything that determines the image built from CONTEXT (hex sha256).

    With ``sources`` only the context files under those folders count: the files of a shared
    context that the Dockerfile does not copy must not change the tag.
    """
    dockerfile = dockerfile or context / "Dockerfile"
    h = hashlib.sha256()

    def feed(*chunks: bytes | str) -> None:
        for chunk in chunks:
            data = chunk.encode() if isinstance(chunk, str) else chunk
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)

    feed("dockerfile", dockerfile.read_bytes())
    feed("base", base_image, "base-id", base_id or "", "target", target)
    for rel in source_files(context, sources):
        path = context / rel
        if path.is_symlink():
            feed("link", rel, os.readlink(path))
        else:
            mode = path.stat().st_mode & 0o777
            feed("file", rel, oct(mode), path.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Planning: which images a stage needs, and their references
# ---------------------------------------------------------------------------------------------

def image_names(settings: Settings) -> dict[str, str]:
    """{role: image name}: the tutorial's names (system.yaml) unless twotier.images renames one."""
    return {role: settings.images.get(role) or name for role, name in shape.load().image_names.items()}


def resolve_base_image(settings: Settings) -> str:
    """The BASE_IMAGE build argument to pass, or "" to keep the Dockerfile's default."""
    return LOCAL_BASE if settings.base_image == LOCAL_BASE_SETTING else settings.base_image


def dockerfile_default_base(dockerfile: Path) -> str:
    match = re.search(r"^\s*ARG\s+BASE_IMAGE=(\S+)", dockerfile.read_text(), re.MULTILINE)
    return match.group(1) if match else ""


def dockerfile_stages(dockerfile: Path) -> set[str]:
    return set(re.findall(r"^\s*FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.MULTILINE | re.IGNORECASE))


def plan(settings: Settings, stage: str, *, target: str = "", inspect_base: bool = True) -> list[Image]:
    """The images STAGE needs, with their content-derived references (nothing is built).

    With ``inspect_base`` the base image's id (if Docker has it) goes into the hash; without
    Docker at all the tags are computed from files and names only.
    """
    system = shape.load()
    reg, names = settings.registry, image_names(settings)
    base_arg = resolve_base_image(settings)
    base_ids: dict[str, str | None] = {}
    images = []
    for role in system.stage(stage).images:
        folder = SERVICES / system.folder_of(role)
        dockerfile = folder / "Dockerfile"
        if role in system.tiers:  # the Python tiers copy the shared package: services/ is the context
            context, sources = SERVICES, (system.folder_of(role), system.common)
        else:
            context, sources = folder, ()
        if not dockerfile.exists():
            raise UserError(f"{dockerfile.relative_to(ROOT)} is missing",
                            hint="every service folder needs its Dockerfile (see k8s/README.md)")
        base = base_arg or dockerfile_default_base(dockerfile)
        if base not in base_ids:
            base_ids[base] = _base_id_or_none(base) if inspect_base else None
        # a target the Dockerfile lacks (the loader has no dev flavour) means its only one
        img_target = target if target in dockerfile_stages(dockerfile) else ""
        digest = content_hash(context, dockerfile=dockerfile, base_image=base,
                              base_id=base_ids[base], target=img_target, sources=sources)
        tag = digest[:12] + (f"-{img_target}" if img_target else "")
        name = names[role]
        images.append(Image(role=role, name=name, seed_name=system.image_names[role], context=context,
                            tag=tag, ref=f"{reg}/{name}:{tag}", target=img_target,
                            dockerfile=dockerfile, sources=sources))
    if target and not any(img.target for img in images):
        raise UserError(f"no Dockerfile of stage {stage} has a target {target!r}",
                        hint="use '' (production) or dev")
    return images


def _base_id_or_none(base: str) -> str | None:
    if not shutil.which("docker"):
        return None
    try:
        return image_id(base)
    except UserError:  # engine down: plan from files only
        return None


def image_map(images: Iterable[Image]) -> dict[str, str]:
    """{seed image name used in k8s/: full reference} - what manifests.render_stage takes."""
    return {img.seed_name: img.ref for img in images}


# ---------------------------------------------------------------------------------------------
# Build and push
# ---------------------------------------------------------------------------------------------

def build(settings: Settings, stage: str, *, target: str = "", progress: Progress = say) -> list[Image]:
    """Build every image of STAGE that Docker does not already have; return them all."""
    docker(["version", "--format", "{{.Server.Version}}"])  # fails clearly if no engine
    if settings.base_image == LOCAL_BASE_SETTING:
        ensure_local_base(progress=progress)
    images = plan(settings, stage, target=target)
    base_arg = resolve_base_image(settings)
    for img in images:
        if image_id(img.ref):
            progress(f"{img.ref}: up to date")
            continue
        _build_one(img, base_arg, img.target, progress)
    return images


def _build_one(img: Image, base_arg: str, target: str, progress: Progress) -> None:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"build-{img.name}.log"
    args = ["build", "--tag", img.ref, "--label", f"{CONTENT_LABEL}={img.tag}",
            "--file", str(img.dockerfile_path)]
    if base_arg:
        args += ["--build-arg", f"BASE_IMAGE={base_arg}"]
    if target:
        args += ["--target", target]
    args.append(str(img.context))
    progress(f"{img.ref}: building (log: {log.relative_to(ROOT)})")
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.run([docker_bin(), *args], stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        if any(s in text for s in _DAEMON_DOWN):
            docker(["info"])  # raises the engine-down error
        hint = f"full log: {log}"
        if re.search(r"pull access denied|failed to resolve|manifest unknown|dial tcp|no such host|"
                     r"TLS handshake|i/o timeout|toomanyrequests", text):
            hint = ("the base image could not be pulled; without a reachable registry set "
                    "base_image: local (invoke.yaml) or INVOKE_TWOTIER_BASE_IMAGE=local, which builds "
                    "a Debian base with debootstrap. " + hint)
        raise UserError(f"building {img.name} from {img.dockerfile_path.relative_to(ROOT)} failed:\n"
                        f"{_last_lines(text)}", hint=hint)
    progress(f"{img.ref}: built in {time.monotonic() - start:.1f}s")


def push(settings: Settings, stage: str, *, target: str = "", progress: Progress = say,
         cluster=None) -> list[Image]:
    """Build (if needed) and push every image of STAGE to the registry; on a kind cluster that
    advertises no registry (CLUSTER, default the configured one), `kind load` them into its nodes
    instead (twotier.images.kindload)."""
    from twotier.images import kindload

    images = build(settings, stage, target=target, progress=progress)
    kind = kindload.detect(cluster) if cluster is not None else kindload.detect_for(settings)
    if kind is not None and kind.loads:
        progress(f"kind cluster {kind.name} advertises no registry: kind load instead of docker push")
        kindload.load(kind, [img.ref for img in images], progress=progress)
        return images
    for img in images:
        start = time.monotonic()
        proc = docker(["push", img.ref], check=False)
        if proc.returncode != 0:
            text = (proc.stdout + proc.stderr).decode(errors="replace")
            raise UserError(
                f"pushing {img.ref} was refused:\n{_last_lines(text, 10)}",
                hint=f"is the registry {settings.registry} running and writable? `invoke cluster.up` "
                "starts the local one; for another registry run `docker login` and set registry "
                "in invoke.yaml (or INVOKE_TWOTIER_REGISTRY).",
            )
        progress(f"{img.ref}: pushed in {time.monotonic() - start:.1f}s")
    return images


# ---------------------------------------------------------------------------------------------
# The local base image (debootstrap + docker import)
# ---------------------------------------------------------------------------------------------

def local_base_recipe() -> str:
    """A short hash of how the local base is made; a changed recipe rebuilds it."""
    ca = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.exists() else b""
    text = "|".join(["bookworm", "minbase", *LOCAL_BASE_PACKAGES, *sorted(f"{k}={v}" for k, v in
                                                                          LOCAL_BASE_ENV.items())])
    return hashlib.sha256(text.encode() + ca).hexdigest()[:16]


def ensure_local_base(*, progress: Progress = say, force: bool = False,
                      mirror: str = DEBIAN_MIRROR) -> str:
    """Build ``twotier-base:bookworm`` unless Docker already has it from the same recipe."""
    recipe = local_base_recipe()
    if not force and image_id(LOCAL_BASE) and image_env(LOCAL_BASE, RECIPE_ENV) == recipe:
        progress(f"{LOCAL_BASE}: up to date")
        return LOCAL_BASE
    debootstrap = shutil.which("debootstrap")
    if not debootstrap:
        raise UserError("debootstrap is not installed (needed to build the local base image)",
                        hint="apt-get install -y debootstrap, or set base_image to an image you can pull")
    if os.geteuid() != 0:
        raise UserError("building the local base image needs root (debootstrap creates device files)",
                        hint="run `invoke base-image` as root, or set base_image to an image you can pull")
    root = Path(tempfile.mkdtemp(prefix="twotier-base-", dir="/var/tmp"))
    start = time.monotonic()
    try:
        progress(f"{LOCAL_BASE}: debootstrap bookworm from {mirror} (about a minute)")
        cmd = [debootstrap, "--variant=minbase", "--include=" + ",".join(LOCAL_BASE_PACKAGES),
               "bookworm", str(root), mirror]
        _run_streaming_phases(cmd, progress)
        if HOST_CA_BUNDLE.exists():  # trust what the host trusts (e.g. an intercepting proxy's CA)
            shutil.copyfile(HOST_CA_BUNDLE, root / IMAGE_CA_BUNDLE.lstrip("/"))
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        changes = [f"ENV {k}={v}" for k, v in LOCAL_BASE_ENV.items()]
        changes += [f"ENV {RECIPE_ENV}={recipe}", 'CMD ["/bin/bash"]']
        progress(f"{LOCAL_BASE}: docker import")
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        args = [docker_bin(), "import"]
        for change in changes:
            args += ["--change", change]
        imp = subprocess.run([*args, "-", LOCAL_BASE], stdin=tar.stdout, capture_output=True)
        tar.stdout.close()
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise UserError(f"docker import of the local base failed:\n"
                            f"{_last_lines(imp.stderr.decode(errors='replace'))}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    progress(f"{LOCAL_BASE}: ready in {time.monotonic() - start:.0f}s "
             f"({image_size(LOCAL_BASE) / 1e6:.0f} MB)")
    return LOCAL_BASE


def _run_streaming_phases(cmd: list[str], progress: Progress) -> None:
    """Run CMD, showing each new phase of its `I: <Phase> ...` lines; fail with its last lines."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    seen: set[str] = set()
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-25:]
        match = re.match(r"I: (\w+)", line)
        if match and match.group(1) not in seen:
            seen.add(match.group(1))
            progress(f"  {line}")
    if proc.wait() != 0:
        raise UserError("debootstrap failed:\n" + "\n".join(tail),
                        hint=f"check that {DEBIAN_MIRROR} is reachable (apt-get update works?)")
