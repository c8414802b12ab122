"""twotier.images.registry and deploy's preflight: images missing from their registry stop it before anything changes.

The registry is a tiny HTTP server on 127.0.0.1 playing the Registry API v2 manifest HEAD."""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubefake import FakeCluster, seed_full_objects

from twotier.errors import UserError
from twotier.images import registry as registrycheck
from twotier.ops import deploy, loader
from twotier.ops import render as manifests
from twotier.settings import Settings


class Registry(BaseHTTPRequestHandler):
    present = {("sto-img", "1")}
    auth = False
    seen = []

    def do_HEAD(self):
        self.seen.append((self.path, self.headers.get("Accept", "")))
        parts = self.path.split("/")  # /v2/<repo...>/manifests/<tag>
        repo, tag = "/".join(parts[2:-2]), parts[-1]
        code = 401 if self.auth else (200 if (repo, tag) in self.present else 404)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def registry():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Registry.seen = []
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    Registry.auth = False


@pytest.mark.parametrize("ref, parts", [
    ("localhost:5000/sto-img:abc", ("localhost:5000", "sto-img", "abc")),
    ("localhost:5000/team/sto-img:abc", ("localhost:5000", "team/sto-img", "abc")),
    ("registry.example:5000/a/b@sha256:00", ("registry.example:5000", "a/b", "sha256:00")),
    ("localhost/img", ("localhost", "img", "latest")),
    ("sto-img:1", None),
    ("stlottini/sto-img:1.0", None),  # Docker Hub shorthand: not checked
])
def test_split_image(ref, parts):
    assert registrycheck.split_image(ref) == parts


def test_loopback_registries_are_plain_http():
    assert registrycheck.manifest_url("localhost:5000", "a", "1") == "http://localhost:5000/v2/a/manifests/1"
    assert registrycheck.manifest_url("127.0.0.1:5000", "a", "1").startswith("http://")
    assert registrycheck.manifest_url("registry.example", "a", "1").startswith("https://")


def test_present_missing_and_unknown(registry):
    assert registrycheck.image_present(f"{registry}/sto-img:1") is True
    assert registrycheck.image_present(f"{registry}/sto-img:2") is False
    assert "manifest.v2+json" in Registry.seen[0][1]  # asks for manifests, not HTML
    Registry.auth = True
    assert registrycheck.image_present(f"{registry}/sto-img:1") is None  # can't tell: not blocking
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert registrycheck.image_present(f"127.0.0.1:{closed}/sto-img:1") is None


def test_images_of_walks_templates_and_init_containers():
    objs = seed_full_objects()
    objs[2]["spec"]["template"]["spec"]["initContainers"] = [{"name": "i", "image": "init:1"}]
    objs.append({"kind": "Pod", "spec": {"containers": [{"name": "l", "image": "loader:1"}]}})
    assert registrycheck.images_of(objs) == ["init:1", "img:abc", "loader:1"]


def test_deploy_stops_before_changing_anything_when_an_image_is_missing(registry):
    objs = seed_full_objects()
    objs[2]["spec"]["template"]["spec"]["containers"][0]["image"] = f"{registry}/sto-img:1"
    objs[4]["spec"]["template"]["spec"]["containers"][0]["image"] = f"{registry}/api-img:9"
    cluster = FakeCluster()
    with pytest.raises(UserError) as info:
        deploy.deploy_objects(cluster, objs, dry_run=False, timeout=10, out=lambda s: None)
    assert info.value.message == f"not in the registry: {registry}/api-img:9 (nothing was changed)"
    assert "invoke up" in info.value.hint
    assert cluster.count("apply") == 0 and cluster.count("create") == 0


def test_deploy_can_skip_the_image_check(registry):
    objs = [o for o in seed_full_objects() if o["kind"] != "Deployment"]
    cluster = FakeCluster()
    changes = deploy.deploy_objects(cluster, objs, dry_run=False, timeout=10, out=lambda s: None,
                                     check_images=False)
    assert {c.action for c in changes} == {"created"}


def test_dry_run_only_notes_missing_images(registry):
    objs = seed_full_objects()
    objs[4]["spec"]["template"]["spec"]["containers"][0]["image"] = f"{registry}/api-img:9"
    cluster, lines = FakeCluster(), []
    deploy.deploy_objects(cluster, objs, dry_run=True, timeout=10, out=lines.append)
    assert lines[0] == (f"note: not in the registry (yet): {registry}/api-img:9; a real deploy "
                        "would stop here: `invoke push` first")
    assert cluster.objects == {}
    assert lines[-1] == "dry run: 7 of 7 objects would change"


def test_loader_image_missing_is_said_before_creating_the_pod(registry, monkeypatch):
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "loader"},
                "spec": {"containers": [{"name": "loader", "image": f"{registry}/loader:7"}]}}
    monkeypatch.setattr(manifests, "loader_pod", lambda s, ref=None: manifest)
    cluster = FakeCluster()
    with pytest.raises(UserError, match=f"the loader image is not in the registry: {registry}/loader:7") as info:
        loader.start_loader(cluster, Settings())
    assert "invoke push" in info.value.hint
    assert [c[0] for c in cluster.calls] == ["get"]  # looked for a running loader, created nothing
