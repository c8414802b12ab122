"""`tilt up -- --debug=app` on the real local cluster: the app's dev server runs under debugpy in
its pod, Tilt forwards the debug port to 127.0.0.1:5678, and a real Debug Adapter Protocol client
(tests.support.dap, the JSON protocol VS Code speaks) attaches with the VS Code launch.json of
docs/dev-loop.md (its `connect` and `pathMappings`, read from the page), stops
at a breakpoint in createlist hit over HTTP through the Service, reads the frame's locals and
continues; the request then completes. Live update still works, and the debugger is back after
the reload.

Needs the local cluster and the pinned Tilt (`invoke test` provides both); 127.0.0.1:5678 must be
free (it is the port VS Code's launch.json in docs/dev-loop.md uses)."""
from __future__ import annotations

import socket
import threading
import urllib.request
import uuid

import pytest

from tests.e2e.conftest import wait_for
from tests.e2e.test_readme import launch_configuration
from tests.support import tilt as live
from tests.support.dap import DapError, attach_when_ready
from tests.support.traffic import http
from twotier import settings as settingsmod
from twotier.dev import tiltrun

pytestmark = [pytest.mark.tilt, pytest.mark.usefixtures("clean_slate")]

# docs/dev-loop.md's launch.json, as VS Code reads it, with ${workspaceFolder} = the checkout
LAUNCH = launch_configuration("app", workspace=tiltrun.ROOT)
DEBUG_HOST, DEBUG_PORT = LAUNCH["connect"]["host"], LAUNCH["connect"]["port"]
PATH_MAPPINGS = LAUNCH["pathMappings"]
ROUTES = tiltrun.ROOT / "services/app/app_api/routes.py"


@pytest.fixture(scope="module")
def settings(cluster):
    return settingsmod.load()


def breakpoint_line() -> int:
    """In createlist, where the names are made and the batches are about to run."""
    lines = ROUTES.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("def createlist("))
    return next(i for i, line in enumerate(lines[start:], start) if "createds, faileds = _run(names" in line) + 1


def stop_at_createlist(session, n: int) -> None:
    """Attach, break in createlist, GET /createlist/N through out-svc, check the locals, go on."""
    url = live.node_url(session.cluster, 31001, f"/createlist/{n}")
    # kube-proxy programs out-svc's NodePort a moment after the pod is Ready: the request must
    # reach the pod, or no breakpoint is ever hit
    def answering() -> bool:
        try:
            return http(live.node_url(session.cluster, 31001, "/healthz"), timeout=5)[0] == 200
        except OSError:   # refused until kube-proxy has programmed it
            return False

    wait_for(answering, "out-svc's NodePort answering /healthz", 60, every=0.5)
    line = breakpoint_line()
    try:
        dap, placed = attach_when_ready(DEBUG_HOST, DEBUG_PORT, {str(ROUTES): [line]},
                                        path_mappings=PATH_MAPPINGS)
    except DapError as err:
        pytest.fail(f"debugpy (Tilt forwards it to 127.0.0.1:{DEBUG_PORT}): {err}")
    with dap:
        assert placed[str(ROUTES)][0]["verified"], placed
        answer: dict = {}

        def request():
            with urllib.request.urlopen(url, timeout=120) as resp:
                answer["status"], answer["body"] = resp.status, resp.read()

        thread = threading.Thread(target=request, daemon=True)
        thread.start()
        stopped = dap.wait_event("stopped", timeout=60)
        assert stopped["body"]["reason"] == "breakpoint"
        frame, local_vars = dap.frame_locals(stopped["body"]["threadId"])
        assert frame["name"] == "createlist" and frame["line"] == line
        assert frame["source"]["path"] == str(ROUTES)  # mapped back from /app/app_api/routes.py
        assert local_vars["number"] == repr(str(n)) and local_vars["count"] == str(n)
        assert local_vars["names"] == repr([str(i) for i in range(n)])
        assert "status" not in answer  # the request waits at the breakpoint
        dap.request("continue", {"threadId": stopped["body"]["threadId"]})
        thread.join(60)
    assert answer.get("status") == 200, answer
    assert b'"createds"' in answer["body"]


def test_debugger_attaches_in_the_pod_and_live_update_still_works(cluster, settings):
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", DEBUG_PORT))
        except OSError:
            pytest.fail(f"127.0.0.1:{DEBUG_PORT} is taken: stop the other debugger or `tilt up` first", pytrace=False)
    with live.TiltSession(settings, extra_args=["--debug=app"]) as session:
        session.wait_ready()
        tier = live.TIERS["app"]
        pods_before = live.pod_identity(live.tier_pods(session.cluster, tier))
        (pod,) = live.tier_pods(session.cluster, tier)
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}
        assert env.get("TWOTIER_DEBUG_PORT") == str(DEBUG_PORT)
        assert "livenessProbe" not in pod["spec"]["containers"][0]  # a paused process is not dead
        stop_at_createlist(session, 3)
        # live update of the debugged tier: the new code answers, nothing restarted
        service, urls = live.tier_urls(session, tier)
        marker = uuid.uuid4().hex[:10]
        try:
            with live.SourceEdit(tier) as edit:
                edit.apply(marker)
                live.wait_for_marker(urls, marker, timeout=60, first_url=service)
            live.wait_for_marker(urls, None, timeout=60, first_url=service)
        finally:
            assert live.git_unchanged(tier.source)
        # the reloaded worker listens again: the same breakpoint works
        stop_at_createlist(session, 2)
        assert live.pod_identity(live.tier_pods(session.cluster, tier)) == pods_before
