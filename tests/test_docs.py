"""The documentation site (docs/, mkdocs.yml) builds strict as `make docs` builds it, and that build really fails
on a broken link or a page left out of the nav; the README's links into the docs resolve."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

from tests.helpers import ROOT

pytestmark = pytest.mark.fast

MKDOCS = Path(sys.executable).parent / "mkdocs"
README = ROOT / "README.md"


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """`make docs`' command, into `site`."""
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_site_builds_strict(tmp_path: Path) -> None:
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr
    pages = {p.relative_to(ROOT / "docs").with_suffix("") for p in (ROOT / "docs").rglob("*.md")}
    for page in pages:
        built = tmp_path / "site" / (page.parent if page.name == "index" else page) / "index.html"
        assert built.is_file(), page


def test_a_broken_link_or_a_page_missing_from_the_nav_fails_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    quickstart = copy / "docs" / "quickstart.md"
    quickstart.write_text(quickstart.read_text() + "\nSee [the old page](no-such-page.md).\n")
    (copy / "docs" / "orphan.md").write_text("# A page nobody added to the nav\n")
    done = build(copy / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stderr
    assert "orphan.md" in done.stderr


def _anchors(markdown: str) -> set[str]:
    """The ids MkDocs gives the headings of a page (outside code blocks)."""
    anchors, fence = set(), False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence and (heading := re.match(r"#{1,6} (.+)", line)):
            anchors.add(slugify(heading.group(1).replace("`", ""), "-"))
    return anchors


def test_the_readme_is_a_first_visit_page_whose_links_resolve() -> None:
    readme = README.read_text()
    assert "make run" in readme and "make test" in readme
    assert len(readme.splitlines()) <= 300, "README.md is the first-visit page: put the details in docs/"
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    # The README's grpcurl example is one of the recipes tests/test_grpcurl_recipes.py runs.
    recipes = (ROOT / "docs" / "calling" / "grpcurl.md").read_text()
    lines = readme.splitlines()
    commands = []
    for at, line in enumerate(lines):
        if line.startswith(("$ grpcurl ", "$ { ")):
            end = at
            while lines[end].endswith("\\"):
                end += 1
            commands.append("\n".join(lines[at : end + 1]))
    assert commands
    for command in commands:
        assert command in recipes, command
    for link in local:
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else README
        assert target.exists(), link
        if anchor:
            assert anchor in _anchors(target.read_text()), link
