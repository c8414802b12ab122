"""Access `port-forward` (twotier.access) on the real local cluster, with the NodePorts made
unreachable on purpose: `invoke up`, `invoke smoke`, `invoke status` and `tilt up` reach in-svc
and out-svc through port-forwards on 127.0.0.1, as on Docker Desktop, kind or minikube on
macOS/Windows, or a remote cluster, where the node's NodePorts can't be reached.

"Unreachable": while a test runs, iptables drops every packet whose connection's original
destination port is 31000 or 31001 (conntrack's view before kube-proxy's DNAT), for the host and
for forwarded traffic; the rules carry a unique comment and are removed afterwards. They live in
the mangle table: a filter-table REJECT at the top of INPUT/OUTPUT/FORWARD is not final when the
NetworkPolicy engine (kube-router) puts its own jump above it and ACCEPTs node-to-pod traffic in
its chain, whereas a DROP in any table is final.

The forwards follow the Service (twotier.kube.portforward): with steady load through them, a
rolling restart of both tiers fails no request, for the tasks' forwards and for `tilt up`'s."""
from __future__ import annotations

import contextlib
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest

from bench.portforward import full_tiers, roll_under_load, tier_pods
from tests.e2e.conftest import must, run_invoke
from tests.support import tilt as live
from twotier import settings as settingsmod
from twotier.poll import Timeout, poll

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("clean_slate")]

NODE_PORTS = (31000, 31001)
ENV = {"INVOKE_TWOTIER_ACCESS": "port-forward"}


@contextlib.contextmanager
def node_ports_blocked():
    tag = f"twotier-test-no-nodeport-{uuid.uuid4().hex[:8]}"
    rules = [(chain, port) for chain in ("OUTPUT", "INPUT", "FORWARD") for port in NODE_PORTS]
    added = []
    try:
        for chain, port in rules:
            spec = ["-t", "mangle", chain, "-p", "tcp", "-m", "conntrack", "--ctorigdstport", str(port),
                    "-m", "comment", "--comment", tag, "-j", "DROP"]
            subprocess.run(["iptables", *spec[:2], "-I", *spec[2:]], check=True, capture_output=True, timeout=30)
            added.append(spec)
        yield
    finally:
        for spec in added:
            subprocess.run(["iptables", *spec[:2], "-D", *spec[2:]], check=False, capture_output=True, timeout=30)
    leftover = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=30).stdout
    assert tag not in leftover


def node_port_refused(node_ip: str, port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://{node_ip}:{port}/healthz", timeout=3)
    except urllib.error.HTTPError:
        return False
    except OSError:
        return True
    return False


def answer_within(url: str, seconds: float):
    """The JSON URL answers with; Tilt opens its forwards once the pods are ready, so retry
    (SECONDS only bounds a hang)."""
    last = [None]

    def answer():
        try:
            return (live.get_json(url, timeout=5),)
        except OSError as err:
            last[0] = err
            return None

    try:
        return poll(answer, timeout=seconds, interval=1, what=f"{url} answering")[0]
    except Timeout:
        pytest.fail(f"{url} did not answer within {seconds:.0f}s: {last[0]}")


@pytest.fixture(scope="module")
def settings(cluster):
    return settingsmod.load()


def test_invoke_up_smoke_and_status_work_through_port_forwards_without_nodeports(cluster, node_ip, nothing_deployed):
    try:
        with node_ports_blocked():
            up = must("up", env=ENV)
            assert all(node_port_refused(ip, port) for ip in (node_ip, "127.0.0.1") for port in NODE_PORTS)
            for res in (up, must("smoke", env=ENV)):
                assert "host -> port-forward 127.0.0.1:" in res.stdout
                assert "host -> node" not in res.stdout
                assert "access: port-forward" in res.stdout
                assert " 0 failed" in res.stdout
            status = must("status", env=ENV)
            assert status.stdout.count("port-forward answers /healthz 200") == 2, status.stdout
            assert "kubectl port-forward svc/out-svc" in status.stdout
            # the default (nodeport) now fails, which shows that the NodePorts really were not used
            nodeport_smoke = run_invoke("smoke")
            assert nodeport_smoke.returncode != 0
            assert "FAIL  host -> node" in nodeport_smoke.stdout or "FAIL" in nodeport_smoke.stdout
    finally:
        run_invoke("clean")


def assert_rolled_without_a_failure(run, used: dict[str, set[str]] | None = None, before: set[str] = frozenset()):
    print(f"{run.requests} requests through the forwards during the rollout of both tiers and until the old "
          f"pods were gone, {run.failed} failed ({run.seconds:.0f} s); pods that took connections: {used}")
    assert run.requests > 20 * len(full_tiers())
    assert run.failures == []
    assert all(run.answering_after.values()), run.answering_after  # with the old pods gone
    for tier, pods in (used or {}).items():
        assert pods - before, f"no pod started by the rollout took a connection to the {tier} tier: {pods}"


def test_the_tasks_forwards_follow_a_rolling_restart_of_both_tiers(cluster, settings, full_stage):
    """The forwards `invoke up`, `smoke` and `status` open, with the NodePorts blocked."""
    from twotier.kube.portforward import forwards
    from twotier.ops.cluster import connect

    kube = connect(settings)
    before = tier_pods(kube)
    with node_ports_blocked(), forwards(kube, {t.service: t.port for t in full_tiers()}) as fwd:
        run = roll_under_load(kube, {t.name: fwd[t.service].local_port for t in full_tiers()})
        used = {t.name: set(fwd[t.service].pods_used) for t in full_tiers()}
    assert_rolled_without_a_failure(run, used, before)


def test_tilt_up_reaches_both_services_through_its_port_forwards(cluster, settings, node_ip, nothing_deployed):
    from twotier.ops.cluster import connect

    ports = settings.forward_ports
    with node_ports_blocked(), live.TiltSession(settings, extra_args=["--access=port-forward"]) as session:
        session.wait_ready(resources=("storage", "app", "loader"))
        # the forwards' resources only run (a serve_cmd has no update): ready when /healthz answers through them
        poll(lambda: all(session.resource_status(f"{t.name}-port-forward").get("runtimeStatus") == "ok"
                         for t in full_tiers()), timeout=120, interval=1, what="Tilt's port-forward resources ready")
        assert node_port_refused(node_ip, 31001)
        for url in (f"http://127.0.0.1:{ports['storage']}/items",
                    f"http://127.0.0.1:{ports['app']}/createlist/2"):
            assert isinstance(answer_within(url, 60), dict), url
        links = [ep for name in ("storage", "app")
                 for ep in (session.resource_status(name).get("endpointLinks") or [])]
        assert {link["url"] for link in links} == {f"http://localhost:{ports['storage']}/items",
                                                   f"http://localhost:{ports['app']}/createlist/0"}, links
        # Tilt's forwards follow the Service too: both tiers roll under load through them
        assert_rolled_without_a_failure(roll_under_load(connect(settings), {t.name: ports[t.name] for t in full_tiers()}))
        session.trigger("smoke")  # the smoke resource gets access port-forward from the Tiltfile

        def finished() -> list | None:
            status = session.resource_status("smoke")
            history = status.get("buildHistory") or []
            done = history and history[0].get("finishTime") and not (status.get("currentBuild") or {}).get("startTime")
            return history if done else None

        history = poll(finished, timeout=300, interval=1, what="the smoke resource's run finished")
        assert not history[0].get("error"), session.log_tail(60)
