"""The `network-policy` component (k8s/components/network-policy), rendered: who may reach the
storage API, what the application tier may reach, and CKV2_K8S_6's suppression gone only where a
policy now selects the workload. No cluster."""
from __future__ import annotations

import pytest

from twotier.ops import render as manifests
from twotier.settings import Settings

REFS = {"sto-img": "localhost:5000/sto-img:0123456789ab", "api-img": "localhost:5000/api-img:0123456789ab",
        "first-app": "localhost:5000/first-app:0123456789ab"}


def rendered(stage="full", overlay="network-policy"):
    return manifests.render_stage(Settings(), stage, images=REFS, overlay=overlay)


def by_name(objs, kind, name):
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def test_the_storage_api_admits_only_the_app_tier_and_the_loader_on_its_port():
    objs = rendered()
    sto = by_name(objs, "NetworkPolicy", "sto-allow-clients")
    sto_pods = by_name(objs, "Deployment", "sto-dep")["spec"]["template"]["metadata"]["labels"]
    assert sto["spec"]["podSelector"]["matchLabels"].items() <= sto_pods.items()
    assert sto["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = sto["spec"]["ingress"]
    assert [p["podSelector"]["matchLabels"] for p in rule["from"]] == [{"run": "api-app"}, {"run": "loader"}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]


def test_the_app_tier_serves_anyone_and_reaches_only_storage_and_dns():
    objs = rendered()
    api = by_name(objs, "NetworkPolicy", "api-allow-clients")
    assert api["spec"]["podSelector"]["matchLabels"] == {"run": "api-app"}
    assert api["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 5001}]}]
    to_storage, to_dns = api["spec"]["egress"]
    assert to_storage["to"] == [{"podSelector": {"matchLabels": {"run": "sto-app"}}}]
    assert to_dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert {p["port"] for p in to_dns["ports"]} == {53}


@pytest.mark.parametrize("stage, name", [("full", "api-dep"), ("full", "sto-dep"), ("storage", "sto-dep")])
def test_the_ckv2_k8s_6_suppression_goes_only_where_a_policy_selects_the_workload(stage, name):
    def skips(objs):
        return [v for k, v in (by_name(objs, "Deployment", name)["metadata"].get("annotations") or {}).items()
                if k.startswith("checkov.io/skip")]
    assert any(v.startswith("CKV2_K8S_6=") for v in skips(rendered(stage, overlay="")))
    with_policy = skips(rendered(stage))
    assert not any(v.startswith("CKV2_K8S_6=") for v in with_policy) and with_policy  # the other skips stay


def test_the_hello_stage_keeps_its_suppression():
    objs = rendered("hello")
    notes = by_name(objs, "Deployment", "f-webapp")["metadata"]["annotations"].values()
    assert any(v.startswith("CKV2_K8S_6=") for v in notes)
