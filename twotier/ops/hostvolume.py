"""Make local-pv's hostPath directory on the local cluster's node, owned by the storage server.

A hostPath directory the kubelet creates (``DirectoryOrCreate``) is root-owned, mode 0755, and
fsGroup does not apply to hostPath volumes; the storage server runs as uid 10001 under Pod
Security "restricted", so no container of it may run as root to hand the directory over. On the
local cluster the node's filesystem is this host's, so the deploy (and the Tiltfile) make the
directory first: owner the pod's ``runAsUser``, group its ``fsGroup`` (else ``runAsGroup``),
mode 0770. Never through a symbolic link: every existing component of the path is checked with
``lstat`` and the directory itself is opened with ``O_NOFOLLOW``, so a link planted in a shared
directory is refused, not followed.

``python -m twotier.ops.hostvolume`` reads rendered manifests on stdin (the Tiltfile's way in).
"""
from __future__ import annotations

import os
import stat
import sys

from twotier.errors import UserError


def host_volumes(objs: list[dict]) -> list[tuple[str, int, int]]:
    """(path, uid, gid) for each hostPath PersistentVolume, owned as the pods claiming volumes run."""
    paths = [o["spec"]["hostPath"]["path"] for o in objs
             if o.get("kind") == "PersistentVolume" and (o.get("spec") or {}).get("hostPath")]
    owners = [_owner(o) for o in objs if o.get("kind") == "Deployment" and _claims(o)]
    owner = next((x for x in owners if x), None)
    return [(path, *owner) for path in paths] if owner else []


def _claims(dep: dict) -> bool:
    volumes = dep["spec"]["template"]["spec"].get("volumes") or []
    return any("persistentVolumeClaim" in v for v in volumes)


def _owner(dep: dict) -> tuple[int, int] | None:
    sc = dep["spec"]["template"]["spec"].get("securityContext") or {}
    uid = sc.get("runAsUser")
    gid = sc.get("fsGroup", sc.get("runAsGroup", uid))
    return (uid, gid) if isinstance(uid, int) and uid > 0 else None


def prepare(path: str, uid: int, gid: int) -> bool:
    """Make PATH a directory owned by UID:GID, mode 0770; True if anything changed."""
    if not os.path.isabs(path):
        raise UserError(f"local-pv's hostPath {path!r} is not absolute")
    _refuse_links(path)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    try:
        os.mkdir(path, 0o770)
        changed = True
    except FileExistsError:
        changed = False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
            changed = True
        if stat.S_IMODE(st.st_mode) != 0o770:
            os.fchmod(fd, 0o770)
            changed = True
    finally:
        os.close(fd)
    return changed


def _refuse_links(path: str) -> None:
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                raise UserError(f"{current} is a symbolic link: local-pv's directory {path} is not "
                                "made through one", hint="remove the link, or choose another "
                                "hostPath in k8s/storage/pv.yaml")
        except FileNotFoundError:
            return


def prepare_all(objs: list[dict], out=print) -> None:
    for path, uid, gid in host_volumes(objs):
        if prepare(path, uid, gid):
            out(f"made {path} for the storage tier (owner {uid}:{gid}, mode 0770)")


def main() -> int:
    import yaml

    try:
        prepare_all([o for o in yaml.safe_load_all(sys.stdin) if o])
    except (UserError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
