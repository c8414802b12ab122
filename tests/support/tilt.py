"""`tilt up` for the tests and benchmarks, and the live edit they make.

``TiltSession(settings)``: `tilt up` in the background on its own port (a ``twotier.proc.Background``
logging to build/logs), with helpers that read its state through Tilt's API server; on exit Tilt is
stopped and, unless ``keep=True``, `tilt down` removes what it deployed (``tiltrun.tilt_down``).

The live edit: one new field in a response of the seed's contract, with a fresh value each time
(``"tilt_probe": "<marker>"`` in the first ``jsonify(`` of the view system.yaml names for a tier);
``wait_for_marker`` polls the tier's Service and every replica until they answer with it.
"""
from __future__ import annotations

import http.client
import json
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from twotier import shape
from twotier.dev.tiltrun import ROOT, prepare, tilt_argv, tilt_down, tilt_env, tiltfile_args
from twotier.errors import UserError
from twotier.kube.objects import selector_string
from twotier.poll import Timeout, poll
from twotier.ports import free_port
from twotier.proc import Background
from twotier.shape import BUILD

#: Tilt resource names the Tiltfile defines for the tiers (k8s_resource new_name)
SERVICE_RESOURCES = tuple(t.name for t in shape.load().stage("full").tiers)
PROBE_FIELD = "tilt_probe"
NO_ANSWER = "<no answer>"


class TiltSession:
    """`tilt up` in the background on its own port, with helpers to read its state.

    Used as a context manager: ``with TiltSession(settings) as tilt: tilt.wait_ready()``."""

    def __init__(self, settings, log_path: Path | None = None, keep: bool = False, progress=print,
                 extra_args: list[str] = ()):
        self.settings = settings
        self.keep = keep
        self.progress = progress
        self.tilt, self.cluster = prepare(settings, progress)
        self.port = free_port()
        self.env = tilt_env(self.cluster.kubeconfig, self.port)
        self.args = tiltfile_args(settings) + list(extra_args)  # e.g. --debug=app, --access=port-forward
        self.log_path = log_path or BUILD / "logs" / f"tilt-up-{self.port}.log"
        self.proc: Background | None = None

    def __enter__(self) -> TiltSession:
        argv = tilt_argv(self.tilt, "up", self.cluster, self.port, ["--stream=false", "--legacy=false"], self.args)
        self.proc = Background(argv, cwd=ROOT, env=self.env, log_path=self.log_path).start()
        try:
            self._wait_api()
        except BaseException:
            self.__exit__(None, None, None)  # never leave a tilt process or its objects behind
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=30)
        if not self.keep:
            self.down()

    def down(self) -> None:
        tilt_down(self.tilt, self.cluster, self.settings, self.args, self.env, out=lambda _line: None, capture=True)

    def log_tail(self, n: int = 40) -> str:
        return self.proc.tail(n) if self.proc else ""

    def _check_alive(self) -> None:
        if self.proc is not None and not self.proc.alive():
            raise UserError(f"tilt up exited with {self.proc.returncode}:\n{self.log_tail()}",
                            f"full log: {self.log_path}")

    def _answers(self) -> bool:
        self._check_alive()
        try:
            return bool(self.get("session", "Tiltfile"))
        except UserError:
            return False

    def _wait_api(self, timeout: float = 60) -> None:
        try:
            poll(self._answers, timeout=timeout, interval=0.5, what=f"tilt up answering on port {self.port}")
        except Timeout as err:
            raise UserError(f"{err.message}:\n{self.log_tail()}", f"full log: {self.log_path}") from None

    # -- state, through Tilt's own API server (`tilt get ... -o json`)
    def _tilt(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([self.tilt, *args, "--port", str(self.port)], capture_output=True, text=True,
                              env=self.env, timeout=30, check=check)

    def get(self, kind: str, name: str | None = None) -> dict:
        proc = self._tilt("get", kind, *([name] if name else []), "-o", "json", check=False)
        if proc.returncode != 0:
            raise UserError(f"`tilt get {kind} {name or ''}` failed: {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def set_args(self, args: list[str]) -> None:
        """New Tiltfile arguments for the running session (`tilt args`): Tilt re-runs the Tiltfile."""
        subprocess.run([self.tilt, "args", "--port", str(self.port), "--", *args],
                       check=True, capture_output=True, env=self.env, timeout=30)
        self.args = list(args)

    def trigger(self, resource: str) -> None:
        self._tilt("trigger", resource)

    def resource_status(self, name: str) -> dict:
        return self.get("uiresource", name).get("status") or {}

    def image_refs(self) -> dict[str, str]:
        """{image name: the ref Tilt deployed} (a new image build changes the ref's tag)."""
        return {item["metadata"]["name"]: (item.get("status") or {}).get("image", "")
                for item in self.get("imagemap").get("items") or []}

    def wait_ready(self, resources=SERVICE_RESOURCES, timeout: float = 600, poll_every: float = 2.0) -> float:
        """Wait until RESOURCES are built, deployed and ready; raise on a build error or timeout."""
        start = time.monotonic()
        said = [""]

        def ready() -> bool:
            self._check_alive()
            states = [(name, *self._state(name)) for name in resources]
            line = ", ".join(f"{n}: update {u}, runtime {r}" for n, u, r in states)
            if line != said[0]:
                self.progress(f"[{time.monotonic() - start:4.0f}s] {line}")
                said[0] = line
            return all(u == "ok" and r == "ok" for _n, u, r in states)

        try:
            poll(ready, timeout=timeout, interval=poll_every, what="Tilt resources ready")
        except Timeout:
            raise UserError(f"Tilt resources not ready after {timeout:.0f}s: {said[0]}\n{self.log_tail()}",
                            f"tilt log: {self.log_path}") from None
        return time.monotonic() - start

    def _state(self, name: str) -> tuple[str, str]:
        """(updateStatus, runtimeStatus) of a resource; a finished failed build raises."""
        try:
            st = self.resource_status(name)
        except UserError:
            st = {}
        history = st.get("buildHistory") or []
        if history and history[0].get("error") and not st.get("currentBuild", {}).get("startTime"):
            raise UserError(f"Tilt resource {name!r} failed to build: {history[0]['error']}",
                            f"tilt log: {self.log_path}")
        return st.get("updateStatus", "?"), st.get("runtimeStatus", "?")


# ------------------------------------------------------------------------------ HTTP through Services

def node_url(cluster, node_port: int, path: str) -> str:
    """URL of a NodePort Service on the node (the seed's `curl <node IP>:31001/...`)."""
    ips = cluster.node_ips()
    if not ips:
        raise UserError("no node has an InternalIP", "check `kubectl get nodes -o wide`")
    return f"http://{ips[0]}:{node_port}{path}"


def get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


# ------------------------------------------------------------------------------ the live edit

@dataclass(frozen=True)
class Tier:
    """Where one tier's probe field goes and how to read it back."""

    name: str  # Tilt resource name
    source: Path  # file edited
    function: str  # the view function whose jsonify(...) gets the field
    node_port: int
    path: str  # request path that reaches the view
    port: int  # container port (for pod IPs)
    selector: str  # pod label selector of the tier
    deployment: str


def _edited_tier(t: shape.Tier) -> Tier:
    return Tier(t.name, t.directory / t.view.file, t.view.function, t.node_port, t.check_path,
                t.port, selector_string(t.selector), t.deployment)


#: the tiers whose view (system.yaml `view`) the tests and benchmarks edit
TIERS = {name: _edited_tier(t) for name, t in shape.load().tiers.items() if t.view}


class SourceEdit:
    """Adds ``tilt_probe="<marker>"`` to the first ``jsonify(`` of a view function; restores the
    original on exit without clobbering anybody else's later edit of the file."""

    def __init__(self, tier: Tier):
        self.tier = tier
        self.path = tier.source
        self.original = self.path.read_text()
        match = re.search(rf"^def {re.escape(tier.function)}\(.*?jsonify\(", self.original, re.S | re.M)
        if not match:
            raise UserError(f"cannot find `jsonify(` in {tier.function}() of {self.path}",
                            "the benchmark edits that view; update `view` in system.yaml")
        self.at = match.end()
        self.written: str | None = None

    def text_with(self, marker: str) -> str:
        return f'{self.original[:self.at]}{PROBE_FIELD}="{marker}", {self.original[self.at:]}'

    def apply(self, marker: str) -> float:
        """Write the file with MARKER; returns the time (monotonic) right after the write."""
        self.written = self.text_with(marker)
        self.path.write_text(self.written)
        return time.monotonic()

    def restore(self) -> None:
        if self.written is None:
            return
        current = self.path.read_text()
        if current == self.written:
            self.path.write_text(self.original)
        else:  # somebody edited the file meanwhile: only take our insertion out again
            self.path.write_text(re.sub(rf'{PROBE_FIELD}="[^"]*", ', "", current, count=1))
        self.written = None

    def __enter__(self) -> SourceEdit:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def git_unchanged(path: Path) -> bool:
    """True when git sees no change to PATH (committed or not, the content is what it was)."""
    return subprocess.run(["git", "diff", "--quiet", "--", str(path)], cwd=ROOT).returncode == 0


def tier_pods(cluster, tier: Tier) -> list[dict]:
    return [p for p in cluster.list("v1", "Pod", label_selector=tier.selector)
            if not (p.get("metadata") or {}).get("deletionTimestamp")]


def pod_identity(pods: list[dict]) -> dict[str, int]:
    """{pod name: total container restarts} (a replaced pod changes the name)."""
    return {p["metadata"]["name"]: sum(cs.get("restartCount", 0) for cs in
                                       (p.get("status") or {}).get("containerStatuses") or [])
            for p in pods}


def probe_value(url: str, timeout: float = 1.0) -> str | None:
    """The probe field of URL's JSON answer: its value, None when absent, NO_ANSWER on failure."""
    try:
        body = get_json(url, timeout=timeout)
    except (OSError, ValueError, http.client.HTTPException):  # refused, reset, cut short mid-reload
        return NO_ANSWER
    return body.get(PROBE_FIELD) if isinstance(body, dict) else NO_ANSWER


def wait_for_marker(urls: list[str], marker: str | None, timeout: float = 120, interval: float = 0.02,
                    first_url: str | None = None) -> tuple[float, float]:
    """Poll until every URL answers with MARKER (None = without the field). Returns the monotonic
    times when FIRST_URL (default the first URL) first did and when all of them did."""
    first_url = first_url or urls[0]
    first: list[float] = []
    done: set[str] = set()

    def everywhere() -> float | None:
        for url in urls:
            if url not in done and probe_value(url) == marker:
                if url == first_url and not first:
                    first.append(time.monotonic())
                if url != first_url:
                    done.add(url)
        # the Service answer can come from any replica: confirm it answers with it again
        if first and len(done) == len(urls) - 1 and probe_value(first_url) == marker:
            return time.monotonic()
        return None

    try:
        answered_everywhere = poll(everywhere, timeout=timeout, interval=interval, what="the new code answering")
        return first[0], answered_everywhere  # first[0] is set by the time poll returns
    except Timeout:
        got = {u: probe_value(u) for u in urls}
        raise UserError(f"the new code did not answer within {timeout:.0f}s "
                        f"(wanted {PROBE_FIELD}={marker!r}; got {got})",
                        "see the Tilt log; is the dev server reloading?") from None


def wanted_replicas(cluster, tier: Tier) -> int:
    deployment = cluster.get("apps/v1", "Deployment", tier.deployment) or {}
    return int((deployment.get("spec") or {}).get("replicas", 1))


def tier_urls(session: TiltSession, tier: Tier) -> tuple[str, list[str]]:
    """(the Service URL on the node, [that URL] + one URL per replica's pod IP)."""
    service = node_url(session.cluster, tier.node_port, tier.path)
    pods = [f"http://{p['status']['podIP']}:{tier.port}{tier.path}"
            for p in tier_pods(session.cluster, tier) if (p.get("status") or {}).get("podIP")]
    want = wanted_replicas(session.cluster, tier)
    if len(pods) != want:
        raise UserError(f"{tier.name} runs {len(pods)} pod(s) with an IP, its Deployment wants {want}",
                        "is something else (another `invoke clean`/deploy) acting on the cluster?")
    return service, [service, *pods]
