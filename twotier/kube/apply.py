"""Server-side apply of rendered objects, in their rendered order, idempotent, with a dry-run mode.

``apply_objects(cluster, objs)`` applies each object (field manager ``twotier``, conflicts forced:
the project owns its fields) and says, like kubectl, ``created`` / ``configured`` / ``unchanged``:
the applied result compared with the live object (``apply_one``), so a second deploy of the same
render says ``unchanged``. ``dry_run=True`` sends the same applies with ``dryRun=All`` (the server
computes, stores nothing) and says what would change.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from twotier.errors import UserError
from twotier.kube.client import ApiError, live_namespace, owned
from twotier.kube.objects import dig

# Server-managed fields that say nothing about what the user asked for.
_VOLATILE_METADATA = ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid",
                      "selfLink")


def ref(obj: dict) -> str:
    """kubectl's way of naming an object: ``deployment.apps/sto-dep``, ``service/in-svc``."""
    api_version = obj.get("apiVersion", "v1")
    group = api_version.split("/")[0] if "/" in api_version else ""
    kind = obj.get("kind", "").lower()
    return f"{kind}.{group}/{obj['metadata']['name']}" if group else f"{kind}/{obj['metadata']['name']}"


def comparable(obj: dict | None) -> dict | None:
    """The object without status and server bookkeeping: what a user's manifest can change."""
    if obj is None:
        return None
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = dict(out.get("metadata") or {})
    for key in _VOLATILE_METADATA:
        meta.pop(key, None)
    out["metadata"] = meta
    return out


def diff_paths(old, new, prefix: str = "") -> list[str]:
    """Dotted paths where ``new`` differs from ``old`` (lists of named items keyed by name)."""
    if isinstance(old, dict) and isinstance(new, dict):
        paths = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                if old.get(key) in (None, {}, []) and new.get(key) in (None, {}, []):
                    continue
                paths.append(sub)
            else:
                paths.extend(diff_paths(old[key], new[key], sub))
        return paths
    if isinstance(old, list) and isinstance(new, list):
        if _named_list(old) and _named_list(new):
            old_by, new_by = {i["name"]: i for i in old}, {i["name"]: i for i in new}
        elif len(old) != len(new):
            return [prefix]
        else:
            old_by, new_by = dict(enumerate(old)), dict(enumerate(new))
        paths = []
        for key in dict.fromkeys([*old_by, *new_by]):
            sub = f"{prefix}[{key}]"
            both = key in old_by and key in new_by
            paths.extend(diff_paths(old_by[key], new_by[key], sub) if both else [sub])
        return paths
    return [] if old == new else [prefix]


def _named_list(items) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


@dataclass
class Change:
    ref: str
    action: str  # created | configured | unchanged (dry run: would create | would change | unchanged)
    fields: list[str] = field(default_factory=list)

    def line(self, dry_run: bool = False) -> str:
        text = f"{self.ref} {self.action}"
        if self.fields:
            shown = ", ".join(self.fields[:6])
            more = len(self.fields) - 6
            text += f" ({shown}{f', +{more} more' if more > 0 else ''})"
        return text + (" (server dry run)" if dry_run else "")


# --------------------------------------------------------------------------------------------
# NodePort conflicts: the seed gives NodePort 31000 to both s-f-webapp (hello) and in-svc
# (storage). Say so clearly before the API server answers "provided port is already allocated".
# --------------------------------------------------------------------------------------------
@dataclass
class PortConflict:
    port: int
    wanted: str  # our Service that wants the port
    holder: str  # namespace/name of the Service that has it
    holder_is_ours: bool


def node_ports(svc: dict) -> list[int]:
    return [p["nodePort"] for p in dig(svc, "spec.ports", []) if p.get("nodePort")]


def nodeport_conflicts(objs: list[dict], live_services: list[dict], namespace: str) -> list[PortConflict]:
    """Which NodePorts we want are held by another Service (pure: objects and live list in)."""
    conflicts = []
    for obj in objs:
        if obj.get("kind") != "Service":
            continue
        ns = obj["metadata"].get("namespace") or namespace
        for port in node_ports(obj):
            for live in live_services:
                meta = dig(live, "metadata", {})
                if (meta.get("namespace"), meta.get("name")) == (ns, obj["metadata"]["name"]):
                    continue
                if port in node_ports(live):
                    conflicts.append(PortConflict(port, obj["metadata"]["name"],
                                                  f"{meta.get('namespace')}/{meta.get('name')}",
                                                  owned(live)))
    return conflicts


def conflict_error(conflicts: list[PortConflict]) -> UserError:
    lines = [f"NodePort {c.port} wanted by Service {c.wanted} is already used by Service {c.holder}"
             for c in conflicts]
    if all(c.holder_is_ours for c in conflicts):
        hint = ("another stage of this project is deployed (the seed gives NodePort 31000 to both "
                "s-f-webapp and in-svc): run `invoke clean` first, then deploy again")
    else:
        hint = ("that Service is not this project's: delete it yourself, or run `invoke clean` if "
                "it is left over from the project, then deploy again")
    return UserError("; ".join(lines), hint)


def check_nodeports(cluster, objs: list[dict]) -> None:
    if not any(o.get("kind") == "Service" and node_ports(o) for o in objs):
        return
    live = cluster.list("v1", "Service", all_namespaces=True)
    conflicts = nodeport_conflicts(objs, live, cluster.namespace)
    if conflicts:
        raise conflict_error(conflicts)


# --------------------------------------------------------------------------------------------
def apply_one(cluster, obj: dict, dry_run: bool = False) -> Change:
    api_version, kind, name = obj["apiVersion"], obj["kind"], obj["metadata"]["name"]
    live = cluster.get(api_version, kind, name, live_namespace(obj, cluster.namespace))
    try:
        result = cluster.apply(obj, dry_run=dry_run)
    except ApiError as err:
        if err.status == 422 and "already allocated" in (err.message or ""):
            raise UserError(f"{ref(obj)}: {err.message}",
                            "a NodePort is taken by another Service: run `invoke clean` to remove "
                            "the project's other stage, then deploy again") from None
        if err.status == 422 and "immutable" in (err.message or ""):
            raise UserError(f"{ref(obj)} cannot be changed in place: {err.message}",
                            "run `invoke clean` and deploy again (this deletes the stored items)") from None
        raise
    if live is None:
        return Change(ref(obj), "would create" if dry_run else "created")
    # What differs between the live object and the applied result, status and server bookkeeping
    # aside. (Not resourceVersion alone: a controller writing status between our read and our
    # apply - a PVC being bound - would make an unchanged object look "configured".)
    changed = diff_paths(comparable(live), comparable(result))
    if not changed:
        return Change(ref(obj), "unchanged")
    return Change(ref(obj), "would change" if dry_run else "configured", changed)


def apply_objects(cluster, objs: list[dict], dry_run: bool = False, out=print) -> list[Change]:
    """Apply every object in the order given (the render's: kustomize puts volumes and claims
    before the workloads that mount them); print one kubectl-like line each."""
    if not objs:
        raise UserError("nothing to apply: the render produced no objects",
                        "check `invoke render --stage ...`")
    check_nodeports(cluster, objs)
    changes = []
    for obj in objs:
        change = apply_one(cluster, obj, dry_run=dry_run)
        out(change.line(dry_run))
        changes.append(change)
    return changes


def deployments_of(objs: list[dict]) -> list[str]:
    return [o["metadata"]["name"] for o in objs if o.get("kind") == "Deployment"]
