"""test_docs.py -- the documents hold together: every relative link in
README.md, CHANGELOG.md and docs/ points at a file (and a heading) that
exists; CHANGELOG.md keeps the Keep a Changelog layout and its newest
release is the version circled, openapi.yaml and circle.pc report; and no
document or source file speaks of how it was written (sessions, rounds of
work) instead of the product.
"""

import re
import subprocess

import pytest

from conftest import ROOT, circled_binary

DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(path):
    """The Markdown text of path without its fenced code blocks."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def anchors(path):
    """GitHub's heading anchors of a Markdown file: lower case, punctuation
    but '-' and '_' dropped, spaces as '-'."""
    out = set()
    for h in re.findall(r"^#{1,6} +(.*?) *#*$", prose(path), re.M):
        out.add(re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-"))
    return out


def test_docs_should_exist():
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    for want in ["docs/architecture.md", "docs/conformance.md", "docs/performance.md",
                 "docs/hardening.md", "docs/observability.md", "docs/libcircle.md"]:
        assert want in names, f"{want} is missing"
    assert (ROOT / "LICENSE").is_file()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_should_resolve(doc):
    broken = []
    for target in LINK.findall(prose(doc)):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(f"{target}: no {dest.relative_to(ROOT) if ROOT in dest.parents else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


RELEASE = re.compile(r"^## \[(\d+)\.(\d+)\.(\d+)\] - (\d{4}-\d{2}-\d{2})$")
SECTIONS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def changelog_releases():
    """[(version tuple, date)] of CHANGELOG.md, in file order, after checking
    the layout: [Unreleased] first, then releases, each with Keep a
    Changelog's kinds of change."""
    lines = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8").splitlines()
    heads = [ln for ln in lines if ln.startswith("## ")]
    assert heads and heads[0] == "## [Unreleased]", "CHANGELOG.md must open with ## [Unreleased]"
    releases = []
    for h in heads[1:]:
        m = RELEASE.match(h)
        assert m, f"not a release heading (## [X.Y.Z] - YYYY-MM-DD): {h}"
        releases.append((tuple(int(x) for x in m.groups()[:3]), m.group(4)))
    for ln in lines:
        if ln.startswith("### "):
            assert ln[4:] in SECTIONS, f"CHANGELOG.md: {ln!r} is not one of {sorted(SECTIONS)}"
    return releases


def test_changelog_should_list_releases_newest_first():
    releases = changelog_releases()
    assert releases, "CHANGELOG.md has no release"
    versions = [v for v, _ in releases]
    dates = [d for _, d in releases]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)
    assert dates == sorted(dates, reverse=True)


def test_version_should_be_the_newest_release_everywhere():
    newest = ".".join(map(str, changelog_releases()[0][0]))
    out = subprocess.run([circled_binary(), "--version"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert out == f"circled {newest}\n"
    help_text = subprocess.run([circled_binary(), "--help"], capture_output=True, text=True,
                               check=True, timeout=30).stdout
    assert "--version" in help_text
    spec = (ROOT / "openapi.yaml").read_text(encoding="utf-8")
    assert re.search(rf"^  version: {re.escape(newest)}$", spec, re.M), "openapi.yaml info.version"
    pc = (ROOT / "circle.pc.in").read_text(encoding="utf-8")
    assert f"\nVersion: {newest}\n" in pc, "circle.pc.in Version"


# Wording about how the project was made rather than what it is. Bench
# "rounds" (interleaved timing passes) and pytest's "session" scope are
# product words and are not matched.
NARRATIVE = re.compile(
    r"\b(?:this session|previous session|(?:first|second|third|fourth|fifth|this|last|next|previous)"
    r" round|rounds? of work|previous table|issue #?\d+)\b", re.I)
SCANNED = ["README.md", "CHANGELOG.md", "openapi.yaml", "Makefile", "Dockerfile", ".ci/run",
           "docs", "src", "include", "tests", "bench", "fuzz", "deploy"]
SKIPPED_PARTS = {"golden", "corpus", "__pycache__"}
TEXT_SUFFIXES = {"", ".md", ".yaml", ".yml", ".c", ".h", ".py", ".html", ".lua", ".txt", ".json", ".in"}


def scanned_files():
    for name in SCANNED:
        p = ROOT / name
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            if SKIPPED_PARTS & set(f.relative_to(ROOT).parts) or f.suffix not in TEXT_SUFFIXES:
                continue
            if f.name == "test_docs.py":
                continue
            yield f


def test_documents_should_speak_of_the_product_not_of_its_making():
    hits = []
    for f in scanned_files():
        for k, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            m = NARRATIVE.search(line)
            if m:
                hits.append(f"{f.relative_to(ROOT)}:{k}: {m.group(0)!r}")
    assert not hits, "\n".join(hits)
