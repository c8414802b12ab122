"""Talking to the cluster safely: kubeconfig, context rule, short timeouts, errors in plain words.

``connect(target)`` returns a ``Cluster``: a thin facade over the Kubernetes Python client that
speaks plain dicts (the API's JSON shape, camelCase keys), so the rest of the machinery (apply,
rollout, cleanup, status, loader, smoke) can be unit-tested against an in-memory fake.

Safety rule (the same idea as Tilt's ``allow_k8s_contexts``): we act on the configured context
only, and refuse it unless it looks local (``LOCAL_CONTEXT_PATTERNS``, ``allowed_contexts``, or
``--allow-context``; docs/configuration.md).
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property

from twotier.errors import UserError
from twotier.kube import objects

LOCAL_CONTEXT_PATTERNS = ("kind-*", "k3d-*", "minikube", "docker-desktop", "rancher-desktop")

# Kinds that have no namespace (the ones this project could render).
CLUSTER_SCOPED = frozenset(
    {"Namespace", "Node", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
     "CustomResourceDefinition", "PriorityClass", "IngressClass"}
)

def live_namespace(obj: dict, default: str) -> str | None:
    """The namespace OBJ lives in: its own, else DEFAULT; None for a cluster-scoped kind."""
    return None if obj.get("kind") in CLUSTER_SCOPED else (objects.dig(obj, "metadata.namespace") or default)


# Every object the project creates carries this label; clean/status only touch objects that do.
PROJECT_LABEL = ("app.kubernetes.io/part-of", "twotier")


def owned(obj: dict | None, label: tuple[str, str] = PROJECT_LABEL) -> bool:
    """True when a live object carries the project's label (the ownership test for clean)."""
    if not obj:
        return False
    return objects.labels(obj).get(label[0]) == label[1]


def context_is_local(name: str, allowed=(), extra=()) -> bool:
    """The safety rule: may the tasks act on this kube context?"""
    if not name:
        return False
    if name in set(allowed or ()) | set(extra or ()):
        return True
    return any(fnmatch.fnmatchcase(name, pat) for pat in LOCAL_CONTEXT_PATTERNS)


def resolve_kubeconfig(configured: str = "", local_default: str = "", environ=None) -> str:
    """Which kubeconfig to use: the configured path, $KUBECONFIG (even a missing file), LOCAL_DEFAULT
    when it exists, ~/.kube/config (docs/configuration.md: `context`, `kubeconfig`)."""
    environ = os.environ if environ is None else environ
    if configured.strip():
        return os.path.expanduser(configured.strip())
    if environ.get("KUBECONFIG"):
        return environ["KUBECONFIG"]
    if local_default and os.path.isfile(local_default):
        return local_default
    return os.path.expanduser("~/.kube/config")


def kubectl_binary(preferred: str = "") -> str:
    """The kubectl to run: PREFERRED (e.g. a local cluster's pinned build) if it exists, else PATH's."""
    if preferred and os.path.isfile(preferred) and os.access(preferred, os.X_OK):
        return preferred
    found = shutil.which("kubectl")
    if found:
        return found
    raise UserError(
        "kubectl was not found (needed for this task)",
        "build the local cluster with `invoke cluster.up` (it provides kubectl), "
        "or install kubectl and put it on PATH",
    )


@dataclass(frozen=True)
class Target:
    """Where to act: a kubeconfig, a context (empty = its current one), a namespace, and the
    contexts the safety rule allows besides the local-looking ones."""

    kubeconfig: str
    context: str = ""
    namespace: str = "default"
    allowed_contexts: tuple = ()
    field_manager: str = "twotier"
    api_timeout: float = 5.0


def choose_context(kubeconfig: str, wanted: str = "") -> str:
    """Read the kubeconfig's contexts (the client's own reading: a ':'-separated $KUBECONFIG is
    merged) and pick the wanted one (or the current one)."""
    from kubernetes.config import list_kube_config_contexts
    from kubernetes.config.config_exception import ConfigException

    if not any(os.path.isfile(f) for f in kubeconfig.split(os.pathsep) if f):
        raise UserError(
            f"no kubeconfig at {kubeconfig}",
            "start the local cluster with `invoke cluster.up`, or set twotier.kubeconfig "
            "(INVOKE_TWOTIER_KUBECONFIG) / $KUBECONFIG to your cluster's kubeconfig "
            "(a $KUBECONFIG that is set wins over the local cluster: for the local one, "
            "`eval \"$(invoke cluster.env)\"` or unset KUBECONFIG)",
        )
    try:
        contexts, current = list_kube_config_contexts(config_file=kubeconfig)
    except ConfigException as err:
        if "current-context" not in str(err):
            raise UserError(f"cannot read kubeconfig {kubeconfig}: {err}",
                            "check the file is a valid kubeconfig (`kubectl config view`)") from None
        if not wanted:
            raise UserError(f"kubeconfig {kubeconfig} has no current context",
                            "set twotier.context (or --context) to one of `kubectl config get-contexts`") from None
        return wanted  # load_kube_config checks it exists
    except Exception as err:  # yaml errors and the like
        raise UserError(f"cannot read kubeconfig {kubeconfig}: {err}", "check the file") from None
    names = {c["name"] for c in contexts}
    name = wanted or current["name"]
    if name not in names:
        raise UserError(
            f"context {name!r} is not in kubeconfig {kubeconfig}",
            "known contexts: " + (", ".join(sorted(names)) or "none")
            + "; set twotier.context or pass --context",
        )
    return name


def check_context_allowed(name: str, allowed=(), extra=()) -> None:
    if not context_is_local(name, allowed, extra):
        raise UserError(
            f"refusing to act on kube context {name!r}: it does not look like a local cluster",
            f"if it is one you may change, pass --allow-context {name} or add it to "
            "twotier.allowed_contexts in invoke.yaml",
        )


def describe_api_error(err) -> str:
    """One line from a Kubernetes API error (ApiException or the dynamic client's errors)."""
    body = getattr(err, "body", None)
    status = getattr(err, "status", "")
    if body:
        try:
            data = json.loads(body)
            if isinstance(data, dict) and data.get("message"):
                return f"{data['message']} (HTTP {status})"
        except (TypeError, ValueError):
            pass
    reason = getattr(err, "reason", "") or str(err)
    return f"{reason} (HTTP {status})" if status else str(reason)


@dataclass
class Cluster:
    """A connected cluster: the Python client plus what we resolved to reach it."""

    api_client: object
    context: str
    namespace: str
    kubeconfig: str
    server: str = ""
    field_manager: str = "twotier"
    timeout: tuple = (5, 30)
    _resources: dict = field(default_factory=dict, repr=False)

    # --- typed clients -------------------------------------------------------------------
    @cached_property
    def core(self):
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    @cached_property
    def dynamic(self):
        from kubernetes.dynamic import DynamicClient

        return self._call(lambda: DynamicClient(self.api_client), "discover the API")

    # --- error handling ------------------------------------------------------------------
    def _call(self, func, what: str, missing_ok: bool = False):
        """Run one API call; turn transport failures and API errors into UserError (MISSING_OK:
        None when the object does not exist)."""
        import urllib3
        from kubernetes.client.rest import ApiException
        from kubernetes.dynamic.exceptions import DynamicApiError

        try:
            return func()
        except (ApiException, DynamicApiError) as err:
            if missing_ok and getattr(err, "status", 0) == 404:
                return None
            raise ApiError(f"{what}: {describe_api_error(err)}", status=getattr(err, "status", 0),
                           body=getattr(err, "body", None)) from None
        except urllib3.exceptions.HTTPError as err:
            raise UserError(
                f"lost contact with the Kubernetes API server at {self.server} while trying to "
                f"{what}: {_short_transport_error(err)}",
                "check the cluster is up: `invoke cluster.status` (local cluster) or "
                f"`kubectl --context {self.context} get nodes`",
            ) from None

    def to_dict(self, obj) -> dict:
        if obj is None:
            return None
        from kubernetes.dynamic.resource import ResourceInstance

        if isinstance(obj, ResourceInstance):
            return obj.to_dict()  # the dynamic client's objects: already API-shaped
        if isinstance(obj, dict):
            return obj
        return self.api_client.sanitize_for_serialization(obj)  # typed models -> camelCase dicts

    def resource(self, api_version: str, kind: str):
        key = (api_version, kind)
        if key not in self._resources:
            from kubernetes.dynamic.exceptions import ResourceNotFoundError

            try:
                self._resources[key] = self._call(
                    lambda: self.dynamic.resources.get(api_version=api_version, kind=kind),
                    f"look up {kind} ({api_version})")
            except ResourceNotFoundError:
                raise UserError(f"the cluster does not serve {kind} ({api_version})",
                                "check the Kubernetes version of the cluster") from None
        return self._resources[key]

    def _ns(self, api_version, kind, namespace):
        return (namespace or self.namespace) if self.resource(api_version, kind).namespaced else None

    # --- the dict facade -----------------------------------------------------------------
    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None):
        """The live object as a dict, or None if it doesn't exist."""
        res = self.resource(api_version, kind)
        ns = self._ns(api_version, kind, namespace)
        return self.to_dict(self._call(lambda: res.get(name=name, namespace=ns, _request_timeout=self.timeout),
                                       f"read {kind} {name}", missing_ok=True))

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None, all_namespaces: bool = False,
             field_selector: str | None = None) -> list[dict]:
        res = self.resource(api_version, kind)
        ns = None if all_namespaces else self._ns(api_version, kind, namespace)
        result = self._call(
            lambda: res.get(namespace=ns, label_selector=label_selector,
                            field_selector=field_selector, _request_timeout=self.timeout),
            f"list {kind}")
        return list(self.to_dict(result).get("items") or [])

    def apply(self, obj: dict, dry_run: bool = False) -> dict:
        """Server-side apply (field manager ``twotier``, force conflicts); returns the result."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        name = obj["metadata"]["name"]
        res = self.resource(api_version, kind)
        body = json.loads(json.dumps(obj))
        if res.namespaced:
            body["metadata"]["namespace"] = body["metadata"].get("namespace") or self.namespace
        else:
            body["metadata"].pop("namespace", None)
        kwargs = {"field_manager": self.field_manager, "force_conflicts": True,
                  "_request_timeout": self.timeout}
        if dry_run:
            kwargs["dry_run"] = "All"
        result = self._call(
            lambda: self.dynamic.server_side_apply(res, body=body, name=name,
                                                   namespace=body["metadata"].get("namespace"),
                                                   **kwargs),
            f"apply {kind} {name}")
        return self.to_dict(result)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None,
               propagation: str = "Background", grace_period: int | None = None) -> bool:
        """Delete one object; False if it was already gone."""
        res = self.resource(api_version, kind)
        ns = self._ns(api_version, kind, namespace)
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if grace_period is not None:
            body["gracePeriodSeconds"] = grace_period
        return self._call(lambda: res.delete(name=name, namespace=ns, body=body, _request_timeout=self.timeout),
                          f"delete {kind} {name}", missing_ok=True) is not None

    def create(self, obj: dict) -> dict:
        res = self.resource(obj["apiVersion"], obj["kind"])
        ns = self._ns(obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"))
        return self.to_dict(self._call(
            lambda: res.create(body=obj, namespace=ns, _request_timeout=self.timeout),
            f"create {obj['kind']} {obj['metadata']['name']}"))

    def pod_logs(self, name: str, container: str | None = None, tail: int = 20,
                 previous: bool = False, namespace: str | None = None) -> str:
        try:
            return self._call(lambda: self.core.read_namespaced_pod_log(
                name, namespace or self.namespace, container=container or None, tail_lines=tail,
                previous=previous, _request_timeout=self.timeout), f"read logs of pod {name}") or ""
        except ApiError as err:
            return f"(no logs: {err.message})"

    def events_for(self, kind: str, name: str, namespace: str | None = None) -> list[dict]:
        sel = f"involvedObject.kind={kind},involvedObject.name={name}"
        try:
            items = self.list("v1", "Event", namespace=namespace, field_selector=sel)
        except ApiError:
            return []
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def node_ips(self) -> list[str]:
        """InternalIP of every node (what the seed's `kubectl get nodes -o wide` shows)."""
        ips = []
        for node in self.list("v1", "Node"):
            for addr in objects.dig(node, "status.addresses", []):
                if addr.get("type") == "InternalIP":
                    ips.append(addr["address"])
        return ips

    def kubectl_args(self) -> list[str]:
        """Flags that make kubectl act on exactly this cluster, context and namespace."""
        args = ["--context", self.context, "--namespace", self.namespace]
        if os.pathsep not in self.kubeconfig:
            args = ["--kubeconfig", self.kubeconfig, *args]
        return args

    def kubectl_env(self) -> dict:
        return {"KUBECONFIG": self.kubeconfig}


class ApiError(UserError):
    """An API call the server refused; ``status`` is the HTTP code (404, 409, 422, ...)."""

    def __init__(self, message, status=0, body=None, hint=""):
        super().__init__(message, hint)
        self.status = status
        self.body = body


def _short_transport_error(err) -> str:
    reason = getattr(err, "reason", None) or err
    text = str(reason)
    for marker in ("Failed to establish a new connection: ", "Connection refused", "timed out"):
        if marker in text:
            idx = text.find(marker)
            return text[idx:].rstrip(")'\"")
    return text[:200]


def _apply_timeouts(api_client, timeout) -> None:
    """Give every request a (connect, read) timeout and at most one quick retry.

    The generated client passes ``_request_timeout=None`` (= wait forever) unless a call sets it;
    discovery and the like never do. Wrapping the REST client fills in our default."""
    import urllib3

    rest = api_client.rest_client
    rest.pool_manager.connection_pool_kw["retries"] = urllib3.Retry(
        total=1, connect=1, read=0, redirect=2, status=0, backoff_factor=0.1)
    original = rest.request

    def request(method, url, *args, _request_timeout=None, **kwargs):
        return original(method, url, *args, _request_timeout=_request_timeout or timeout, **kwargs)

    rest.request = request


def connect(target: Target, allow_context=(), check_namespace: bool = True) -> Cluster:
    """Load the kubeconfig, apply the safety rule, check the API server answers (fast)."""
    from kubernetes import client
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.kube_config import load_kube_config

    kubeconfig = target.kubeconfig
    name = choose_context(kubeconfig, target.context)
    check_context_allowed(name, target.allowed_contexts, allow_context)
    cfg = client.Configuration()
    try:
        load_kube_config(config_file=kubeconfig, context=name, client_configuration=cfg,
                         persist_config=False)
    except (ConfigException, OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot use context {name!r} from {kubeconfig}: {err}",
                        "check the kubeconfig (`kubectl config view`)") from None
    timeout = (target.api_timeout, max(target.api_timeout * 4, 20.0))
    api_client = client.ApiClient(configuration=cfg)
    _apply_timeouts(api_client, timeout)
    cluster = Cluster(api_client=api_client, context=name, namespace=target.namespace or "default",
                      kubeconfig=kubeconfig, server=cfg.host,
                      field_manager=target.field_manager, timeout=timeout)
    probe(cluster, check_namespace=check_namespace)
    return cluster


def probe(cluster: Cluster, check_namespace: bool = True) -> None:
    """Fail within seconds if the API server doesn't answer or the namespace is missing."""
    from kubernetes import client

    try:
        # a short read timeout too: a server that accepts but never answers is as good as down
        cluster._call(lambda: client.VersionApi(cluster.api_client).get_code(
            _request_timeout=(cluster.timeout[0], cluster.timeout[0]), _preload_content=False),
            "reach the API")
    except ApiError as err:
        if err.status in (401, 403):
            raise UserError(
                f"the API server at {cluster.server} refused our credentials "
                f"(context {cluster.context!r}): {err.message}",
                "refresh the kubeconfig (`invoke cluster.kubeconfig` for the local cluster)",
            ) from None
        raise
    except UserError as err:
        raise UserError(
            f"the Kubernetes API server at {cluster.server} (context {cluster.context!r}) is "
            f"unreachable: {err.message.split(': ', 1)[-1]}",
            "start the local cluster with `invoke cluster.up`, or point twotier.context / "
            "twotier.kubeconfig at a running cluster",
        ) from None
    if not check_namespace:
        return
    try:
        cluster._call(lambda: cluster.core.read_namespace(cluster.namespace, _preload_content=False,
                                                          _request_timeout=cluster.timeout),
                      f"read namespace {cluster.namespace}")
    except ApiError as err:
        if err.status == 404:
            raise UserError(
                f"namespace {cluster.namespace!r} does not exist in context {cluster.context!r}",
                f"create it (`kubectl create namespace {cluster.namespace}`) or set "
                "twotier.namespace / --namespace to an existing one",
            ) from None
        if err.status != 403:  # forbidden to read namespaces: can't tell, carry on
            raise
