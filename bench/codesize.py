"""Issue 23's own effect on the size of the product code, from git alone.

Run: ``.venv/bin/python -m bench.codesize`` (``--commits`` adds one row per commit).

The product is the Python under ``PRODUCT`` (what issue 23 measures: tasks.py, twotier/, services/,
localcluster/). It prints the product's lines at ``BASE`` and at HEAD, then every commit since
``BASE`` that touched the product, summed by the issue ``ISSUE_OF`` gives it, from
``git show --numstat --no-renames`` over the product paths: code moved out of the product (bench/,
tests/support/) counts as removed from it. A commit missing from ``ISSUE_OF`` is reported as
unclassified, so a new commit never slips silently into either sum.
"""
from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

from twotier.shape import ROOT
from twotier.tables import table

BASE = "50adff7"
PRODUCT = ("tasks.py", "twotier", "services", "localcluster")

#: commit -> issue, by what the commit does (its message and the product paths it touches).
#: "23" is "One idea in one place"; "23 mixed" also brings behaviour of another issue, so it is
#: summed apart. Other labels name the feature a commit adds or the fix it makes.
ISSUE_OF = {
    "95a8359": "storage-tier defenses",
    "6101f02": "23 mixed",  # one exact-count mechanism, plain requests/urllib3 retries instead of a
                            # hand-written watchdog and adapter; also bounded answers, public errors
    "c10e33a": "23",  # bench/ and tests/support/ out of twotier/, one process runner, one port module
    "22256c2": "23",  # kube/objects.py, waits through poll(), one image-reference parser
    "8ceb158": "pod security",
    "7830217": "deps (pip-tools tasks)",
    "f7ebfb9": "23",  # one error class
    "b1cb00b": "autoscale / metrics-server",
    "18dda80": "cluster addons",
    "6ca2a4f": "invoke load",
    "2c1d464": "invoke bench",
    "bebd6dc": "23",  # the loader pod's name and the at-rest environment from system.yaml
    "b9fa0e8": "cluster addons",
    "2f3abba": "Kubernetes release selection",
    "2514a49": "23",  # smoke's hand-written retry loops through poll()
    "b704839": "23",  # shape's selector_string duplicate removed
    "450985f": "lint: schemas of two releases",
    "d17dc47": "CI matrix (release check)",
    "7865d5f": "fix: project label on component objects",
    "18d5d34": "23",  # ports through psutil instead of hand-read /proc tables
    "ce277a5": "invoke bench",
    "ded77c9": "23",  # unused properties removed
    "d17b573": "host volume",
    "243fe7a": "23",  # object reads through kube.objects
    "ab63e72": "23",  # code only tests used removed
    "98b2535": "fix: loader image",
    "0540a31": "kubernetes 37 client",
    "b6a5d5a": "Kubernetes release selection",
    "3b0611a": "kubernetes 37 client",
    "06656f8": "Kubernetes release selection",
    "ff88f53": "fix: first-use tilt",
    "2607598": "dev server on granian",
    "d64bf93": "invoke bench",
    "b48ebc8": "23",  # devserver: the why to docs/dev-loop.md, watchdog's handler used directly
    "3d87614": "dev server on granian",
    "6570149": "Kubernetes release selection",
    "5754406": "kind provider (19)",
    "0301fab": "kind provider (19)",
    "f96407b": "network-policy addon",
    "f993e20": "kind provider (19)",
    "36bde6d": "Kubernetes release selection",
    "2f3f484": "host volume",
    "282eeb4": "kind provider (19)",
    "3a6e46c": "Kubernetes release selection",
    "0d07e21": "cluster addons",
    "bf77ea9": "fix: cluster.down with quoted rule comments",
    "9b434af": "23",  # one batched run for createlist/clear, one env-number reader
    "cc07527": "23",  # a single delete through the batch's delete
    "94831eb": "fix: debugger test's break line",
    "8749462": "23",  # devserver's docstring points to docs/dev-loop.md
    "435ac1f": "23",  # tiltrun's docstring points to docs/dev-loop.md
    "1821982": "23",  # one Ready-condition reader; a dead function removed
    "a50a141": "addons on kind (20)",
    "3787229": "addons on kind (20)",
    "1a3c95a": "addons on kind (20)",  # review: addon_manifests (dead) removed
    "309f92c": "23",  # one provider choice for the cluster.* tasks
    "410d1f1": "23",  # Smoke.full, only tests called it
    "4e36afe": "23",  # lint reads pod specs through kube.objects
    "f57d903": "23",  # rollout: a one-caller helper folded in
    "959fa95": "kind load (19)",
    "97af4b8": "kind provider (19)",
    "bbee024": "multi-node pod addresses",
    "bff6357": "fix: clean/status find every component's objects",
    "105c85b": "port-forward access",
    "2ca582a": "port-forward access",
    "505ef3c": "kind provider (19)",
    "83403b5": "fix: the loader's tag as push makes it",
    "faaece1": "kind provider (19)",
    "439d740": "kind provider (19)",
    "273e3ef": "23",  # kube client: _ns alone, pod logs' optional arguments as they are
    "ad0defe": "23",  # apply.diff_paths: one loop for both list shapes
    "dbfa881": "23",  # tiltrun: one import of localcluster.layout
    "eb8a0a3": "23",  # localcluster.argv: the control loops' shared flags once
    "4faba63": "23",  # smoke: equals_items like its siblings, host_via an argument
    "b844437": "23",  # choose_context: no unread result
    "a551541": "host volume",
    "b2c7bf0": "23",  # rollout.event_lines as one comprehension
    "e75e04b": "port-forward access",
    "030c545": "23",  # servers: Background's behaviour said in twotier.proc alone
    "ff3414b": "23",  # rollout: module docstring without what the code's own docstrings say
    "9459d1b": "23",  # cleanup.phase_of with next()
    "1a052e9": "23",  # parameters nobody passes
    "c9ae74a": "23",  # one live_namespace() for apply and cleanup
    "6b94cdd": "23",  # status_rows: suppressed exceptions
    "1b01ca3": "23",  # one 404 rule (_call's missing_ok) for get and delete
    "cee71ea": "23",  # docstrings that repeated docs/ (configuration.md, k8s/README.md,
    "0198d6f": "23",  # local-cluster.md) or the code's own docstrings and comments
    "89b7d70": "23",
    "8617e42": "23",
    "8432362": "23",
    "8760ca4": "23",
    "2ec42c4": "23",
}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def product_lines(rev: str) -> int:
    files = [f for f in git("ls-tree", "-r", "--name-only", rev, "--", *PRODUCT).splitlines()
             if f.endswith(".py")]
    return sum(len(git("show", f"{rev}:{f}").splitlines()) for f in files)


def numstat(commit: str) -> tuple[int, int]:
    """Python lines the commit added to and removed from the product."""
    added = removed = 0
    out = git("show", "--numstat", "--no-renames", "--format=", commit, "--", *PRODUCT)
    for line in out.splitlines():
        plus, minus, path = line.split("\t")
        if path.endswith(".py") and plus != "-":
            added, removed = added + int(plus), removed + int(minus)
    return added, removed


def issue_of(commit: str) -> str:
    return next((issue for short, issue in ISSUE_OF.items() if commit.startswith(short)), "unclassified")


def main(argv: list[str]) -> None:
    base, head = product_lines(BASE), product_lines("HEAD")
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    rows = []
    for commit in git("rev-list", "--reverse", f"{BASE}..HEAD").split():
        added, removed = numstat(commit)
        if added or removed:
            issue = issue_of(commit)
            sums[issue] = [sums[issue][0] + 1, sums[issue][1] + added, sums[issue][2] + removed]
            rows.append((commit[:7], issue, f"+{added}", f"-{removed}", git("log", "-1", "--format=%s", commit)[:70]))
    if "--commits" in argv:
        print(table(["commit", "issue", "added", "removed", "subject"], rows), end="\n\n")
    print(table(["issue", "commits", "added", "removed", "net"],
                [(k, n, a, r, a - r) for k, (n, a, r) in sorted(sums.items(), key=lambda kv: kv[1][1] - kv[1][2])]),
          end="\n\n")
    strict = sums["23"][1] - sums["23"][2]
    mixed = strict + sums["23 mixed"][1] - sums["23 mixed"][2]
    total = sum(a - r for _, a, r in sums.values())
    print(f"product Python lines: {base} at {BASE}, {head} at HEAD ({head - base:+d}; "
          f"the commits' numstat sums to {total:+d})")
    print(f"issue 23 alone: {strict:+d} lines = {100 * strict / base:+.1f}% of {base}")
    print(f"issue 23 with its mixed commits: {mixed:+d} lines = {100 * mixed / base:+.1f}% (target -20%: {-base // 5})")
    if "unclassified" in sums:
        print(f"unclassified commits: {sums['unclassified'][0]} (add them to ISSUE_OF)")


if __name__ == "__main__":
    main(sys.argv[1:])
