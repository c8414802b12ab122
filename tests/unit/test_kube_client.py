"""twotier.kube.client: which kubeconfig and context we use, the safety rule, and fast clear failures.

The API-server faults use real sockets on 127.0.0.1: a closed port, a server that accepts and
never answers, and a tiny HTTP server that plays the API's /version and namespace answers.
"""
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from twotier.errors import UserError
from twotier.kube import client as kube
from twotier.ports import free_port


def write_kubeconfig(path, contexts, current=None):
    """contexts: {name: server url}."""
    cfg = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": f"c-{n}", "cluster": {"server": url}} for n, url in contexts.items()],
        "users": [{"name": "u", "user": {"token": "t0k3n"}}],
        "contexts": [{"name": n, "context": {"cluster": f"c-{n}", "user": "u"}} for n in contexts],
    }
    if current:
        cfg["current-context"] = current
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def settings(kubeconfig, **kw):
    return kube.Target(kubeconfig=kubeconfig, allowed_contexts=("twotier-local",), api_timeout=1, **kw)


# --- the safety rule -------------------------------------------------------------------------
@pytest.mark.parametrize("name, allowed", [
    ("twotier-local", True), ("kind-kind", True), ("kind-dev", True), ("k3d-mycluster", True),
    ("minikube", True), ("docker-desktop", True), ("rancher-desktop", True),
    ("gke_prod_europe-west1_main", False), ("arn:aws:eks:eu-west-1:1:cluster/prod", False),
    ("kind", False), ("minikube-prod", False), ("production", False), ("", False),
])
def test_context_is_local(name, allowed):
    assert kube.context_is_local(name, ["twotier-local"]) is allowed


def test_allow_context_flag_admits_one_more():
    assert kube.context_is_local("staging", ["twotier-local"], ["staging"])
    assert not kube.context_is_local("prod", ["twotier-local"], ["staging"])


def test_refusal_names_the_context_and_the_way_out(tmp_path):
    listener = socket.socket()  # the "prod" API server: it must never see a connection
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        path = write_kubeconfig(tmp_path / "kc", {"prod": url}, current="prod")
        with pytest.raises(UserError) as info:
            kube.connect(settings(kubeconfig=path))
        with pytest.raises(BlockingIOError):
            listener.accept()  # refused before any network call
    finally:
        listener.close()
    assert "refusing to act on kube context 'prod'" in info.value.message
    assert "--allow-context prod" in info.value.hint


# --- which kubeconfig ------------------------------------------------------------------------
def test_kubeconfig_precedence(tmp_path, monkeypatch):
    """The setting, then $KUBECONFIG, then the local cluster's (when it exists), then ~/.kube/config."""
    local = tmp_path / "local-kubeconfig"
    local.write_text("x")
    env = {"KUBECONFIG": "/env/kubeconfig"}
    assert kube.resolve_kubeconfig("/set/kc", str(local), env) == "/set/kc"  # the project's setting
    # An explicit KUBECONFIG wins over the local cluster, even one that does not exist
    assert kube.resolve_kubeconfig("", str(local), env) == "/env/kubeconfig"
    assert kube.resolve_kubeconfig("", str(local), {"KUBECONFIG": "/nonexistent"}) == "/nonexistent"
    # Nothing set: the local cluster is the default, then ~/.kube/config
    assert kube.resolve_kubeconfig("", str(local), {}) == str(local)
    assert kube.resolve_kubeconfig("", str(local), {"KUBECONFIG": ""}) == str(local)  # empty = not set
    local.unlink()  # local cluster not built
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kube.resolve_kubeconfig("", str(local), {}) == str(tmp_path / ".kube" / "config")


def test_an_explicit_kubeconfig_that_does_not_exist_is_an_error_not_the_local_cluster(tmp_path, monkeypatch):
    """`KUBECONFIG=/nonexistent invoke clean` must not clean the local cluster and exit 0."""
    from localcluster import layout
    from twotier.ops.cluster import connect
    from twotier.settings import Settings

    local = write_kubeconfig(tmp_path / "local", {"twotier-local": "https://127.0.0.1:1"},
                             current="twotier-local")
    monkeypatch.setattr(layout, "KUBECONFIG", local)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nonexistent"))
    with pytest.raises(UserError) as info:
        connect(Settings())
    assert f"no kubeconfig at {tmp_path / 'nonexistent'}" in info.value.message

def test_no_kubeconfig_is_a_clear_error(tmp_path):
    with pytest.raises(UserError) as info:
        kube.connect(settings(kubeconfig=str(tmp_path / "missing")))
    assert "no kubeconfig at" in info.value.message
    assert "invoke cluster.up" in info.value.hint


def test_garbage_kubeconfig_is_a_clear_error(tmp_path):
    bad = tmp_path / "kc"
    bad.write_text("this: [is not\n")
    with pytest.raises(UserError, match="cannot read kubeconfig"):
        kube.connect(settings(kubeconfig=str(bad)))


def test_wrong_context_lists_the_known_ones(tmp_path):
    path = write_kubeconfig(tmp_path / "kc", {"twotier-local": "https://127.0.0.1:1",
                                              "kind-a": "https://127.0.0.1:1"}, current="kind-a")
    with pytest.raises(UserError) as info:
        kube.connect(settings(kubeconfig=path, context="kind-typo"))
    assert "context 'kind-typo' is not in kubeconfig" in info.value.message
    assert "kind-a, twotier-local" in info.value.hint


def test_current_context_is_used_when_none_configured(tmp_path):
    path = write_kubeconfig(tmp_path / "kc", {"twotier-local": "u", "kind-a": "u"}, current="kind-a")
    assert kube.choose_context(path, "") == "kind-a"
    assert kube.choose_context(path, "twotier-local") == "twotier-local"


def test_no_current_context(tmp_path):
    path = write_kubeconfig(tmp_path / "kc", {"kind-a": "u"})
    with pytest.raises(UserError, match="has no current context"):
        kube.choose_context(path, "")


# --- unreachable / hung / refusing API servers ------------------------------------------------
def test_closed_port_fails_within_seconds(tmp_path):
    path = write_kubeconfig(tmp_path / "kc", {"twotier-local": f"https://127.0.0.1:{free_port()}"},
                            current="twotier-local")
    with pytest.raises(UserError) as info:
        kube.connect(settings(kubeconfig=path))
    assert "is unreachable" in info.value.message and "twotier-local" in info.value.message
    assert "invoke cluster.up" in info.value.hint


def test_hung_server_fails_after_the_api_timeout(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts connections (kernel backlog) but never answers
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        path = write_kubeconfig(tmp_path / "kc", {"twotier-local": url}, current="twotier-local")
        with pytest.raises(UserError, match="is unreachable"):
            kube.connect(settings(kubeconfig=path))  # api_timeout = 1: pytest-timeout catches a hang
    finally:
        listener.close()


class FakeApi(BaseHTTPRequestHandler):
    namespaces = {"default"}
    version_status = 200

    def do_GET(self):
        if self.path.startswith("/version"):
            self.reply(self.version_status, {"major": "1", "minor": "34", "gitVersion": "v1.34.4"}
                       if self.version_status == 200 else {"kind": "Status", "message": "Unauthorized"})
        elif self.path.startswith("/api/v1/namespaces/"):
            name = self.path.rsplit("/", 1)[1]
            if name in self.namespaces:
                self.reply(200, {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name}})
            else:
                self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "message": f'namespaces "{name}" not found', "code": 404})
        else:
            self.reply(404, {})

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_api(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield write_kubeconfig(tmp_path / "kc", {"twotier-local": url}, current="twotier-local")
    server.shutdown()
    FakeApi.version_status = 200


def test_connect_ok(fake_api):
    cluster = kube.connect(settings(kubeconfig=fake_api))
    assert cluster.context == "twotier-local"
    assert cluster.namespace == "default"
    assert cluster.field_manager == "twotier"
    assert cluster.kubectl_args() == ["--kubeconfig", fake_api, "--context", "twotier-local",
                                      "--namespace", "default"]


def test_missing_namespace(fake_api):
    with pytest.raises(UserError) as info:
        kube.connect(settings(kubeconfig=fake_api, namespace="nope"))
    assert "namespace 'nope' does not exist in context 'twotier-local'" in info.value.message
    assert "kubectl create namespace nope" in info.value.hint


def test_namespace_check_can_be_skipped(fake_api):
    assert kube.connect(settings(kubeconfig=fake_api, namespace="nope"),
                        check_namespace=False).namespace == "nope"


def test_rejected_credentials(fake_api):
    FakeApi.version_status = 401
    with pytest.raises(UserError, match="refused our credentials"):
        kube.connect(settings(kubeconfig=fake_api))


def test_describe_api_error_uses_the_status_message():
    class Err:
        status = 422
        body = json.dumps({"message": 'Service "in-svc" is invalid'})
        reason = "Unprocessable Entity"
    assert kube.describe_api_error(Err()) == 'Service "in-svc" is invalid (HTTP 422)'
    Err.body = "not json"
    assert kube.describe_api_error(Err()) == "Unprocessable Entity (HTTP 422)"


def test_owned_needs_the_project_label():
    assert kube.owned({"metadata": {"labels": {"app.kubernetes.io/part-of": "twotier"}}})
    assert not kube.owned({"metadata": {"labels": {"app.kubernetes.io/part-of": "other"}}})
    assert not kube.owned({"metadata": {}})
    assert not kube.owned(None)


def test_kubectl_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="kubectl was not found") as info:
        kube.kubectl_binary("/nonexistent/kubectl")
    assert "invoke cluster.up" in info.value.hint
