"""Every relative link in the README and docs/ points at a file that exists (a page moved into docs/ keeps its
links working)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)")


def test_relative_links_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = [f"{page.relative_to(ROOT)}: {target}" for page in pages for target in LINK.findall(page.read_text())
              if not re.match(r"[a-z]+:", target) and not (page.parent / target).exists()]
    assert not broken, broken
