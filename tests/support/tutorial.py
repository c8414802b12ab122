"""The tutorial's own Step 3 manifests (docs/first-steps.md), for the tests that show its flaw."""
from __future__ import annotations

from pathlib import Path

import yaml

FIRST_STEPS = Path(__file__).resolve().parents[2] / "docs" / "first-steps.md"
MARKERS = ("The manifest to use is as follows (`deploy1.yaml`):",
           "The final manifest `deploy2.yaml` is the one given previously with the addition")


def step3_manifests(refs: dict[str, str]) -> list[dict]:
    """deploy1.yaml and deploy2.yaml's additions as the tutorial gives them, with two changes: the
    images are REFS ({bare name: reference}: stlottini/* cannot be pulled here), and sto-dep gets a
    required pod anti-affinity, so its two replicas land on two nodes on every run, not most runs."""
    text = FIRST_STEPS.read_text()
    docs = [d for marker in MARKERS
            for d in yaml.safe_load_all(text[text.index(marker):].split("```", 2)[1]) if d]
    for d in docs:
        if d["kind"] == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                c["image"] = refs[c["image"].split("/")[-1].split(":")[0]]
    sto = next(d for d in docs if d["metadata"]["name"] == "sto-dep")
    sto["spec"]["template"]["spec"]["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"run": "sto-app"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    return docs
