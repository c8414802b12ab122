"""Make local-pv's hostPath directory on the local cluster's node, owned by the storage server.

A hostPath directory the kubelet creates (``DirectoryOrCreate``) is root-owned, mode 0755, and
fsGroup does not apply to hostPath volumes; the storage server runs as uid 10001 under Pod
Security "restricted", so no container of it may run as root to hand the directory over. On the
local cluster the node's filesystem is this host's, so the deploy (and the Tiltfile) make the
directory first: owner the pod's ``runAsUser``, group its ``fsGroup`` (else ``runAsGroup``),
mode 0770. Never through a symbolic link: every existing component of the path is checked with
``lstat`` and the directory itself is opened with ``O_NOFOLLOW``, so a link planted in a shared
directory is refused, not followed.

On a kind cluster the node is a container named after the node (kind's node containers): the
same directory is made inside the node local-pv is pinned to, through ``docker exec``, with the
same owner, mode and refusal of links (``prepare_in_kind``).

``python -m twotier.ops.hostvolume`` reads rendered manifests on stdin (the Tiltfile's way in).
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
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


# In the node: refuse a link on the path, make the directory, hand it over; "changed" if it did.
_IN_NODE = r"""set -eu
path=$1 d=""
IFS=/
for part in ${path#/}; do
  d=$d/$part
  if [ -L "$d" ]; then echo "$d is a symbolic link" >&2; exit 3; fi
done
changed=""
[ -d "$path" ] || { mkdir -p "$path"; changed=1; }
if [ "$(stat -c %u:%g:%a "$path")" != "$2:$3:770" ]; then chown "$2:$3" "$path"; chmod 0770 "$path"; changed=1; fi
[ -z "$changed" ] || echo changed
"""


def prepare_in_node(node: str, objs: list[dict], out=print, run=subprocess.run) -> None:
    """local-pv's directory in kind node NODE (its container), as prepare() makes it on this host."""
    docker = shutil.which("docker") or "docker"
    for path, uid, gid in host_volumes(objs):
        proc = run([docker, "exec", node, "sh", "-c", _IN_NODE, "sh", path, str(uid), str(gid)],
                   capture_output=True, text=True, timeout=60)
        if proc.returncode == 3:
            raise UserError(f"in kind node {node}: {proc.stderr.strip()}: local-pv's directory {path} is not "
                            "made through one", hint=f"remove the link (docker exec {node} rm ...), or choose "
                            "another hostPath in k8s/storage/pv.yaml")
        if proc.returncode != 0:
            out(f"note: could not make {path} in kind node {node} ({(proc.stderr or proc.stdout).strip()[-200:]}); "
                "the storage pods stay unready until it is owned by the storage server: the volume-owner "
                "overlay does it from inside the pod")
        elif proc.stdout.strip() == "changed":
            out(f"made {path} in kind node {node} for the storage tier (owner {uid}:{gid}, mode 0770)")


def prepare_in_kind(cluster, objs: list[dict], out=print) -> None:
    """On a kind cluster, prepare_in_node() on the node local-pv is pinned to; elsewhere nothing."""
    from twotier.images import kindload
    from twotier.ops import storagenode

    node = storagenode.pinned_node(storagenode.storage_pv(objs))
    if node and host_volumes(objs) and kindload.detect(cluster) is not None:
        prepare_in_node(node, objs, out=out)


def for_context(context: str, objs: list[dict], out=print) -> list[dict]:
    """OBJS with local-pv pinned to a node of CONTEXT's cluster (twotier.ops.storagenode), its
    directory made there: this host for the local cluster, the node container on kind."""
    from localcluster import layout as localcluster
    from twotier.ops import storagenode
    from twotier.ops.cluster import connect
    from twotier.settings import load

    settings = load().with_flags(context=context)
    cluster = connect(settings, allow_context=context, check_namespace=False)  # Tilt chose the context
    objs = storagenode.pin_for_cluster(cluster, objs, settings)
    if cluster.context == localcluster.CONTEXT:
        prepare_all(objs, out=out)
    else:
        prepare_in_kind(cluster, objs, out=out)
    return objs


def main(argv: list[str] | None = None) -> int:
    """Rendered manifests on stdin. No argument: make local-pv's directory on this host.
    ``--for-context CONTEXT``: for_context(), then the manifests, pinned, on stdout (for Tilt)."""
    import yaml

    argv = sys.argv[1:] if argv is None else argv
    try:
        objs = [o for o in yaml.safe_load_all(sys.stdin) if o]
        if argv[:1] == ["--for-context"] and len(argv) == 2:
            objs = for_context(argv[1], objs, out=lambda line: print(line, file=sys.stderr))
            sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
        else:
            prepare_all(objs)
    except (UserError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
