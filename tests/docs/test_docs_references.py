"""The repository is self-contained: its definition is docs/algorithm.md, and every citation of it resolves.

A maintainer reads the project from its own files, so no tracked file may refer to a document
outside the repository (the former external spec, a sibling ``shared`` folder, a machine path),
every ``docs/algorithm.md#anchor`` cited anywhere must name an anchor the page defines, and every
variant knob of the core config must be defined on that page.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from helpers.paths import REPO_ROOT

ALGORITHM = REPO_ROOT / "docs" / "algorithm.md"
# the anchors other code cites (docs/algorithm.md#<anchor>); the page must keep every one
STABLE_ANCHORS = ("where-it-sits", "notation", "active-update", "shutoff-gate", "sfpo", "configuration",
                  "faults", "metrics", "budget", "variants", "capo", "next", "resume-and-preemption")
# words that point outside the repository
OUTSIDE = re.compile(r"GXPO_SPEC|\bspec (?:sections?|§) ?\d|\.\./shared\b|/work/(?:shared|main|wt)\b")
CITATION = re.compile(r"docs/algorithm\.md#([A-Za-z0-9_-]+)((?:,\s*#[A-Za-z0-9_-]+)*)")


def _tracked_text_files() -> dict[str, str]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = {}
    for name in names.decode().split("\0"):
        if not name or name == "tests/docs/test_docs_references.py":
            continue
        try:
            out[name] = (REPO_ROOT / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # binary or deleted in the work tree
    return out


def _anchors() -> set[str]:
    return set(re.findall(r'<a id="([^"]+)"></a>', ALGORITHM.read_text(encoding="utf-8")))


def test_no_tracked_file_refers_to_a_document_outside_the_repository():
    hits = [f"{name}:{i}: {line.strip()}" for name, text in _tracked_text_files().items()
            for i, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, ("these lines cite a document outside the repository; cite docs/algorithm.md#<anchor> "
                      "instead:\n" + "\n".join(hits))


def test_algorithm_page_keeps_every_stable_anchor_before_a_heading():
    lines = ALGORITHM.read_text(encoding="utf-8").splitlines()
    for anchor in STABLE_ANCHORS:
        tag = f'<a id="{anchor}"></a>'
        assert tag in lines, f"docs/algorithm.md lost its anchor {tag}"
        assert lines[lines.index(tag) + 1].startswith("## "), f"{tag} must sit right before its heading"


def test_every_citation_of_the_algorithm_page_names_an_existing_anchor():
    anchors = _anchors()
    bad = []
    for name, text in _tracked_text_files().items():
        for m in CITATION.finditer(text):
            cited = [m.group(1), *re.findall(r"#([A-Za-z0-9_-]+)", m.group(2) or "")]
            bad += [f"{name}: #{a}" for a in cited if a not in anchors]
    assert not bad, "citations of docs/algorithm.md anchors that do not exist:\n" + "\n".join(bad)


def test_every_variant_knob_is_defined_in_the_variants_section():
    from verl_ext.core.config import VARIANT_DEFAULTS

    text = ALGORITHM.read_text(encoding="utf-8")
    section = text[text.index('<a id="variants"></a>'):text.index('<a id="capo"></a>')]
    missing = [k for k in VARIANT_DEFAULTS if f"`{k}`" not in section]
    assert not missing, f"docs/algorithm.md#variants does not define the knobs {missing}"
