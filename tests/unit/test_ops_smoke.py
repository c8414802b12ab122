"""`invoke smoke` (twotier.ops.smoke): the tutorial's checks against the real services, served
in-process on loopback behind the addresses of a fake cluster."""
import logging
import threading

import pytest
import requests
from kubefake import FakeCluster, deployment, pod, service

from twotier.errors import UserError
from twotier.ops.smoke import HostHttp, LoaderHttp, ProbeError, Response, Smoke, endpoint, run_smoke


class _Served:
    """A real Flask app on a loopback port (werkzeug's threaded server), for smoke to talk to."""

    def __init__(self, app):
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log in the test output
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class SeedSystem:
    """The real services (storage_api, app_api, hello_app) behind every address smoke may use:
    two storage "pods" on one directory (the shared volume) or on one each, the application API
    using pod a through STO_API, as in the cluster."""

    def __init__(self, tmp_path, items=(), shared=True):
        from app_api import create_app as app_api
        from hello_app import create_app as hello_app
        from storage_api import create_app as storage_api

        self.dirs = {"a": tmp_path / "pv", "b": tmp_path / ("pv" if shared else "pv-b")}
        self.servers = {pod: _Served(storage_api({"STO_STORAGE": str(d)})) for pod, d in self.dirs.items()}
        self.servers["app"] = _Served(app_api({"STO_API": self.servers["a"].url}))
        self.servers["hello"] = _Served(hello_app())
        self.requests = []
        self.down = set()  # hosts that refuse connections
        self.http = HostHttp(timeout=5)
        for item in items:
            requests.put(f"{self.servers['a'].url}/items/{item}", timeout=5).raise_for_status()

    def close(self):
        for server in self.servers.values():
            server.close()

    def store(self, pod="a"):
        return set(requests.get(self.servers[pod].url + "/items", timeout=5).json()["items"])

    def route(self, host):
        storage = {"192.0.2.2:31000", "10.96.0.10:5000", "in-svc:5000",
                   "in-svc.default.svc.cluster.local:5000", "10.244.0.5:5000"}
        app = {"192.0.2.2:31001", "10.96.0.11:5001", "10.244.0.9:5001", "out-svc:5001",
               "out-svc.default.svc.cluster.local:5001"}
        if host == "10.244.0.6:5000":
            return "b"
        if host in storage:
            return "a"
        if host in app:
            return "app"
        if host in {"10.96.0.12:5000", "10.244.0.7:5000", "s-f-webapp:5000",
                    "s-f-webapp.default.svc.cluster.local:5000"}:
            return "hello"
        raise ProbeError(f"Could not resolve host: {host}")

    def __call__(self, method, url):
        self.requests.append((method, url))
        host, _, path = url.split("://", 1)[1].partition("/")
        if host in self.down:
            raise ProbeError("Connection refused")
        return self.http(method, self.servers[self.route(host)].url + "/" + path)


class HelloSystem(SeedSystem):
    def route(self, host):
        if host == "192.0.2.2:31000":
            return "hello"
        return super().route(host)


@pytest.fixture
def seed(tmp_path):
    """SeedSystem(...) factory; every system made is stopped at the end of the test."""
    made = []

    def make_system(kind=SeedSystem, **kwargs):
        system = kind(tmp_path / str(len(made)), **kwargs)
        made.append(system)
        return system

    yield make_system
    for system in made:
        system.close()


def eps():
    from twotier.ops.smoke import Endpoint
    sto = Endpoint("in-svc", "10.96.0.10", 5000, 31000, 5000, ["10.244.0.5", "10.244.0.6"])
    app = Endpoint("out-svc", "10.96.0.11", 5001, 31001, 5001, ["10.244.0.9"])
    hello = Endpoint("s-f-webapp", "10.96.0.12", 5000, 31000, 5000, ["10.244.0.7"])
    return sto, app, hello


def make(system, lines):
    return Smoke(system, system, "default", "192.0.2.2", out=lines.append, retry_for=0,
                 sleep=lambda s: None)


def test_full_stage_runs_the_seeds_sequence_and_leaves_storage_empty(seed):
    system, lines = seed(), []
    s = make(system, lines)
    sto, app, _ = eps()
    s.storage(sto)
    s.app(app, sto)
    assert all(ln.startswith(("PASS", "note")) for ln in lines), "\n".join(lines)
    text = "\n".join(lines)
    # the seed's answers
    assert 'createlist/3: {"createds":["0","1","2"],"deleteds":[],"faileds":[]}' in text
    assert 'createlist/4: {"createds":["3"]' in text
    assert 'createlist/5: {"createds":["4"]' in text
    assert 'out-svc:5001/createlist/7 (short DNS name): {"createds":["5","6"]' in text
    assert '"deleteds":["0","1","2","3","4","5","6"]' in text
    assert system.store() == set()
    # the seed's access paths were all used
    urls = [u for _, u in system.requests]
    for needle in ("http://192.0.2.2:31001/createlist/3", "http://10.96.0.11:5001/createlist/4",
                   "http://10.244.0.9:5001/createlist/5", "http://out-svc:5001/createlist/7",
                   "http://out-svc.default.svc.cluster.local:5001/clear",
                   "http://in-svc.default.svc.cluster.local:5000/items",
                   "http://192.0.2.2:31000/items", "http://10.96.0.10:5000/items",
                   "http://10.244.0.5:5000/items", "http://in-svc:5000/items"):
        assert needle in urls, needle
    assert s.summary() == (len(lines), 0)


def test_full_stage_with_existing_items_puts_them_back(seed):
    system, lines = seed(items={"1", "keep-me"}), []
    s, (sto, app, _) = make(system, lines), eps()
    s.storage(sto)
    s.app(app, sto)
    text = "\n".join(lines)
    assert "FAIL" not in text, text
    assert 'createlist/3: {"createds":["0","2"]' in text  # "1" was there already
    assert "note: the storage holds 2 items" in text
    assert "PASS  restore the 2 items stored before smoke" in text
    assert system.store() == {"1", "keep-me"}


def test_storage_stage_writes_via_one_pod_reads_via_the_other(seed):
    system, lines = seed(), []
    make(system, lines).storage(eps()[0])
    text = "\n".join(lines)
    assert "FAIL" not in text, text
    puts = [u for m, u in system.requests if m == "PUT"]
    assert len(puts) == 1 and puts[0].startswith("http://10.244.0.5:5000/items/smoke-")
    item = puts[0].rsplit("/", 1)[1]
    assert ("GET", "http://10.244.0.6:5000/items") in system.requests
    assert ("DELETE", f"http://10.244.0.6:5000/items/{item}") in system.requests
    assert system.store() == set()


def test_unshared_volume_is_caught(seed):
    system, lines = seed(shared=False), []
    s = make(system, lines)
    s.storage(eps()[0])
    fails = [ln for ln in lines if ln.startswith("FAIL")]
    assert any("(second pod) lists smoke-" in ln and "missing" in ln for ln in fails), lines
    assert s.summary()[1] >= 1


def test_one_storage_replica_is_a_failure_not_a_skip(seed):
    from twotier.ops.smoke import Endpoint
    system, lines = seed(), []
    s = make(system, lines)
    s.shared_volume(Endpoint("in-svc", "10.96.0.10", 5000, 31000, 5000, ["10.244.0.5"]))
    assert lines == ["FAIL  write via one storage replica, read via the other: needs 2 ready "
                     "storage pods, found 1"]


def test_hello_stage_checks_root_and_info_every_way(seed):
    system, lines = seed(HelloSystem), []
    s = make(system, lines)
    s.hello(eps()[2])
    assert [ln.split("  ", 1)[0] for ln in lines] == ["PASS"] * 6, lines
    assert 'PASS  host -> node 192.0.2.2:31000/ (first app): {"a":1}' in lines


def test_dns_failure_is_a_fail_line_with_the_reason(seed):
    system, lines = seed(), []
    s = make(system, lines)
    system.down.add("in-svc:5000")
    s.reach_all_ways(eps()[0], "/items", lambda d: "", "storage API")
    fail = [ln for ln in lines if ln.startswith("FAIL")]
    assert fail == ["FAIL  loader -> in-svc:5000/items (short DNS name): GET http://in-svc:5000/items: "
                    "Connection refused"]


def test_reads_are_retried_while_there_is_no_answer_writes_are_not():
    attempts = []

    def flaky(method, url):
        attempts.append((method, url))
        if len(attempts) < 3:
            raise ProbeError("Connection refused")
        return Response(200, '{"items": []}')

    s = Smoke(flaky, flaky, "default", "192.0.2.2", out=lambda x: None, retry_for=10,
              sleep=lambda x: None, clock=iter(range(100)).__next__)
    assert s.call(flaky, "GET", "http://x/items").status == 200
    assert len(attempts) == 3
    attempts.clear()
    with pytest.raises(ProbeError):
        s.call(flaky, "PUT", "http://x/items/a", retry=False)
    assert len(attempts) == 1


def test_a_node_port_that_a_network_policy_closes_says_why_and_what_to_do(seed):
    system, lines = seed(), []
    system.down.add("192.0.2.2:31000")
    sto, _, _ = eps()
    sto.ingress_policies = ["sto-allow-clients"]
    make(system, lines).storage(sto)
    failed = [ln for ln in lines if ln.startswith("FAIL")]
    assert len(failed) == 1 and "192.0.2.2:31000" in failed[0], lines
    assert "NetworkPolicy sto-allow-clients admits only chosen pods" in failed[0]
    assert "internal-storage" in failed[0]


def test_a_refused_node_port_without_policies_gets_no_policy_hint(seed):
    system, lines = seed(), []
    system.down.add("192.0.2.2:31000")
    sto, _, _ = eps()
    make(system, lines).storage(sto)
    assert [ln for ln in lines if ln.startswith("FAIL") and "NetworkPolicy" in ln] == []


def test_ingress_policies_are_those_whose_selector_picks_the_pods():
    from twotier.ops.smoke import ingress_policies

    def pol(name, labels, types=None):
        spec = {"podSelector": {"matchLabels": labels}} | ({"policyTypes": types} if types else {})
        return {"metadata": {"name": name}, "spec": spec}

    policies = [pol("sto", {"run": "sto-app"}), pol("api", {"run": "api-app"}),
                pol("all", {}), pol("egress-only", {"run": "sto-app"}, ["Egress"]),
                pol("both", {"run": "sto-app"}, ["Ingress", "Egress"])]
    assert ingress_policies(policies, {"run": "sto-app", "tier": "storage"}) == ["all", "both", "sto"]
    assert ingress_policies([], {"run": "sto-app"}) == []


def test_wrong_http_status_is_reported():
    s = Smoke(lambda m, u: Response(503, '{"error":"unavailable"}'), None, "default", "ip",
              out=lambda x: None)
    assert s.expect("x", s.host, "GET", "http://x/", lambda d: "") is None
    assert s.results[0].detail == 'HTTP 503: {"error":"unavailable"}'


# --- curl in the loader pod --------------------------------------------------------------------
def test_loader_http_parses_curl_output():
    seen = []

    def execute(argv):
        seen.append(argv)
        return 0, '{"items":[]}\n200'

    resp = LoaderHttp(execute)("GET", "http://in-svc:5000/items")
    assert (resp.status, resp.json()) == (200, {"items": []})
    assert seen[0][:2] == ["curl", "-sS"] and seen[0][-1] == "http://in-svc:5000/items"
    assert "--noproxy" in seen[0]


def test_loader_http_curl_error_is_probe_error():
    with pytest.raises(ProbeError, match="Could not resolve host"):
        LoaderHttp(lambda a: (6, "curl: (6) Could not resolve host: in-svc\n"))("GET", "http://in-svc/")


def test_loader_http_reports_curls_message_not_the_status_placeholder():
    out = "curl: (28) Operation timed out after 5001 milliseconds with 0 bytes received\n000"
    with pytest.raises(ProbeError, match=r"\(28\) Operation timed out"):
        LoaderHttp(lambda a: (28, out))("GET", "http://out-svc:5001/clear")


def test_host_http_refused_on_a_closed_loopback_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ProbeError):
        HostHttp(timeout=2)("GET", f"http://127.0.0.1:{port}/")


# --- discovering addresses, run_smoke ---------------------------------------------------------
def storage_cluster():
    cluster = FakeCluster()
    svc = service("in-svc", 5000, 31000, run="sto-app")
    svc["spec"]["clusterIP"] = "10.96.0.10"
    svc["spec"]["ports"][0]["targetPort"] = "http"
    cluster.put(svc)
    cluster.put(deployment("sto-dep", 2))
    for name, ip in (("sto-dep-b", "10.244.0.6"), ("sto-dep-a", "10.244.0.5")):
        p = pod(name, "sto-app", ip=ip)
        p["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 5000}]
        cluster.put(p)
    cluster.put(pod("sto-dep-c", "sto-app", ip="10.244.0.8", ready=False))
    return cluster


def test_endpoint_reads_live_objects():
    ep = endpoint(storage_cluster(), "sto-dep", "in-svc")
    assert (ep.cluster_ip, ep.port, ep.node_port, ep.pod_port) == ("10.96.0.10", 5000, 31000, 5000)
    assert ep.pod_ips == ["10.244.0.5", "10.244.0.6"]  # ready pods only, by name


def test_endpoint_names_the_policies_that_pick_its_clients_and_does_without_the_right_to_list_them():
    cluster = storage_cluster()
    cluster.put({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "sto-allow-clients", "namespace": "default"},
                 "spec": {"podSelector": {"matchLabels": {"run": "sto-app"}}, "policyTypes": ["Ingress"]}})
    assert endpoint(cluster, "sto-dep", "in-svc").ingress_policies == ["sto-allow-clients"]

    listing = cluster.list

    def forbidden(api_version, kind, **kw):
        if kind == "NetworkPolicy":
            raise UserError("list NetworkPolicy: 403 Forbidden")
        return listing(api_version, kind, **kw)

    cluster.list = forbidden
    ep = endpoint(cluster, "sto-dep", "in-svc")
    assert ep.ingress_policies == [] and ep.pod_ips == ["10.244.0.5", "10.244.0.6"]


def test_endpoint_missing_objects_say_deploy_first():
    with pytest.raises(UserError, match="service/in-svc and deployment/sto-dep not found") as info:
        endpoint(FakeCluster(), "sto-dep", "in-svc")
    assert "invoke deploy" in info.value.hint


def test_run_smoke_storage_passes_and_fails_non_zero_when_a_check_fails(monkeypatch, seed):
    system, lines = seed(), []

    def execute(argv):
        if argv[0] == "getent":
            return 0, f"10.96.0.10      {argv[-1]}\n"
        resp = system(argv[argv.index("-X") + 1], argv[-1])
        return 0, f"{resp.text}\n{resp.status}"

    run_smoke(storage_cluster(), "storage", execute, out=lines.append, host=system)
    assert lines[-1].startswith("smoke (storage): 9 passed, 0 failed")

    system = seed(shared=False)  # each storage pod on a volume of its own
    lines.clear()
    with pytest.raises(UserError, match=r"smoke check\(s\) failed \(stage storage\)"):
        run_smoke(storage_cluster(), "storage", execute, out=lines.append, host=system)
    assert any(ln.startswith("FAIL") for ln in lines)


def test_run_smoke_unknown_stage():
    with pytest.raises(UserError, match="unknown stage"):
        run_smoke(FakeCluster(), "prod", lambda a: (0, ""))


def test_a_failed_write_check_still_removes_its_item(seed):
    class BadPut(SeedSystem):
        def __call__(self, method, url):
            resp = super().__call__(method, url)
            return Response(500, '{"error":"x"}') if method == "PUT" else resp

    system, lines = seed(BadPut), []
    make(system, lines).shared_volume(eps()[0])
    assert lines[0].startswith("FAIL  loader -> PUT") and "HTTP 500" in lines[0]
    assert [m for m, _ in system.requests] == ["PUT", "DELETE"]
    assert system.store() == set()


def test_stale_dns_is_waited_out_before_the_name_checks(seed):
    """After clean + up, the cluster DNS may still give a Service's previous IP for up to 30 s."""
    answers = {"in-svc": [["10.96.9.9"], ["10.96.9.9"], ["10.96.0.10"]],
               "in-svc.default.svc.cluster.local": [["10.96.0.10"]]}

    def resolve(name):
        seq = answers[name]
        return seq.pop(0) if len(seq) > 1 else seq[0]

    system, lines, slept = seed(), [], []
    s = Smoke(system, system, "default", "192.0.2.2", out=lines.append, retry_for=0,
              sleep=slept.append, clock=lambda: sum(slept), resolve=resolve)
    s.reach_all_ways(eps()[0], "/items", lambda d: "", "storage API")
    assert ("note: DNS gives in-svc -> 10.96.9.9, the Service IP is 10.96.0.10: waiting for the "
            "cluster DNS cache (up to 30 s)") in lines
    assert slept == [2, 2]
    assert all(ln.startswith(("PASS", "note")) for ln in lines)


def test_dns_that_never_catches_up_is_a_fail_line(seed):
    system, lines, slept = seed(), [], []
    s = Smoke(system, system, "default", "192.0.2.2", out=lines.append, retry_for=0,
              sleep=slept.append, clock=lambda: sum(slept), resolve=lambda name: [], dns_wait=10)
    s.wait_for_dns(eps()[0])
    assert lines[-1] == "FAIL  loader -> DNS in-svc resolves to the Service IP 10.96.0.10: it gives nothing after 10s"
    s.wait_for_dns(eps()[0])  # checked once per Service
    assert len([ln for ln in lines if ln.startswith("FAIL")]) == 1


def test_loader_resolve_parses_getent():
    from twotier.ops.smoke import loader_resolve
    assert loader_resolve(lambda a: (0, "10.96.0.10      in-svc.default.svc.cluster.local\n"), "in-svc") == ["10.96.0.10"]
    assert loader_resolve(lambda a: (2, ""), "nope") == []
