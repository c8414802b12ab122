"""The README's "Last validated on ..." line, written from what CI ran, never by hand.

The end-to-end tests record, for the release the local cluster runs, what the cluster itself
reports (`kubectl version`'s server gitVersion, the node's kubelet, containerd and OS) into
build/validated/kubernetes-<version>.json (tests/e2e/test_kubernetes_release.py). .ci/run, after
the whole suite on the default release and the matrix part on the oldest supported one, writes
the line from those records:

    python -m localcluster.validated --write README.md   # replace the line (CI)
    python -m localcluster.validated                     # print it
    python -m localcluster.validated --check README.md   # does the README say what was recorded?

Only records of releases CI runs count: the default (versions.env KUBERNETES_VERSION) and the
oldest supported minor's newest recorded patch.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from localcluster import versions

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "build" / "validated"
LINE = re.compile(r"^Last validated on .*?(?:\n(?!\n).*?)*$", re.M)  # the line and its wrapped continuation


def record(server_version: str, node_info: dict, *, records: Path | None = None, kind: str = "e2e") -> Path:
    """Record what the running cluster reports (from the e2e tests)."""
    v = versions.running() or versions.effective()
    data = {
        "kubernetes": server_version,
        "kubelet": node_info.get("kubeletVersion", ""),
        "container_runtime": node_info.get("containerRuntimeVersion", ""),
        "os": node_info.get("osImage", ""),
        "kernel": node_info.get("kernelVersion", ""),
        "etcd": v.get("ETCD_VERSION", ""),
        "coredns": v.get("COREDNS_VERSION", ""),
        "cgroup": "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "by": kind,
    }
    records = records or RECORDS
    records.mkdir(parents=True, exist_ok=True)
    path = records / f"kubernetes-{server_version}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def load(records: Path | None = None) -> list[dict]:
    out = []
    for p in sorted((records or RECORDS).glob("kubernetes-*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except ValueError:
            continue
    return out


def chosen(recs: list[dict], base: dict | None = None) -> list[dict]:
    """The records the line names: the default release, then the oldest supported minor's newest."""
    base = base or versions.defaults()
    default = [r for r in recs if r["kubernetes"] == base["KUBERNETES_VERSION"]]
    oldest = int(base["OLDEST_KUBERNETES_MINOR"].split(".")[1])
    older = sorted((r for r in recs if versions.minor(r["kubernetes"]) == oldest),
                   key=lambda r: int(r["kubernetes"].rsplit(".", 1)[1]))
    return default[:1] + older[-1:]


def line(recs: list[dict]) -> str:
    if not recs:
        raise SystemExit("no validation records in build/validated: run the e2e tests on the local cluster first")
    parts = []
    for r in recs:
        name, _, ver = r["container_runtime"].partition("://")
        runtime = f"{name} v{ver.lstrip('v')}"
        parts.append(f"**Kubernetes {r['kubernetes']}** ({runtime}, etcd {r['etcd']}, CoreDNS {r['coredns']}; "
                     f"{r['date']})")
    os_ = recs[0]["os"].replace("Debian GNU/Linux", "Debian").split(" (")[0]
    return f"Last validated on {' and '.join(parts)}, by CI on the local cluster ({os_}, cgroup {recs[0]['cgroup']})."


def write(readme: Path, text: str) -> bool:
    old = readme.read_text()
    if not LINE.search(old):
        raise SystemExit(f"{readme} has no 'Last validated on' line to replace")
    new = LINE.sub(lambda m: text, old, count=1)
    if new != old:
        readme.write_text(new)
    return new != old


def main(argv: list[str]) -> int:
    text = line(chosen(load()))
    if argv[:1] == ["--write"]:
        changed = write(Path(argv[1]), text)
        print(("updated: " if changed else "unchanged: ") + text)
    elif argv[:1] == ["--check"]:
        found = LINE.search(Path(argv[1]).read_text())
        if not found or " ".join(found.group(0).split()) != text:
            print(f"{argv[1]} does not say what CI recorded; expected:\n{text}", file=sys.stderr)
            return 1
        print(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
