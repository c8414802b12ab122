"""invoke load (twotier.ops.load): bounds, the project-only target, counting and the live table,
against a real HTTP server on loopback (no cluster)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.unit.kubefake import LABEL, FakeCluster
from twotier.errors import UserError
from twotier.ops import load


@pytest.mark.parametrize("seconds, concurrency, words", [
    (60, 0, "--concurrency must be between 1 and 32, not 0"),
    (60, 33, "not 33"),
    (60, 10_000, "not 10000"),
    (0, 4, "--seconds must be between 1 and 1800, not 0"),
    (86400, 4, "not 86400"),
    ("soon", 4, "must be numbers"),
])
def test_bad_bounds_are_refused_in_one_line(seconds, concurrency, words):
    with pytest.raises(UserError) as err:
        load.check_bounds(seconds, concurrency)
    assert words in err.value.args[0] and "\n" not in err.value.args[0]


def test_good_bounds_pass_as_numbers():
    assert load.check_bounds("30", "8") == (30.0, 8)


@pytest.mark.parametrize("service", ["in-svc", "kubernetes", "s-f-webapp"])
def test_only_out_svc_is_a_target(service):
    with pytest.raises(UserError, match="drives the project's out-svc only"):
        load.check_bounds(60, 4, service)


def out_svc(node_port=31001, labels=LABEL):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "out-svc", "labels": dict(labels)},
            "spec": {"type": "NodePort", "ports": [{"port": 5001, "nodePort": node_port}]}}


def test_target_is_the_project_out_svc_on_its_node_port():
    cluster = FakeCluster(node_ips=("192.0.2.2",))
    cluster.put(out_svc())
    assert load.target(cluster) == ("192.0.2.2", 31001)


def test_target_refuses_a_missing_or_foreign_out_svc():
    cluster = FakeCluster()
    with pytest.raises(UserError, match="no project Service out-svc"):
        load.target(cluster)
    cluster.put(out_svc(labels={"app": "someone-else"}))
    with pytest.raises(UserError, match="not the project's"):
        load.target(cluster)


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert load.percentile(values, 50) == 50 and load.percentile(values, 99) == 99
    assert load.percentile([], 50) is None and load.percentile([7], 99) == 7


class Server:
    """A createlist/clear stand-in: 200 with empty faileds, or the status given."""

    def __init__(self, status=200, faileds=()):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.paths.append(self.path)
                body = json.dumps({"createds": [], "deleteds": [], "faileds": list(faileds)}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.paths: list[str] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_workers_alternate_createlist_and_clear_and_count_successes(server):
    run = load.Load("127.0.0.1", server.port, concurrency=2).start()
    deadline = run.elapsed() + 10
    while len(run.stats.samples) < 20 and run.elapsed() < deadline:
        threading.Event().wait(0.05)
    run.stop()
    total = load.summary(run.stats.samples)
    assert total["requests"] >= 20 and total["failures"] == 0
    assert {"/createlist/10", "/clear"} <= set(server.paths)


@pytest.mark.parametrize("status, faileds, error", [(503, (), "HTTP 503"), (200, ("3",), "faileds")])
def test_an_error_status_or_faileds_is_a_failure(status, faileds, error):
    srv = Server(status, faileds)
    try:
        ok, text = load.one_request("127.0.0.1", srv.port, "/clear")
    finally:
        srv.close()
    assert not ok and error in text


def test_a_refused_connection_is_a_failure():
    srv = Server()
    port = srv.port
    srv.close()
    ok, text = load.one_request("127.0.0.1", port, "/clear", timeout=2)
    assert not ok and text


def test_run_prints_a_row_per_interval_with_replicas_and_totals(server):
    cluster = FakeCluster(node_ips=("127.0.0.1",))
    cluster.put(out_svc(node_port=server.port))
    cluster.put({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api-dep"},
                 "spec": {"replicas": 3}, "status": {"readyReplicas": 2}})
    lines: list[str] = []
    total = load.run(cluster, 1, 2, every=0.5, out=lines.append)
    assert lines[1].split()[:3] == ["time", "requests", "failures"]
    rows = lines[2:-1]
    assert len(rows) == 2 and all(r.split()[-1] == "2/3" for r in rows)
    assert rows[-1].split()[0] == "1s" and int(rows[-1].split()[1]) > 0
    assert total["failures"] == 0 and lines[-1].startswith(f"total: {total['requests']} requests, 0 failed")
