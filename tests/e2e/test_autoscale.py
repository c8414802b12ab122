"""Scaling out and in under load, with the `autoscale` component and the cluster's metrics-server.

1. `kubectl top nodes` / `kubectl top pods` answer (metrics-server, applied by cluster.up);
2. `invoke load` refuses bad input in one line;
3. the full stage with `overlay: autoscale`: under load (`twotier.ops.load`, the code behind
   `invoke load`) the HPA scales api-dep out; each new pod serves its first request only once it is
   Ready (its access log against its Ready condition) and does take traffic; when the load ends the
   HPA scales back to one replica while a light load keeps running, so pods are removed while
   serving; no request fails in either direction. The figures (seconds to the second replica
   serving, seconds back to one, requests, failures, p99 before/during/after) are printed
   (`pytest -s`) and reported in docs/autoscaling.md.

The module starts and ends with nothing of the project deployed (clean_slate), the HPA included.
"""
from __future__ import annotations

import calendar
import re
import time

import pytest

from tests.e2e.conftest import kubectl, kubectl_json, must, run_invoke, wait_for
from twotier.ops import load
from twotier.poll import Timeout

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("clean_slate")]

SCALE_OUT_WITHIN = 240   # seconds of heavy load before api-dep must have a second replica serving
SCALE_IN_WITHIN = 300    # seconds after the heavy load for api-dep to be back at one replica
HEAVY, LIGHT_PAUSE = 8, 0.5  # heavy: 8 workers flat out; light: 1 worker, a request every 0.5 s
WINDOW = 30  # requests of the light load measured before the heavy load and after the scale-in
SETTLE_REQUESTS = 6000  # heavy-load requests kept after a second replica served (about 20 s here: ~300/s)


def measured(run: load.Load, count: int, what: str) -> None:
    """Until RUN has made COUNT more requests: a window measured in requests, bounded in time."""
    start = len(run.stats.samples)
    wait_for(lambda: len(run.stats.samples) - start >= count, f"{count} requests of {what}",
             count * (LIGHT_PAUSE + load.REQUEST_TIMEOUT), every=0.5)


def metrics_answer() -> bool:
    nodes = run_kubectl_ok("top", "nodes", "--no-headers")
    pods = run_kubectl_ok("top", "pods", "-n", "kube-system", "--no-headers")
    return bool(nodes and pods and "metrics-server" in pods)


def run_kubectl_ok(*args: str) -> str:
    out = kubectl(*args, check=False, timeout=20)
    return out.strip()


def test_kubectl_top_answers_for_nodes_and_pods(cluster):
    wait_for(metrics_answer, "kubectl top nodes/pods to answer (metrics-server)", 90, every=3)
    node_line = kubectl("top", "nodes", "--no-headers").split()
    assert node_line[0] == "twotier-node" and node_line[1].endswith("m") and node_line[3].endswith("Mi")


@pytest.mark.parametrize("args, words", [
    (("--concurrency", "0"), "--concurrency must be between 1 and 32, not 0"),
    (("--concurrency", "1000"), "not 1000"),
    (("--seconds", "0"), "--seconds must be between 1 and 1800"),
    (("--service", "in-svc"), "drives the project's out-svc only, not 'in-svc'"),
])
def test_invoke_load_refuses_bad_input_in_one_line(cluster, args, words):
    res = run_invoke("load", *args, timeout=60)
    assert res.returncode != 0
    error = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and words in error[0], res.stderr


def api_dep() -> dict:
    return kubectl_json("get", "deployment", "api-dep")


def replicas() -> tuple[int, int, int]:
    """(ready, desired, existing) replicas of api-dep."""
    st = api_dep()
    return (st["status"].get("readyReplicas") or 0, st["spec"]["replicas"], st["status"].get("replicas") or 0)


def api_pods() -> list[dict]:
    return [p for p in kubectl_json("get", "pods", "-l", "run=api-app")["items"]
            if not p["metadata"].get("deletionTimestamp")]


def ready_since(pod: dict) -> int | None:
    for cond in pod["status"].get("conditions") or []:
        if cond["type"] == "Ready" and cond["status"] == "True":
            return calendar.timegm(time.strptime(cond["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ"))
    return None


ACCESS = re.compile(r'\[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d) \+0000\] "GET (/createlist/\d+|/clear) ')


def served_at(pod: str) -> list[int]:
    """Epoch seconds of each createlist/clear in the pod's access log (the probes excluded)."""
    text = kubectl("logs", pod, "--tail", "-1", timeout=30)
    return [calendar.timegm(time.strptime(m.group(1), "%d/%b/%Y:%H:%M:%S")) for m in ACCESS.finditer(text)]


def hpa_has_metrics() -> bool:
    hpa = kubectl_json("get", "hpa", "api-dep")
    current = hpa.get("status", {}).get("currentMetrics") or []
    return any((m.get("resource") or {}).get("current", {}).get("averageUtilization") is not None for m in current)


@pytest.fixture(scope="module")
def autoscaled(cluster, single_node):
    """The full stage with the autoscale component, api-dep at one replica with a measured target."""
    wait_for(metrics_answer, "the resource metrics API", 90, every=3)
    must("up", "--stage", "full", env={"INVOKE_TWOTIER_OVERLAY": "autoscale"})
    wait_for(hpa_has_metrics, "the HPA to read api-dep's CPU", 120, every=2)
    wait_for(lambda: replicas()[1:] == (1, 1), "api-dep at one replica before the test", SCALE_IN_WITHIN, every=2)
    yield
    kubectl("delete", "hpa", "api-dep", "--ignore-not-found", "--wait=true")  # `invoke clean` (clean_slate) does the rest


def test_api_dep_scales_out_and_in_under_load_without_a_failed_request(autoscaled, request):
    from twotier import settings as settingsmod
    from twotier.ops.cluster import connect

    host, port = load.target(connect(settingsmod.load()))
    before_pods = {p["metadata"]["name"] for p in api_pods()}

    # before: a light load on one replica
    light = load.Load(host, port, 1, pause=LIGHT_PAUSE).start()
    measured(light, WINDOW, "the light load before the heavy one")
    light.stop()
    before = load.summary(light.stats.samples)

    # heavy load until a new replica is Ready and has served requests, then SETTLE_REQUESTS more
    heavy = load.Load(host, port, HEAVY).start()
    start_wall = time.time()
    seen = {"max_ready": 1}
    new_pods: dict[str, tuple[int, list[int]]] = {}  # kept: the pods are gone after scale-in

    def record() -> int | None:
        """Note the replicas and every new Ready pod's log; the first time a new pod served."""
        seen["max_ready"] = max(seen["max_ready"], replicas()[0])
        for pod in api_pods():
            name = pod["metadata"]["name"]
            if name not in before_pods and ready_since(pod) is not None:
                new_pods[name] = (ready_since(pod), served_at(name))
        return min((min(s) for _, s in new_pods.values() if s), default=None)

    try:
        try:
            first_served = wait_for(record, f"a second api-dep replica to serve within {SCALE_OUT_WITHIN}s of load",
                                    SCALE_OUT_WITHIN, every=2)
        except Timeout as err:
            raise AssertionError(f"{err.message} (replicas {replicas()}, "
                                 f"HPA {kubectl('get', 'hpa', 'api-dep', '--no-headers')})") from None
        to_second_serving = first_served - start_wall
        # the load goes on: every new pod and its log recorded, over a window of requests
        settle_from = len(heavy.stats.samples)
        wait_for(lambda: record() and len(heavy.stats.samples) - settle_from >= SETTLE_REQUESTS,
                 f"{SETTLE_REQUESTS} more requests of the heavy load", SCALE_OUT_WITHIN, every=2)
    finally:
        heavy.stop()
    heavy_end = time.monotonic()
    during = load.summary(heavy.stats.window(max(0.0, to_second_serving), None))
    heavy_total = load.summary(heavy.stats.samples)

    # scale-in while a light load keeps the Service busy
    light = load.Load(host, port, 1, pause=LIGHT_PAUSE).start()
    try:
        wait_for(lambda: replicas() == (1, 1, 1) and len(api_pods()) == 1, "api-dep back at one replica",
                 SCALE_IN_WITHIN, every=1)
        to_one = time.monotonic() - heavy_end
        after_from = light.elapsed()
        measured(light, WINDOW, "the light load after the scale-in")
    finally:
        light.stop()
    scale_in = load.summary(light.stats.window(0, after_from))
    after = load.summary(light.stats.window(after_from))

    def line(name: str, s: dict) -> str:
        return (f"  {name:<22} {s['requests']:>6} requests, {s['failures']} failed, p50 {s['p50_ms'] or 0:.0f} ms, "
                f"p99 {s['p99_ms'] or 0:.0f} ms")

    report = "\n".join([
        f"autoscale: 1 -> {seen['max_ready']} -> 1 replicas; second replica serving {to_second_serving:.0f}s after the load "
        f"started; back to one replica {to_one:.0f}s after it ended",
        line("before (1 worker)", before), line(f"heavy ({HEAVY} workers)", heavy_total),
        line("  of which scaled out", during), line("scale-in (1 worker)", scale_in), line("after (1 worker)", after)])
    request.config.pluginmanager.get_plugin("terminalreporter").write_line(report)

    assert seen["max_ready"] >= 2 and new_pods
    assert heavy_total["failures"] == 0, sorted({s.error for s in heavy.stats.samples if not s.ok})
    assert before["failures"] == scale_in["failures"] == after["failures"] == 0, \
        sorted({s.error for s in light.stats.samples if not s.ok})
    assert scale_in["requests"] > 0  # pods were removed while requests flowed
    for name, (ready, served) in new_pods.items():
        assert not served or min(served) >= ready, f"{name} served at {min(served)}, before Ready at {ready}"
    assert any(served for _, served in new_pods.values())
