"""Before deploy changes anything: are the images it names in their registry?

A deploy after a code change without `invoke build push` names content-derived tags nobody pushed;
the rollout would stall in ImagePullBackOff. Asking the registry first (Docker Registry HTTP API
v2: ``HEAD /v2/<name>/manifests/<tag>``) turns that into one clear message before the cluster is
touched. Only a definite "not found" counts: a registry that wants credentials, can't be reached
from here, or answers oddly is left to the cluster (the rollout waiter still fails fast on pull
errors).
"""
from __future__ import annotations

import urllib.error
import urllib.request

from twotier.kube.objects import containers

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


def parse_ref(ref: str) -> tuple[str, str, str]:
    """(name with its registry host, tag, digest) of an image reference; "" for a part it lacks."""
    name, _, digest = ref.partition("@")
    slash, colon = name.rfind("/"), name.rfind(":")
    return (name[:colon], name[colon + 1:], digest) if colon > slash else (name, "", digest)


def split_image(ref: str) -> tuple[str, str, str] | None:
    """(registry host, repository, tag or digest) for a ref with an explicit registry, else None."""
    name, tag, digest = parse_ref(ref)
    host, _, repo = name.partition("/")
    if not repo or not ("." in host or ":" in host or host == "localhost"):
        return None  # no registry, or Docker Hub shorthand (user/name): not checked
    return host, repo, digest or tag or "latest"


def manifest_url(host: str, repo: str, ref_part: str) -> str:
    scheme = "http" if host.split(":")[0] in LOOPBACK or host.startswith("[::1]") else "https"
    return f"{scheme}://{host}/v2/{repo}/manifests/{ref_part}"


def image_present(ref: str, timeout: float = 3.0) -> bool | None:
    """True/False when the registry says so; None when it can't tell us."""
    parts = split_image(ref)
    if parts is None:
        return None
    req = urllib.request.Request(manifest_url(*parts), method="HEAD",
                                 headers={"Accept": MANIFEST_TYPES})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except urllib.error.HTTPError as err:
        return False if err.code == 404 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def images_of(objs: list[dict]) -> list[str]:
    """Every container image the objects run, in order, without repeats."""
    return list(dict.fromkeys(c["image"] for obj in objs for c in containers(obj) if c.get("image")))


def missing_images(objs: list[dict], check=image_present) -> list[str]:
    return [ref for ref in images_of(objs) if check(ref) is False]
