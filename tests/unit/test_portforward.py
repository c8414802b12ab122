"""twotier.kube.portforward without a cluster: the kubectl command line, reading
the local port kubectl picked, and a forward that cannot start (a fake kubectl script)."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from twotier.errors import UserError
from twotier.kube import portforward


@dataclass
class FakeCluster:
    context: str = "twotier-local"
    namespace: str = "default"
    kubeconfig: str = "/tmp/kubeconfig"

    def kubectl_args(self):
        return ["--kubeconfig", self.kubeconfig, "--context", self.context, "--namespace", self.namespace]

    def kubectl_env(self):
        return {"KUBECONFIG": self.kubeconfig}


def fake_kubectl(tmp_path, body: str) -> str:
    script = tmp_path / "kubectl"
    script.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_argv_targets_the_service_on_loopback_only():
    fwd = portforward.PortForward(FakeCluster(), "out-svc", 5001, kubectl="kubectl")
    assert fwd.kubectl_argv() == ["kubectl", "--kubeconfig", "/tmp/kubeconfig", "--context", "twotier-local",
                          "--namespace", "default", "port-forward", "svc/out-svc", ":5001",
                          "--address", "127.0.0.1"]
    assert portforward.PortForward(FakeCluster(), "in-svc", 5000, 15000, kubectl="k").kubectl_argv()[-3] == "15000:5000"


def test_the_local_port_comes_from_kubectls_output(tmp_path):
    kubectl = fake_kubectl(tmp_path, "print('Forwarding from 127.0.0.1:43210 -> 5000', flush=True)\n"
                                     "print('Forwarding from [::1]:43210 -> 5000', flush=True)\ntime.sleep(60)")
    with portforward.PortForward(FakeCluster(), "in-svc", 5000, kubectl=kubectl) as fwd:
        assert fwd.local_port == 43210 and fwd.url == "http://127.0.0.1:43210"
        assert fwd.alive()
    assert not fwd.alive()


def test_a_forward_that_cannot_start_is_a_clear_error(tmp_path):
    kubectl = fake_kubectl(tmp_path, "print('error: services \"in-svc\" not found', flush=True)\nsys.exit(1)")
    with pytest.raises(UserError) as err:
        portforward.PortForward(FakeCluster(), "in-svc", 5000, kubectl=kubectl, start_timeout=10).start()
    assert 'services "in-svc" not found' in err.value.message
    assert "invoke status" in err.value.hint
