"""Every relative link of the README and the docs points to a file that exists, and every #anchor
to a heading of that file (GitHub's heading ids)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: the project's own documents; docs/first-steps.md is the user's seed tutorial, kept as given
#: (its screenshot was never part of the repository), so its links are not checked
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "k8s" / "README.md",
                    *(p for p in (ROOT / "docs").glob("*.md") if p.name != "first-steps.md")])

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(?P<target>\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """TEXT without fenced blocks and code spans: links are only read where Markdown renders them."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    return [m.group("target") for m in (*INLINE_LINK.finditer(body), *REFERENCE_LINK.finditer(body))]


def slug(title: str) -> str:
    """GitHub's id for a heading: the rendered text, lower-cased, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link's text stays
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    ids = set()
    for m in HEADING.finditer(FENCE.sub("", text)):
        base = slug(m.group("title"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        ids.add(base if n == 0 else f"{base}-{n}")
    ids |= set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    return ids


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def broken_links(doc: Path) -> list[str]:
    problems = []
    for target in links(doc.read_text()):
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            problems.append(f"{target}: no such file {shown(dest)}")
        elif anchor:
            if dest.suffix != ".md":
                problems.append(f"{target}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(dest.read_text()):
                problems.append(f"{target}: no heading with the id #{anchor} in {shown(dest)}")
    return problems


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(doc):
    assert not broken_links(doc), f"{doc.relative_to(ROOT)}: " + "; ".join(broken_links(doc))


def test_the_docs_the_readme_promises_exist():
    for name in ("architecture", "local-cluster", "dev-loop", "benchmarks", "configuration", "reliability", "testing"):
        assert ROOT / "docs" / f"{name}.md" in DOCUMENTS


def test_slugs_follow_githubs_rule():
    assert slug("The tutorial's volume on several nodes") == "the-tutorials-volume-on-several-nodes"
    assert slug("Live update: `tilt up` vs a full rebuild") == "live-update-tilt-up-vs-a-full-rebuild"
    assert slug("Debug in the pod") == "debug-in-the-pod"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_links_in_code_are_not_links(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\n[ok](#title) `[code](missing.md)`\n\n```md\n[block](missing.md)\n```\n"
                   "[bad](missing.md) [web](https://example.org/x) [ref]: other.md#nowhere\n")
    assert broken_links(doc) == ["missing.md: no such file " + str(tmp_path / "missing.md")]
    (tmp_path / "other.md").write_text("# Somewhere\n")
    doc.write_text("[ref]: other.md#nowhere\n")
    assert broken_links(doc) == [f"other.md#nowhere: no heading with the id #nowhere in {tmp_path / 'other.md'}"]
