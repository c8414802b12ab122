"""An in-memory stand-in for twotier.kube.Cluster (the dict facade), for unit tests.

It keeps objects by (kind, namespace, name), does a simplified server-side apply (the applied
fields replace the live ones; labels and annotations merge; resourceVersion and generation move
only when something changed; dryRun stores nothing), deletes with optional lingering (an object
stays "Terminating" for N reads, like one held by a finalizer), and can play scripted states
(each read returns the next one) to drive the rollout waiter.
"""
from __future__ import annotations

import copy
import io
import itertools

from twotier.kube.client import CLUSTER_SCOPED, ApiError

LABEL = {"app.kubernetes.io/part-of": "twotier"}


def match_labels(selector: str | None, labels: dict) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeCluster:
    def __init__(self, namespace="default", context="twotier-local", node_ips=("192.0.2.2",)):
        self.namespace = namespace
        self.context = context
        self.server = "https://127.0.0.1:6443"
        self.kubeconfig = "/tmp/kubeconfig"
        self.objects: dict[tuple, dict] = {}
        self.scripts: dict[tuple, list] = {}
        self.linger: dict[tuple, int] = {}
        self.events: list[dict] = []
        self.logs: dict[tuple, str] = {}
        self.calls: list[tuple] = []
        self.reject: dict[tuple, ApiError] = {}
        self._rv = itertools.count(100)
        self._node_ips = list(node_ips)

    # -- helpers for tests ------------------------------------------------------------------
    def key(self, kind, name, namespace=None):
        return (kind, None if kind in CLUSTER_SCOPED else (namespace or self.namespace), name)

    def put(self, obj: dict) -> dict:
        """Store an object as if it existed already (no call recorded)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if obj["kind"] not in CLUSTER_SCOPED:
            meta.setdefault("namespace", self.namespace)
        meta.setdefault("resourceVersion", str(next(self._rv)))
        meta.setdefault("uid", f"uid-{meta['name']}")
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", "2026-11-25T12:00:00Z")
        self.objects[self.key(obj["kind"], meta["name"], meta.get("namespace"))] = obj
        return obj

    def script(self, kind, name, states: list[dict]) -> None:
        """Successive reads of (kind, name) return these objects; the last one repeats."""
        self.scripts[self.key(kind, name)] = [copy.deepcopy(s) for s in states]

    def exists(self, kind, name, namespace=None) -> bool:
        return self.key(kind, name, namespace) in self.objects

    # -- the facade -------------------------------------------------------------------------
    def get(self, api_version, kind, name, namespace=None):
        self.calls.append(("get", kind, name))
        key = self.key(kind, name, namespace)
        if key in self.scripts:
            states = self.scripts[key]
            state = states.pop(0) if len(states) > 1 else states[0]
            return copy.deepcopy(state)
        if key in self.linger:
            if self.linger[key] <= 0:
                self.objects.pop(key, None)
                del self.linger[key]
                return None
            self.linger[key] -= 1
        obj = self.objects.get(key)
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, api_version, kind, namespace=None, label_selector=None, all_namespaces=False,
             field_selector=None):
        self.calls.append(("list", kind, label_selector))
        if kind == "Event":
            return self._events(field_selector)
        if kind == "Node":
            return [{"metadata": {"name": "twotier-node"}, "status": {
                "addresses": [{"type": "InternalIP", "address": ip} for ip in self._node_ips],
                "conditions": [{"type": "Ready", "status": "True"}]}}]
        ns = None if kind in CLUSTER_SCOPED else (namespace or self.namespace)
        out = []
        for (k, n, _name), _obj in list(self.objects.items()):
            if k != kind or (not all_namespaces and n != ns):
                continue
            # lingering objects count as reads too
            live = self.get(api_version, k, _name, n)
            if live is None:
                continue
            if match_labels(label_selector, (live.get("metadata") or {}).get("labels") or {}):
                out.append(live)
        return out

    def _events(self, field_selector):
        want = dict(term.split("=", 1) for term in (field_selector or "").split(",") if term)
        return [e for e in self.events
                if all(e.get("involvedObject", {}).get(k.split(".", 1)[1]) == v for k, v in want.items())]

    def apply(self, obj, dry_run=False):
        self.calls.append(("apply", obj["kind"], obj["metadata"]["name"], dry_run))
        key = self.key(obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"))
        if key in self.reject:
            raise self.reject[key]
        live = self.objects.get(key)
        body = copy.deepcopy(obj)
        if live is None:
            result = body
            meta = result["metadata"]
            if obj["kind"] not in CLUSTER_SCOPED:
                meta["namespace"] = meta.get("namespace") or self.namespace
            meta.update(resourceVersion=str(next(self._rv)), uid=f"uid-{meta['name']}", generation=1,
                        creationTimestamp="2026-11-25T12:00:00Z",
                        managedFields=[{"manager": "twotier"}])
            if obj["kind"] == "Service":
                result["spec"].setdefault("clusterIP", "10.96.0.50")
        else:
            result = copy.deepcopy(live)
            for k, v in body.items():
                if k in ("metadata", "status"):
                    continue
                result[k] = v
            for field in ("labels", "annotations"):
                if body["metadata"].get(field):
                    result["metadata"].setdefault(field, {}).update(body["metadata"][field])
            if obj["kind"] == "Service" and "clusterIP" in live.get("spec", {}):
                result["spec"]["clusterIP"] = live["spec"]["clusterIP"]
            if _strip(result) != _strip(live):
                result["metadata"]["resourceVersion"] = str(next(self._rv))
                if result.get("spec") != live.get("spec"):
                    result["metadata"]["generation"] = live["metadata"].get("generation", 1) + 1
        if not dry_run:
            self.objects[key] = copy.deepcopy(result)
        return copy.deepcopy(result)

    def create(self, obj):
        self.calls.append(("create", obj["kind"], obj["metadata"]["name"]))
        key = self.key(obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"))
        if key in self.objects:
            raise ApiError("already exists", status=409)
        return self.put(obj)

    def delete(self, api_version, kind, name, namespace=None, propagation="Background",
               grace_period=None):
        self.calls.append(("delete", kind, name, propagation))
        key = self.key(kind, name, namespace)
        obj = self.objects.get(key)
        if obj is None:
            return False
        obj["metadata"]["deletionTimestamp"] = "2026-11-25T12:01:00Z"
        if key not in self.linger:
            self.objects.pop(key)
        if kind == "Deployment":  # its pods go with it
            sel = (obj.get("spec") or {}).get("selector", {}).get("matchLabels") or {}
            for k in [k for k, o in self.objects.items() if k[0] == "Pod"
                      and all(o["metadata"].get("labels", {}).get(a) == b for a, b in sel.items())]:
                if k not in self.linger:
                    self.objects.pop(k)
                else:
                    self.objects[k]["metadata"]["deletionTimestamp"] = "2026-11-25T12:01:00Z"
        return True

    def pod_logs(self, name, container=None, tail=20, previous=False, namespace=None):
        self.calls.append(("logs", name, container, previous))
        return self.logs.get((name, container), "")

    def events_for(self, kind, name, namespace=None):
        return self._events(f"involvedObject.kind={kind},involvedObject.name={name}")

    def node_ips(self):
        return list(self._node_ips)

    def kubectl_args(self):
        return ["--kubeconfig", self.kubeconfig, "--context", self.context, "--namespace", self.namespace]

    def kubectl_env(self):
        return {"KUBECONFIG": self.kubeconfig}

    def count(self, op, kind=None):
        return sum(1 for c in self.calls if c[0] == op and (kind is None or c[1] == kind))


def _strip(obj):
    obj = copy.deepcopy(obj)
    obj.pop("status", None)
    for k in ("resourceVersion", "generation", "managedFields"):
        obj.get("metadata", {}).pop(k, None)
    return obj


# -- seed-shaped objects ----------------------------------------------------------------------
def deployment(name, replicas=1, labels=None, image="img:abc", **status):  # bare: no registry check
    run = name.replace("-dep", "-app")
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {**LABEL, **(labels or {})}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"run": run}},
                 "template": {"metadata": {"labels": {"run": run, **LABEL}},
                              "spec": {"containers": [{"name": run, "image": image}]}}},
        **({"status": status} if status else {}),
    }


def service(name, port, node_port=None, run="x"):
    ports = [{"port": port, "targetPort": port, "protocol": "TCP"}]
    if node_port:
        ports[0]["nodePort"] = node_port
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": dict(LABEL)},
            "spec": {"type": "NodePort" if node_port else "ClusterIP", "selector": {"run": run},
                     "ports": ports}}


def seed_full_objects():
    """The seed's deploy2.yaml (plus the project label), in the seed's file order."""
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "local-pv", "labels": dict(LABEL)},
         "spec": {"storageClassName": "manual", "capacity": {"storage": "12Mi"},
                  "accessModes": ["ReadWriteMany"], "hostPath": {"path": "/tmp/data/kubetestpv"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "sto-pvc", "labels": dict(LABEL)},
         "spec": {"storageClassName": "manual", "accessModes": ["ReadWriteMany"],
                  "resources": {"requests": {"storage": "10Mi"}}}},
        deployment("sto-dep", replicas=2),
        service("in-svc", 5000, 31000, run="sto-app"),
        deployment("api-dep"),
        service("out-svc", 5001, 31001, run="api-app"),
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "sto-pdb", "labels": dict(LABEL)},
         "spec": {"minAvailable": 1, "selector": {"matchLabels": {"run": "sto-app"}}}},
    ]


def pod(name, run, ip="10.244.0.5", phase="Running", ready=True, waiting=None, restarts=0,
        owner_uid=None, template_hash="h1", labels=None):
    cs = {"name": run, "ready": ready, "restartCount": restarts,
          "state": {"waiting": waiting} if waiting else {"running": {"startedAt": "x"}}}
    meta = {"name": name, "labels": {"run": run, "pod-template-hash": template_hash, **LABEL, **(labels or {})}}
    if owner_uid:
        meta["ownerReferences"] = [{"uid": owner_uid, "kind": "ReplicaSet"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": run, "image": "img"}]},
            "status": {"phase": phase, "podIP": ip, "containerStatuses": [cs],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


# -- Invoke contexts with the project's real invoke.yaml ----------------------------------------
def project_context(monkeypatch=None, env=None, run=None):
    """A MockContext carrying the project's config (invoke.yaml + INVOKE_TWOTIER_* env)."""
    import os
    from pathlib import Path

    from invoke import Config, MockContext

    if monkeypatch is not None:
        for key in [k for k in os.environ if k.startswith("INVOKE_")]:
            monkeypatch.delenv(key)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
    from twotier.settings import defaults

    cfg = Config(defaults={**Config.global_defaults(), "twotier": defaults()},
                 project_location=str(Path(__file__).resolve().parents[2]))
    cfg.load_project()
    cfg.load_shell_env()
    return MockContext(config=cfg, run=run if run is not None else {}, repeat=False)


class Clock:
    """A fake monotonic clock whose sleep() advances time instantly (for waiters' timeouts)."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, seconds):
        self.t += seconds


class FakeTTY(io.StringIO):
    """A stdin/stdout that is (or is not) a terminal, for the loader shell."""

    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty
