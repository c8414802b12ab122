"""system.yaml against the manifests: every stage, alone and with each component of k8s/components,
rendered by kustomize (twotier.ops.render), names the objects system.yaml declares, with its
selectors, images, ports and NodePorts; the loader pod too. A manifest and system.yaml that drift
apart fail here, not at deploy time."""
from __future__ import annotations

import pytest

from twotier import shape
from twotier.kube.objects import containers, dig, labels
from twotier.ops import render
from twotier.settings import Settings

SYSTEM = shape.load()
SETTINGS = Settings()
RENDERS = [(stage, component) for stage in SYSTEM.stages for component in ["", *render.available_components()]]


def find(objs, kind, name):
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
    return found[0]


def tier_problems(objs, tier: shape.Tier) -> list[str]:
    dep, svc = find(objs, "Deployment", tier.deployment), find(objs, "Service", tier.service)
    problems = []
    if dig(dep, "spec.selector.matchLabels") != tier.selector:
        problems.append(f"{tier.deployment} selects {dig(dep, 'spec.selector.matchLabels')}, not {tier.selector}")
    if not tier.selector.items() <= dig(dep, "spec.template.metadata.labels", {}).items():
        problems.append(f"{tier.deployment}'s pods lack the labels {tier.selector}")
    main = dig(dep, "spec.template.spec.containers")[0]
    if main["image"] != tier.image:
        problems.append(f"{tier.deployment} runs {main['image']}, not {tier.image}")
    named = {p.get("name"): p["containerPort"] for p in main.get("ports") or []}
    if tier.port not in named.values():
        problems.append(f"{tier.deployment} has no container port {tier.port}: {named}")
    if dig(svc, "spec.selector") != tier.selector:
        problems.append(f"{tier.service} selects {dig(svc, 'spec.selector')}, not {tier.selector}")
    (port,) = dig(svc, "spec.ports")
    target = port.get("targetPort", port["port"])
    if port["port"] != tier.port or named.get(target, target) != tier.port:
        problems.append(f"{tier.service} serves {port['port']} -> {target}, not {tier.port}")
    if dig(svc, "spec.type") == "NodePort" and port.get("nodePort") != tier.node_port:
        problems.append(f"{tier.service} has NodePort {port.get('nodePort')}, not {tier.node_port}")
    for used in map(SYSTEM.tier, tier.uses):
        env = {e["name"]: e.get("value", "") for e in main.get("env") or []}
        address = env.get(f"{used.env_prefix}_API", "")
        if f"//{used.service}." not in address or not address.endswith(f":{used.port}"):
            problems.append(f"{tier.deployment} reaches {used.name} at {address!r}, not {used.service}:{used.port}")
    return problems


@pytest.mark.parametrize(("stage", "component"), RENDERS)
def test_each_render_names_what_system_yaml_declares(stage, component):
    objs = render.render_stage(SETTINGS, stage, images={}, overlay=[component] if component else [])
    tiers = SYSTEM.stage(stage).tiers
    problems = [p for tier in tiers for p in tier_problems(objs, tier)]
    for kind, attr in (("Deployment", "deployment"), ("Service", "service")):
        extra = {o["metadata"]["name"] for o in objs if o["kind"] == kind} - {getattr(t, attr) for t in tiers}
        if extra:
            problems.append(f"{kind}s {sorted(extra)} belong to no tier of stage {stage} in system.yaml")
    key, value = SYSTEM.label
    problems += [f"{o['kind']} {o['metadata']['name']} lacks {key}={value}" for o in objs if labels(o).get(key) != value]
    assert not problems, "\n".join(problems)


def test_the_nodeport_service_of_each_tier_is_reachable_on_its_declared_port():
    """Without components every tier's Service is a NodePort on system.yaml's node_port (the
    tutorial's 31000/31001)."""
    for stage in SYSTEM.stages.values():
        objs = render.render_stage(SETTINGS, stage.name, images={}, overlay=[])
        for tier in stage.tiers:
            svc = find(objs, "Service", tier.service)
            assert dig(svc, "spec.type") == "NodePort", tier.service
            assert svc["spec"]["ports"][0]["nodePort"] == tier.node_port


def test_the_loader_pod_is_system_yamls():
    pod = render.loader_pod(SETTINGS, ref="")
    assert pod["metadata"]["name"] == SYSTEM.loader.pod
    assert SYSTEM.loader.selector.items() <= labels(pod).items()
    assert [c["image"] for c in containers(pod)] == [SYSTEM.loader.image]


def test_a_drifted_manifest_is_caught():
    objs = render.render_stage(SETTINGS, "full", images={}, overlay=[])
    app = SYSTEM.tier("app")
    svc = find(objs, "Service", app.service)
    svc["spec"]["ports"][0]["nodePort"] = 31999
    svc["spec"]["selector"] = {"run": "other"}
    problems = tier_problems(objs, app)
    assert any("31999" in p for p in problems) and any("selects {'run': 'other'}" in p for p in problems)
