"""Resource metrics for status and the autoscale component (twotier.ops.metrics), and the
component's rendered objects. No cluster: a fake one and the renderer."""
from __future__ import annotations

import pytest

from tests.unit.kubefake import FakeCluster
from twotier.errors import UserError
from twotier.ops import metrics
from twotier.ops import render as manifests
from twotier.settings import Settings

REFS = {"sto-img": "localhost:5000/sto-img:0123456789ab", "api-img": "localhost:5000/api-img:0123456789ab",
        "first-app": "localhost:5000/first-app:0123456789ab"}


@pytest.mark.parametrize("text, millis", [("12345678n", 12.345678), ("250u", 0.25), ("3m", 3), ("2", 2000),
                                          ("0", 0)])
def test_cpu_quantities_in_millicores(text, millis):
    assert metrics.millicores(text) == pytest.approx(millis)


@pytest.mark.parametrize("text, mib", [("20480Ki", 20), ("120Mi", 120), ("1Gi", 1024), ("1048576", 1)])
def test_memory_quantities_in_mib(text, mib):
    assert metrics.mebibytes(text) == pytest.approx(mib)


def test_pod_metrics_sum_the_containers():
    body = {"items": [{"metadata": {"name": "api-dep-1"}, "containers": [
        {"usage": {"cpu": "10000000n", "memory": "10240Ki"}}, {"usage": {"cpu": "5m", "memory": "10Mi"}}]}]}
    assert metrics.parse_pod_metrics(body) == {"api-dep-1": "cpu 15m, mem 20Mi"}


def test_pod_usage_is_empty_without_a_metrics_api():
    assert metrics.pod_usage(FakeCluster()) == {}  # the fake has no API client: like no metrics-server


def rendered(stage="full", overlay="autoscale"):
    return manifests.render_stage(Settings(), stage, images=REFS, overlay=overlay)


def apiservice(status):
    return {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "status": {"conditions": [{"type": "Available", "status": status, "reason": "FailedDiscoveryCheck",
                                       "message": "no response"}]}}


def test_autoscale_component_renders_an_hpa_for_api_dep_and_lets_it_own_replicas():
    objs = rendered()
    hpa = next(o for o in objs if o["kind"] == "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api-dep"}
    assert hpa["spec"]["minReplicas"] == 1 and 2 <= hpa["spec"]["maxReplicas"] <= 5
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] <= 120  # minutes, not 5
    api = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "api-dep")
    assert "replicas" not in api["spec"]
    res = api["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"]["cpu"] == "100m" and res["limits"]["cpu"] == "1000m"
    sto = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "sto-dep")
    assert sto["spec"]["replicas"] == 2  # the storage tier is not autoscaled
    assert not [o for o in rendered(overlay="") if o["kind"] == "HorizontalPodAutoscaler"]


def test_a_stage_without_hpa_needs_no_metrics():
    cluster = FakeCluster()
    metrics.check_autoscaling(cluster, rendered(overlay=""))
    assert cluster.calls == []


def test_an_hpa_without_metrics_server_fails_the_deploy_with_a_hint():
    with pytest.raises(UserError) as err:
        metrics.check_autoscaling(FakeCluster(), rendered())
    assert "serves no resource metrics" in err.value.args[0] and "nothing was changed" in err.value.args[0]
    assert "metrics-server" in err.value.hint and "cluster.up" in err.value.hint


def test_an_unavailable_metrics_api_fails_the_deploy_and_says_why():
    cluster = FakeCluster()
    cluster.put(apiservice("False"))
    with pytest.raises(UserError, match="not available: FailedDiscoveryCheck no response"):
        metrics.check_autoscaling(cluster, rendered())


def test_an_available_metrics_api_lets_the_deploy_go_on():
    cluster = FakeCluster()
    cluster.put(apiservice("True"))
    metrics.check_autoscaling(cluster, rendered())


def test_an_hpa_whose_target_the_stage_lacks_is_refused():
    cluster = FakeCluster()
    cluster.put(apiservice("True"))
    with pytest.raises(UserError, match="scales Deployment api-dep, which this stage does not deploy"):
        metrics.check_autoscaling(cluster, rendered(stage="storage"))
