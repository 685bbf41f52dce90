"""What a newcomer reads: links that lead somewhere inside this repository."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_stay_inside_the_repository_and_exist(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        path = target.split("#", 1)[0]
        if not path:
            continue  # an anchor in the same file
        assert "://" not in path, f"{doc.name}: external link {target}"
        resolved = (doc.parent / path).resolve()
        assert resolved.is_relative_to(REPO), f"{doc.name}: {target} leaves the repository"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"


def test_the_package_names_no_urls() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "urls" not in project, "no invented project URLs"
