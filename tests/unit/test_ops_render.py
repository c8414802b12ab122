"""The rendered manifests (twotier.ops.render): the seed's objects and names, objects
that fit together, and the production basics on every workload. Rendering needs no cluster."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from twotier import shape
from twotier.errors import UserError
from twotier.kube import objects
from twotier.ops import render as manifests
from twotier.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings()
STAGES = tuple(shape.load().stages)
REFS = {
    "first-app": "localhost:5000/first-app:0123456789ab",
    "sto-img": "localhost:5000/sto-img:0123456789ab",
    "api-img": "localhost:5000/api-img:0123456789ab",
    "loader": "localhost:5000/loader:0123456789ab",
}
OVERLAYS = ["", "internal-storage", "seed-timing", "dev", "dev,internal-storage,seed-timing"]
SEED_OBJECTS = {  # (kind, name) in kustomize's order, which deploy applies
    "hello": [("Service", "s-f-webapp"), ("Deployment", "f-webapp")],
    "storage": [("Service", "in-svc"), ("PersistentVolume", "local-pv"), ("PersistentVolumeClaim", "sto-pvc"),
                ("Deployment", "sto-dep"), ("PodDisruptionBudget", "sto-pdb")],
    "full": [("Service", "in-svc"), ("Service", "out-svc"), ("PersistentVolume", "local-pv"),
             ("PersistentVolumeClaim", "sto-pvc"), ("Deployment", "api-dep"),
             ("Deployment", "sto-dep"), ("PodDisruptionBudget", "sto-pdb")],
}
GRACEFUL_TIMEOUT = 10  # services' default <PREFIX>_GRACEFUL_TIMEOUT (serving.py)


def render(stage, overlay="", settings=None, images=REFS):
    return manifests.render_stage(Settings.from_mapping(settings), stage, images=images, overlay=overlay)


def every_render():
    for stage in STAGES:
        for overlay in OVERLAYS:
            yield pytest.param(stage, overlay, id=f"{stage}-{overlay or 'base'}")


def by_name(objs, kind, name):
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def workloads(objs):
    return [o for o in objs if objects.pod_spec(o) is not None]


# ---------------------------------------------------------------------------------------------
# The seed's objects, names and order
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_stage_has_the_seed_objects_in_apply_order(stage):
    assert [(o["kind"], o["metadata"]["name"]) for o in render(stage)] == SEED_OBJECTS[stage]


def test_claim_and_volume_come_before_the_deployment_that_mounts_them():
    kinds = [o["kind"] for o in render("full")]
    assert kinds.index("PersistentVolume") < kinds.index("PersistentVolumeClaim") < kinds.index("Deployment")


def test_seed_storage_objects():
    objs = render("storage")
    pv, pvc = by_name(objs, "PersistentVolume", "local-pv"), by_name(objs, "PersistentVolumeClaim", "sto-pvc")
    assert pv["spec"]["hostPath"]["path"] == "/var/lib/twotier/kubetestpv"  # not under world-writable /tmp
    assert by_name(render("storage", "seed-volume-path"), "PersistentVolume",
                   "local-pv")["spec"]["hostPath"]["path"] == "/tmp/data/kubetestpv"  # asked for
    assert pv["spec"]["accessModes"] == ["ReadWriteMany"] == pvc["spec"]["accessModes"]
    assert pv["spec"]["storageClassName"] == "manual" == pvc["spec"]["storageClassName"]
    assert pv["spec"]["capacity"]["storage"] == "12Mi"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Mi"
    dep = by_name(objs, "Deployment", "sto-dep")
    assert dep["spec"]["replicas"] == 2
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "sto-app"
    assert {"name": "STO_STORAGE", "value": "/var/lib/storage"} in container["env"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["sto-app-pv"] == "/var/lib/storage"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["sto-app-pv"]["persistentVolumeClaim"]["claimName"] == "sto-pvc"
    svc = by_name(objs, "Service", "in-svc")
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"][0]["port"] == 5000 and svc["spec"]["ports"][0]["nodePort"] == 31000


def test_seed_selectors_and_labels_are_kept():
    objs = render("full") + render("hello")
    for kind, name, run in [("Deployment", "sto-dep", "sto-app"), ("Deployment", "api-dep", "api-app"),
                            ("Deployment", "f-webapp", "f-webapp")]:
        dep = by_name(objs, kind, name)
        assert dep["spec"]["selector"] == {"matchLabels": {"run": run}}  # minimal, stable selector
        assert dep["metadata"]["labels"]["run"] == run
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert labels["run"] == run
        assert {"app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of"} <= set(labels)
    for name, app in [("in-svc", "storage"), ("out-svc", "api"), ("s-f-webapp", "web")]:
        assert by_name(objs, "Service", name)["metadata"]["labels"]["app"] == app


def test_app_api_reaches_storage_through_in_svc_dns_name():
    dep = by_name(render("full"), "Deployment", "api-dep")
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STO_API"] == "http://in-svc.default.svc.cluster.local:5000"
    out = by_name(render("full"), "Service", "out-svc")["spec"]["ports"][0]
    assert (out["port"], out["nodePort"]) == (5001, 31001)


def test_hello_stage_is_the_seed_first_app():
    objs = render("hello")
    dep, svc = by_name(objs, "Deployment", "f-webapp"), by_name(objs, "Service", "s-f-webapp")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == REFS["first-app"]
    assert (svc["spec"]["type"], svc["spec"]["ports"][0]["port"], svc["spec"]["ports"][0]["nodePort"]) == \
        ("NodePort", 5000, 31000)


# ---------------------------------------------------------------------------------------------
# Cross-object consistency
# ---------------------------------------------------------------------------------------------

_UNITS = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity(text) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", str(text)).groups()
    return int(number) * _UNITS[unit]


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cross_object_problems(objs, namespace="default"):
    problems = []
    templates = {o["metadata"]["name"]: o for o in workloads(objs)}

    def pod_labels(o):
        return o["metadata"]["labels"] if o["kind"] == "Pod" else o["spec"]["template"]["metadata"]["labels"]

    for o in workloads(objs):
        if o["kind"] != "Pod" and not matches(o["spec"]["selector"]["matchLabels"], pod_labels(o)):
            problems.append(f"{o['metadata']['name']}: selector does not match its pod template labels")
        for c in objects.containers(o):
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                port = (c.get(probe) or {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports:
                    problems.append(f"{c['name']}: {probe} port {port} is not a container port")
        for vol in objects.pod_spec(o).get("volumes", []):
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and not any(p["kind"] == "PersistentVolumeClaim" and p["metadata"]["name"] == claim for p in objs):
                problems.append(f"{o['metadata']['name']}: volume {vol['name']} uses missing claim {claim}")
    node_ports: dict[int, str] = {}
    for svc in (o for o in objs if o["kind"] == "Service"):
        name = svc["metadata"]["name"]
        selected = [t for t in templates.values() if matches(svc["spec"].get("selector", {}), pod_labels(t))]
        if not selected:
            problems.append(f"Service {name} selects no pod template")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for t in selected:
                cports = [p for c in objects.pod_spec(t)["containers"] for p in c.get("ports", [])]
                if not any(target in (p.get("name"), p["containerPort"]) for p in cports):
                    problems.append(f"Service {name}: targetPort {target} is no container port of {t['metadata']['name']}")
            if "nodePort" in port:
                if svc["spec"].get("type") not in ("NodePort", "LoadBalancer"):
                    problems.append(f"Service {name}: nodePort on a {svc['spec'].get('type')} Service")
                if not 30000 <= port["nodePort"] <= 32767:
                    problems.append(f"Service {name}: nodePort {port['nodePort']} outside 30000-32767")
                if port["nodePort"] in node_ports:
                    problems.append(f"nodePort {port['nodePort']} used by {node_ports[port['nodePort']]} and {name}")
                node_ports[port["nodePort"]] = name
    for pdb in (o for o in objs if o["kind"] == "PodDisruptionBudget"):
        if not any(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels(t)) for t in templates.values()):
            problems.append(f"PodDisruptionBudget {pdb['metadata']['name']} selects no pod template")
    pvs = [o for o in objs if o["kind"] == "PersistentVolume"]
    for pvc in (o for o in objs if o["kind"] == "PersistentVolumeClaim"):
        spec = pvc["spec"]
        if not any(pv["spec"].get("storageClassName") == spec.get("storageClassName")
                   and set(spec["accessModes"]) <= set(pv["spec"]["accessModes"])
                   and quantity(spec["resources"]["requests"]["storage"]) <= quantity(pv["spec"]["capacity"]["storage"])
                   for pv in pvs):
            problems.append(f"PersistentVolumeClaim {pvc['metadata']['name']} can bind no PersistentVolume of the stage")
    for o in workloads(objs):
        for c in objects.containers(o):
            for env in c.get("env", []):
                if env["name"] != "STO_API":
                    continue
                m = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", env["value"])
                svc = next((s for s in objs if s["kind"] == "Service" and m and s["metadata"]["name"] == m.group(1)), None)
                if not m or svc is None or svc["metadata"]["name"] != "in-svc":
                    problems.append(f"STO_API={env['value']} does not name the in-svc Service")
                elif m.group(2) != namespace or int(m.group(3)) not in [p["port"] for p in svc["spec"]["ports"]]:
                    problems.append(f"STO_API={env['value']} has the wrong namespace or port")
    return problems


@pytest.mark.parametrize(("stage", "overlay"), list(every_render()))
def test_objects_fit_together(stage, overlay):
    assert cross_object_problems(render(stage, overlay)) == []


def test_cross_object_checks_catch_broken_stages():
    objs = render("full")
    broken = list(yaml.safe_load_all(manifests.to_yaml(objs)))
    by_name(broken, "Service", "out-svc")["spec"]["ports"][0]["nodePort"] = 31000
    by_name(broken, "Service", "out-svc")["spec"]["ports"][0]["targetPort"] = 5005
    by_name(broken, "PersistentVolumeClaim", "sto-pvc")["spec"]["resources"]["requests"]["storage"] = "20Mi"
    api = by_name(broken, "Deployment", "api-dep")["spec"]["template"]["spec"]["containers"][0]
    api["env"][0]["value"] = "http://out-svc.default.svc.cluster.local:5001"
    by_name(broken, "Deployment", "sto-dep")["spec"]["template"]["metadata"]["labels"]["run"] = "other"
    text = "\n".join(cross_object_problems(broken))
    for expected in ("nodePort 31000 used by", "targetPort 5005", "sto-pvc can bind no", "does not name the in-svc",
                     "sto-dep: selector does not match", "Service in-svc selects no pod template",
                     "sto-pdb selects no pod template"):
        assert expected in text


# ---------------------------------------------------------------------------------------------
# Production basics on every workload
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_every_workload_has_the_production_basics(stage):
    for dep in (o for o in render(stage) if o["kind"] == "Deployment"):
        name = dep["metadata"]["name"]
        spec = dep["spec"]
        assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}, name
        assert "minReadySeconds" not in spec, f"{name}: readiness probes replace the seed's minReadySeconds"
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in objects.containers(dep):
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), c["name"]
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
        (c,) = pod["containers"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["securityContext"]["runAsNonRoot"] is True and "add" not in c["securityContext"]["capabilities"]
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + GRACEFUL_TIMEOUT, name
        tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])


def test_no_container_runs_as_root_unless_the_volume_owner_component_asks():
    assert "initContainers" not in by_name(render("storage"), "Deployment", "sto-dep")["spec"]["template"]["spec"]
    pod = by_name(render("storage", "volume-owner"), "Deployment", "sto-dep")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    sc = init["securityContext"]
    assert sc["runAsUser"] == 0 and sc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert "chown 10001:10001 /var/lib/storage" in " ".join(init["command"])
    assert {m["name"] for m in init["volumeMounts"]} == {"sto-app-pv"}
    pv = by_name(render("storage", "volume-owner"), "PersistentVolume", "local-pv")
    assert pv["spec"]["hostPath"]["type"] == "DirectoryOrCreate"


def test_storage_tier_has_a_disruption_budget():
    pdb = by_name(render("storage"), "PodDisruptionBudget", "sto-pdb")
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"]["matchLabels"] == {"run": "sto-app"}


# ---------------------------------------------------------------------------------------------
# Components (overlay setting)
# ---------------------------------------------------------------------------------------------

def test_internal_storage_makes_in_svc_cluster_internal():
    svc = by_name(render("full", "internal-storage"), "Service", "in-svc")
    assert svc["spec"]["type"] == "ClusterIP" and "nodePort" not in svc["spec"]["ports"][0]
    assert by_name(render("full", "internal-storage"), "Service", "out-svc")["spec"]["type"] == "NodePort"
    assert render("hello", "internal-storage") == render("hello")


def test_seed_timing_restores_min_ready_seconds_everywhere():
    for stage in STAGES:
        deps = [o for o in render(stage, "seed-timing") if o["kind"] == "Deployment"]
        assert deps and all(d["spec"]["minReadySeconds"] == 120 for d in deps)


def test_dev_component_only_opens_the_root_filesystem_and_relaxes_liveness():
    base, dev = render("full"), render("full", "dev")
    for b, d in zip(base, dev):
        if b["kind"] == "Deployment":
            container = d["spec"]["template"]["spec"]["containers"][0]
            assert container["securityContext"]["readOnlyRootFilesystem"] is False
            container["securityContext"]["readOnlyRootFilesystem"] = True
            assert d["metadata"]["annotations"].pop("checkov.io/skip-dev").startswith("CKV_K8S_22=")
            # the second line of defence: liveness waits for the first answer and tolerates slow ones
            startup = container.pop("startupProbe")
            assert startup["httpGet"] == {"path": "/healthz", "port": "http"}
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
            live = container["livenessProbe"]
            assert (live["timeoutSeconds"], live["failureThreshold"]) == (5, 6)
            live["timeoutSeconds"], live["failureThreshold"] = 2, 3
        assert b == d


def test_overlay_comes_from_settings_and_unknown_names_fail():
    assert render("full", None, settings={"overlay": "internal-storage"}) == render("full", "internal-storage")
    with pytest.raises(UserError) as err:
        render("full", "internal-storage,nope")
    assert "nope" in err.value.message and "internal-storage" in err.value.hint


# ---------------------------------------------------------------------------------------------
# Images, namespace, YAML, errors
# ---------------------------------------------------------------------------------------------

def test_every_image_is_replaced_by_its_reference():
    for stage in STAGES:
        for o in workloads(render(stage)):
            for c in objects.containers(o):
                assert c["image"] in REFS.values() and c["imagePullPolicy"] == "IfNotPresent"
    assert manifests.render_loader(SETTINGS, REFS["loader"])[0]["spec"]["containers"][0]["image"] == REFS["loader"]


def test_digest_references_and_bare_names():
    dep = by_name(render("hello", images={"first-app": "reg.example:5000/me/first-app@sha256:" + "a" * 64}),
                  "Deployment", "f-webapp")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.example:5000/me/first-app@sha256:" + "a" * 64
    bare = by_name(render("hello", images={}), "Deployment", "f-webapp")
    assert bare["spec"]["template"]["spec"]["containers"][0]["image"] == "first-app"


def test_a_missing_image_reference_is_an_error():
    with pytest.raises(UserError) as err:
        render("full", images={"sto-img": REFS["sto-img"]})
    assert "api-img" in err.value.message


def test_default_images_are_the_content_derived_references_of_build():
    from twotier.images import build as images

    objs = manifests.render_stage(SETTINGS, "full")
    planned = {i.seed_name: i.ref for i in images.plan(SETTINGS, "full")}
    used = {c["image"] for o in workloads(objs) for c in objects.containers(o)}
    assert used == {planned["sto-img"], planned["api-img"]}


def test_other_namespace_moves_namespaced_objects_and_sto_api():
    objs = render("full", settings={"namespace": "demo"})
    for o in objs:
        if o["kind"] == "PersistentVolume":
            assert "namespace" not in o["metadata"]
        else:
            assert o["metadata"]["namespace"] == "demo"
    assert cross_object_problems(objs, namespace="demo") == []


def test_unknown_stage_is_an_error():
    with pytest.raises(UserError) as err:
        render("everything")
    assert "hello" in err.value.hint


def test_to_yaml_round_trips():
    objs = render("full")
    assert list(yaml.safe_load_all(manifests.to_yaml(objs))) == objs


def test_invoke_render_prints_what_deploy_applies():
    proc = subprocess.run([sys.executable, "-m", "invoke", "render", "--stage", "storage"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from twotier import settings as settingsmod

    settings = settingsmod.load().with_flags(stage="storage")  # as the task sees them
    assert proc.stdout == manifests.to_yaml(manifests.render_stage(settings, "storage"))


def test_what_clean_and_status_look_for_includes_every_components_objects():
    """A component's own objects (the autoscale HPA, the network-policy component's policies) are
    found by `invoke clean` and `invoke status` whatever today's overlay is."""
    objs = manifests.every_stage_objects(Settings.from_mapping({"overlay": ""}))
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("HorizontalPodAutoscaler", "api-dep") in kinds
    assert {k for k, _ in kinds} >= {"NetworkPolicy", "Deployment", "Service", "PersistentVolume", "Pod"}
    assert len(kinds) == len(objs)   # each object once, though several stages render it
