"""The reference names every public name, and every page the docs link to exists."""

from __future__ import annotations

import re
from pathlib import Path

import conveyor

DOCS = Path(__file__).parent.parent / "docs"


def test_reference_lists_every_public_name() -> None:
    reference = (DOCS / "reference.md").read_text()
    public = [name for name in vars(conveyor) if not name.startswith("_")]
    missing = [name for name in public if f"`{name}" not in reference and name != "store"
               and name != "testing"]  # fmt: skip
    assert not missing, f"docs/reference.md does not mention: {missing}"


def test_links_between_pages_resolve() -> None:
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([\w-]+\.md)\)", page.read_text()):
            assert (DOCS / target).exists(), f"{page.name} links to missing {target}"
