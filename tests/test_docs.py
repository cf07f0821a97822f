"""The README and docs/ point at things that exist: every relative link reaches a file (and a heading, where it names
one), and every repository path they name in backticks is in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REPO_PATH = re.compile(
    r"`((?:rrhf_core|rrhf_cli|tasks|flows|benchmarks|configs|docker|tests|docs|\.ci)/[\w/.\-*]*)`"
)
LINK = re.compile(r"\]\(([^)\s]+)\)")
MADE_BY_THE_USER = {"docker/.env"}  # created from docker/env.example, git-ignored


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_reach_a_file_and_heading(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target} reaches nothing"
        if anchor:
            assert anchor in _anchors(dest), f"{page.name}: {target}: no such heading in {dest.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_repository_paths_exist(page):
    for name in REPO_PATH.findall(page.read_text(encoding="utf-8")):
        name = name.rstrip(".")
        if name in MADE_BY_THE_USER:
            continue
        assert (ROOT / name).exists() or any(ROOT.glob(name)), (
            f"{page.name} names {name}, which does not exist"
        )


def test_the_readme_links_every_page_of_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"
