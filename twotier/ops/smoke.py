"""`invoke smoke`: the seed's functional checks, run for real, one PASS/FAIL line each.

From the host (this machine): the node's InternalIP and NodePort, like the seed's
`curl <node IP>:31000/...`. From the loader pod (curl inside the cluster): the Service IP, a pod IP
directly, the short DNS name and the fully qualified one. Stage storage also writes through one
storage replica and reads through the other; stage full runs the seed's createlist/clear sequence
through out-svc.

State: the checks leave the storage as they found it. The shared-volume check uses a unique item
(``smoke-<random>``) and deletes it. The createlist/clear sequence needs `clear`, which deletes
every item, so smoke first lists what is stored, expects the seed's answers relative to that, and
afterwards puts the items it found back (items are empty markers: recreating one restores it).
"""
from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from twotier import shape
from twotier.errors import UserError
from twotier.kube.objects import dig, pod_ready, pod_selector
from twotier.poll import Timeout, poll

CLUSTER_DOMAIN = "cluster.local"

#: seconds one check waits for its answer: longer than the application API's own total deadline
#: (API_DEADLINE, 15 s), so that a slow or unreachable storage tier shows as the app's JSON
#: 503/504 saying why, and one lost packet (a 1 s TCP or 5 s DNS retransmit) is not a failure
REQUEST_TIMEOUT = 20.0


class ProbeError(Exception):
    """No HTTP answer at all (connection refused, DNS failure, timeout)."""


@dataclass
class Response:
    status: int
    text: str

    def json(self):
        try:
            return json.loads(self.text)
        except ValueError:
            raise ProbeError(f"HTTP {self.status}, not JSON: {self.text[:120]!r}") from None


@dataclass
class Result:
    name: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}" + (f": {self.detail}" if self.detail else "")


# --------------------------------------------------------------------------------------------
# HTTP from the host and from the loader pod
# --------------------------------------------------------------------------------------------
class HostHttp:
    """Plain HTTP from this machine, never through a proxy (these are cluster addresses)."""

    def __init__(self, timeout: float | None = None):
        self.timeout = REQUEST_TIMEOUT if timeout is None else timeout
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __call__(self, method: str, url: str) -> Response:
        req = urllib.request.Request(url, method=method)
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                return Response(resp.status, resp.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as err:
            return Response(err.code, err.read().decode("utf-8", "replace"))
        except (urllib.error.URLError, OSError) as err:
            raise ProbeError(str(getattr(err, "reason", err))) from None


class LoaderHttp:
    """HTTP from inside the cluster: curl in the loader pod."""

    def __init__(self, execute):
        self.execute = execute  # (argv) -> (rc, output)

    def argv(self, method: str, url: str) -> list[str]:
        return ["curl", "-sS", "--noproxy", "*", "-m", str(int(REQUEST_TIMEOUT)), "-X", method,
                "-w", "\n%{http_code}", url]

    def __call__(self, method: str, url: str) -> Response:
        rc, out = self.execute(self.argv(method, url))
        if rc != 0:
            # curl's own message ("curl: (28) Operation timed out ..."), not the "000" of -w
            lines = [ln.strip() for ln in (out or "").splitlines() if ln.strip()]
            said = [ln for ln in lines if ln.startswith("curl:")] or lines
            raise ProbeError(said[-1] if said else f"curl exited {rc}")
        body, _, code = (out or "").rstrip("\n").rpartition("\n")
        try:
            return Response(int(code), body)
        except ValueError:
            raise ProbeError(f"unexpected curl output: {out[:200]!r}") from None


# --------------------------------------------------------------------------------------------
# Addresses: discovered from the live objects, as the seed does with kubectl get -o wide
# --------------------------------------------------------------------------------------------
@dataclass
class Endpoint:
    service: str
    cluster_ip: str
    port: int
    node_port: int | None
    pod_port: int
    pod_ips: list[str] = field(default_factory=list)
    ingress_policies: list[str] = field(default_factory=list)  # NetworkPolicies that pick its clients


def ingress_policies(policies: list[dict], pod_labels: dict) -> list[str]:
    """The names of the NetworkPolicies that restrict ingress to pods with POD_LABELS (matchLabels)."""
    return sorted(p["metadata"]["name"] for p in policies
                  if "Ingress" in dig(p, "spec.policyTypes", ["Ingress"])
                  and dig(p, "spec.podSelector.matchLabels", {}).items() <= pod_labels.items())


def _resolve_target_port(svc_port: dict, pods: list[dict]) -> int:
    target = svc_port.get("targetPort", svc_port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for pod in pods:
        for c in dig(pod, "spec.containers", []):
            for p in c.get("ports") or []:
                if p.get("name") == target:
                    return int(p["containerPort"])
    return int(svc_port.get("port"))


def endpoint(cluster, deployment: str, service: str) -> Endpoint:
    svc = cluster.get("v1", "Service", service)
    dep = cluster.get("apps/v1", "Deployment", deployment)
    if svc is None or dep is None:
        missing = [f"service/{service}"] * (svc is None) + [f"deployment/{deployment}"] * (dep is None)
        raise UserError(f"{' and '.join(missing)} not found in namespace {cluster.namespace!r}",
                        "deploy the stage first: `invoke deploy --stage ...` (or `invoke up`)")
    pods = sorted((p for p in cluster.list("v1", "Pod", label_selector=pod_selector(dep)) if pod_ready(p)),
                  key=lambda p: p["metadata"]["name"])
    port = dig(svc, "spec.ports", [{}])[0]
    try:
        found = cluster.list("networking.k8s.io/v1", "NetworkPolicy")
    except UserError:  # no right to list them: the checks run the same, only the hint is lost
        found = []
    policies = ingress_policies(found, dig(dep, "spec.template.metadata.labels", {}))
    return Endpoint(service, svc["spec"].get("clusterIP", ""), int(port.get("port")),
                    port.get("nodePort"), _resolve_target_port(port, pods),
                    [p["status"]["podIP"] for p in pods if dig(p, "status.podIP")], policies)


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------
class Smoke:
    def __init__(self, host, pod, namespace: str, node_ip: str, out=print,
                 retry_for: float = 10.0, sleep=time.sleep, clock=time.monotonic,
                 resolve=None, dns_wait: float = 40.0, host_via: str = ""):
        self.host, self.pod = host, pod
        self.resolve = resolve  # name -> [IPs] as the loader pod sees them (None: don't check)
        self.dns_wait = dns_wait
        self._dns_checked: set[str] = set()
        self.namespace = namespace
        self.node_ip = node_ip
        self.host_via = host_via or f"node {node_ip}"  # what "host -> ..." goes through
        self.out = out
        self.retry_for = retry_for
        self.sleep, self.clock = sleep, clock
        self.results: list[Result] = []

    # -- helpers -------------------------------------------------------------------------------
    def record(self, name: str, ok: bool, detail: str = "") -> bool:
        res = Result(name, ok, detail)
        self.results.append(res)
        self.out(res.line())
        return ok

    def call(self, via, method: str, url: str, retry: bool = True) -> Response:
        """One request; retries only while there is no answer at all (a fresh Service or DNS
        entry can take a moment) and only for reads, so a write is never sent twice."""
        failed: list[ProbeError] = []

        def answer() -> Response | None:
            try:
                return via(method, url)
            except ProbeError as err:
                failed[:] = [err]
                return None

        try:
            return poll(answer, timeout=self.retry_for if retry else 0, what=f"{method} {url}",
                        clock=self.clock, sleep=self.sleep)
        except Timeout:
            raise failed[0] from None

    def expect(self, name: str, via, method: str, url: str, check, retry: bool = True, unreachable: str = ""):
        """Run a request and a check on its JSON; record PASS/FAIL; return the JSON (or None).
        UNREACHABLE: what to add when no answer came at all."""
        try:
            resp = self.call(via, method, url, retry=retry and method == "GET")
            if not 200 <= resp.status < 300:  # the seed's Flask said 200; a 201 for PUT is fine
                self.record(name, False, f"HTTP {resp.status}: {resp.text.strip()[:200]}")
                return None
            data = resp.json()
        except ProbeError as err:
            self.record(name, False, f"{method} {url}: {err}" + (f" ({unreachable})" if unreachable else ""))
            return None
        problem = check(data)
        self.record(name, not problem, problem or _compact(data))
        return data if not problem else None

    def fqdn(self, service: str) -> str:
        return f"{service}.{self.namespace}.svc.{CLUSTER_DOMAIN}"

    def wait_for_dns(self, ep: Endpoint) -> None:
        """Wait until the Service's names resolve to its current IP, as the loader pod sees them.

        The cluster DNS caches answers (CoreDNS `cache 30`): right after a Service is deleted and
        created again (`invoke clean` then `invoke up`), its name may still give the old IP for
        up to 30 s, and requests to it go nowhere (or to whatever now holds that address)."""
        if self.resolve is None or ep.service in self._dns_checked:
            return
        self._dns_checked.add(ep.service)
        deadline = self.clock() + self.dns_wait
        said, ips = [], []
        for name in (ep.service, self.fqdn(ep.service)):
            def resolves(name=name) -> bool:
                ips[:] = self.resolve(name)
                if ep.cluster_ip not in ips and not said and self.clock() < deadline:
                    self.out(f"note: DNS gives {name} -> {', '.join(ips) or 'nothing'}, the Service IP "
                             f"is {ep.cluster_ip}: waiting for the cluster DNS cache (up to 30 s)")
                    said.append(name)
                return ep.cluster_ip in ips

            try:
                poll(resolves, timeout=max(0.0, deadline - self.clock()), interval=2, what=f"DNS {name}",
                     clock=self.clock, sleep=self.sleep)
            except Timeout:
                self.record(f"loader -> DNS {name} resolves to the Service IP {ep.cluster_ip}",
                            False, f"it gives {', '.join(ips) or 'nothing'} after {self.dns_wait:.0f}s")
                return

    def reach_all_ways(self, ep: Endpoint, path: str, check, what: str) -> None:
        """The seed's access paths: NodePort from the host, Service IP, pod IP, short and FQDN."""
        if ep.node_port:
            policed = (f"NetworkPolicy {', '.join(ep.ingress_policies)} admits only chosen pods, and a host "
                       f"that is not a node is refused: keep the NodePort off with the internal-storage "
                       f"component, or check from the loader pod") if ep.ingress_policies else ""
            self.expect(f"host -> {self.host_via}:{ep.node_port}{path} ({what})", self.host, "GET",
                        f"http://{self.node_ip}:{ep.node_port}{path}", check, unreachable=policed)
        self.expect(f"loader -> service IP {ep.cluster_ip}:{ep.port}{path}", self.pod, "GET",
                    f"http://{ep.cluster_ip}:{ep.port}{path}", check)
        if ep.pod_ips:
            ip = ep.pod_ips[0]
            self.expect(f"loader -> pod IP {ip}:{ep.pod_port}{path}", self.pod, "GET",
                        f"http://{ip}:{ep.pod_port}{path}", check)
        else:
            self.record(f"loader -> pod IP of {ep.service}", False, "no ready pod")
        self.wait_for_dns(ep)
        self.expect(f"loader -> {ep.service}:{ep.port}{path} (short DNS name)", self.pod, "GET",
                    f"http://{ep.service}:{ep.port}{path}", check)
        self.expect(f"loader -> {self.fqdn(ep.service)}:{ep.port}{path} (FQDN)", self.pod, "GET",
                    f"http://{self.fqdn(ep.service)}:{ep.port}{path}", check)

    # -- stage hello (seed step 1-2) -------------------------------------------------------------
    def hello(self, ep: Endpoint) -> None:
        root, info = equals({"a": 1}), equals({"info": True})
        if ep.node_port:
            self.expect(f"host -> {self.host_via}:{ep.node_port}/ (first app)", self.host, "GET",
                        f"http://{self.node_ip}:{ep.node_port}/", root)
        self.reach_all_ways(ep, "/info", info, "first app")

    # -- stage storage (seed deploy1.yaml) -------------------------------------------------------
    def storage(self, ep: Endpoint) -> None:
        self.reach_all_ways(ep, "/items", is_item_list, "storage API")
        self.shared_volume(ep)

    def shared_volume(self, ep: Endpoint) -> None:
        name = "write via one storage replica, read via the other"
        if len(ep.pod_ips) < 2:
            self.record(name, False, f"needs 2 ready storage pods, found {len(ep.pod_ips)}")
            return
        first, second = ep.pod_ips[:2]
        item = f"smoke-{secrets.token_hex(4)}"
        a = f"http://{first}:{ep.pod_port}"
        b = f"http://{second}:{ep.pod_port}"
        created = self.expect(f"loader -> PUT {a}/items/{item} (first pod)", self.pod, "PUT",
                              f"{a}/items/{item}", equals({"created": {item: True}}))
        if created is None:
            try:  # the write may have happened anyway: leave nothing behind
                self.call(self.pod, "DELETE", f"{a}/items/{item}", retry=False)
            except ProbeError:
                pass
            return
        self.expect(f"loader -> GET {b}/items (second pod) lists {item}", self.pod, "GET",
                    f"{b}/items", contains_item(item))
        self.expect(f"loader -> DELETE {b}/items/{item} (second pod)", self.pod, "DELETE",
                    f"{b}/items/{item}", equals({"deleted": {item: True}}))
        self.expect(f"loader -> GET {a}/items (first pod) no longer lists {item}", self.pod, "GET",
                    f"{a}/items", lacks_item(item))

    # -- stage full (seed deploy2.yaml): storage's checks, then the app's ----------------------
    def app(self, app_ep: Endpoint, storage_ep: Endpoint) -> None:
        """The seed's createlist/clear sequence through out-svc, leaving the storage as it was."""
        self.wait_for_dns(storage_ep)
        store = f"http://{self.fqdn(storage_ep.service)}:{storage_ep.port}"
        listing = self.expect(f"loader -> {store}/items (what is stored before the sequence)",
                              self.pod, "GET", f"{store}/items", is_item_list)
        if listing is None:
            return
        before = list(listing["items"])
        present = set(before)
        if before:
            self.out(f"note: the storage holds {len(before)} items; `clear` will delete them and "
                     "smoke puts them back afterwards")
        try:
            self.createlist_sequence(app_ep, storage_ep, present)
        finally:
            self.restore(store, before)

    def createlist_sequence(self, app: Endpoint, sto: Endpoint, present: set[str]) -> None:
        """The seed's final checks: createlist 3, 4, 5, 7 four different ways, list, clear."""
        self.wait_for_dns(app)
        steps = []
        if app.node_port:
            steps.append((self.host, f"host -> {self.host_via}:{app.node_port}",
                          f"http://{self.node_ip}:{app.node_port}", 3, ""))
        steps.append((self.pod, f"loader -> out-svc IP {app.cluster_ip}:{app.port}",
                      f"http://{app.cluster_ip}:{app.port}", 4, ""))
        if app.pod_ips:
            steps.append((self.pod, f"loader -> api pod IP {app.pod_ips[0]}:{app.pod_port}",
                          f"http://{app.pod_ips[0]}:{app.pod_port}", 5, ""))
        else:
            self.record("loader -> api pod IP", False, "no ready api pod")
        steps.append((self.pod, f"loader -> {app.service}:{app.port}",
                      f"http://{app.service}:{app.port}", 7, " (short DNS name)"))
        for via, label, base, n, note in steps:
            want = [str(i) for i in range(n) if str(i) not in present]
            data = self.expect(f"{label}/createlist/{n}{note}", via, "GET", f"{base}/createlist/{n}",
                               equals({"createds": want, "deleteds": [], "faileds": []}),
                               retry=False)
            present |= {str(i) for i in range(n)} if data is not None else set()
        store = f"http://{self.fqdn(sto.service)}:{sto.port}"
        self.expect(f"loader -> {store}/items lists every item", self.pod, "GET", f"{store}/items",
                    equals_items(sorted(present)))
        app_fqdn = f"http://{self.fqdn(app.service)}:{app.port}"
        self.expect(f"loader -> {app_fqdn}/clear deletes them all", self.pod, "GET",
                    f"{app_fqdn}/clear", clear_result(sorted(present)), retry=False)
        self.expect(f"loader -> {store}/items is empty after clear", self.pod, "GET",
                    f"{store}/items", equals_items([]))

    def restore(self, store: str, before: list[str]) -> None:
        if not before:
            return
        failed = []
        for item in before:
            try:
                resp = self.call(self.pod, "PUT", f"{store}/items/{item}", retry=False)
                if not 200 <= resp.status < 300:
                    failed.append(item)
            except ProbeError:
                failed.append(item)
        self.record(f"restore the {len(before)} items stored before smoke", not failed,
                    f"could not recreate: {', '.join(failed[:10])}" if failed else "")

    # -- summary ---------------------------------------------------------------------------------
    def summary(self) -> tuple[int, int]:
        passed = sum(r.ok for r in self.results)
        return passed, len(self.results) - passed


# --------------------------------------------------------------------------------------------
# Checks on JSON answers: each returns "" when fine, else what is wrong
# --------------------------------------------------------------------------------------------
def _compact(data) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= 100 else text[:97] + "..."


def equals(expected):
    def check(data):
        return "" if data == expected else f"expected {_compact(expected)}, got {_compact(data)}"
    return check


def is_item_list(data):
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        return ""
    return f"expected {{\"items\": [...]}}, got {_compact(data)}"


def equals_items(expected: list[str]):
    def check(data):
        return is_item_list(data) or ("" if sorted(data["items"]) == sorted(expected) else
                                      f"expected items {_compact(expected)}, got {_compact(data['items'])}")
    return check


def contains_item(item: str):
    def check(data):
        return is_item_list(data) or ("" if item in data["items"] else f"{item} missing: {_compact(data)}")
    return check


def lacks_item(item: str):
    def check(data):
        return is_item_list(data) or ("" if item not in data["items"] else f"{item} still listed")
    return check


def clear_result(deleted: list[str]):
    def check(data):
        if not isinstance(data, dict):
            return f"got {_compact(data)}"
        ok = (data.get("createds") == [] and data.get("faileds") == []
              and sorted(data.get("deleteds") or []) == sorted(deleted))
        return "" if ok else f"expected deleteds {_compact(deleted)}, got {_compact(data)}"
    return check


# --------------------------------------------------------------------------------------------
def loader_resolve(execute, name: str) -> list[str]:
    """The addresses NAME resolves to inside the loader pod (getent: the pod's resolv.conf)."""
    rc, out = execute(["getent", "hosts", name])
    if rc != 0:
        return []
    return [line.split()[0] for line in (out or "").splitlines() if line.split()]


def run_smoke(cluster, stage: str, execute, out=print, host=None, access: str = "nodeport") -> Smoke:
    """All checks for a stage; raises UserError (non-zero exit) if any failed. ACCESS
    ``port-forward``: the host's checks go through port-forwards on 127.0.0.1, not NodePorts."""
    shape.load().stage(stage)
    if access == "port-forward":
        from twotier.kube.portforward import forwards

        eps = _endpoints(cluster, stage)
        with forwards(cluster, {ep.service: ep.port for ep in eps}) as fwd:
            for ep in eps:
                ep.node_port = fwd[ep.service].local_port
                out(f"note: host checks go through a port-forward 127.0.0.1:{ep.node_port} "
                    f"-> service/{ep.service}:{ep.port}, to its ready pods (access: port-forward)")
            return _run_checks(cluster, stage, execute, out, host, eps, node_ip="127.0.0.1",
                               host_via="port-forward 127.0.0.1")
    ips = cluster.node_ips()
    if not ips:
        raise UserError("no node has an InternalIP", "check `kubectl get nodes -o wide`")
    return _run_checks(cluster, stage, execute, out, host, _endpoints(cluster, stage), node_ip=ips[0])


def _endpoints(cluster, stage: str) -> list:
    """The live endpoints of the stage's tiers, in system.yaml's order (storage before app)."""
    return [endpoint(cluster, t.deployment, t.service) for t in shape.load().stage(stage).tiers]


def _run_checks(cluster, stage, execute, out, host, eps, node_ip: str, host_via: str = "") -> Smoke:
    smoke = Smoke(host or HostHttp(), LoaderHttp(execute), cluster.namespace, node_ip, out=out,
                  resolve=lambda name: loader_resolve(execute, name), host_via=host_via)
    start = time.monotonic()
    tiers = shape.load().stage(stage).tiers
    by_name = {t.name: ep for t, ep in zip(tiers, eps)}
    for tier, ep in zip(tiers, eps):
        # a tier's own checks are the Smoke method named after it (given the endpoints of the tiers it
        # uses); a tier without one is reached every way on its check_path
        own = getattr(smoke, tier.name, None)
        if own is not None:
            own(ep, *(by_name[used] for used in tier.uses))
        else:
            smoke.reach_all_ways(ep, tier.check_path, lambda data: "", tier.title)
    passed, failed = smoke.summary()
    out(f"smoke ({stage}): {passed} passed, {failed} failed in {time.monotonic() - start:.1f}s")
    if failed:
        raise UserError(f"{failed} smoke check(s) failed (stage {stage})",
                        "see the FAIL lines above; `invoke status` and `invoke logs` help find why")
    return smoke
