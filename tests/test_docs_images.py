"""The screenshots in docs/images/ are ones the browser tests still take, so ``make screenshots`` refreshes them.

The browser tests write every screenshot to ``test-artifacts/browser/`` (``shoot(page, NAME)``);
``make screenshots`` runs them and copies the files of the same names over docs/images/. A
screenshot renamed or dropped in a test would leave its copy in the docs to go stale: this test
fails first. The README's and the pages' images must exist too (mkdocs checks the pages' links,
not the README's).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"


def shot_names() -> list[re.Pattern[str]]:
    """Each name a browser test passes to ``shoot``, as a pattern (an f-string's ``{...}`` matches anything)."""
    patterns = []
    for test in sorted(Path(__file__).parent.glob("test_browser*.py")):
        for literal in re.findall(r"shoot\(\s*page,\s*f?\"([^\"]+)\"", test.read_text()):
            parts = re.split(r"\{[^}]*\}", literal)
            patterns.append(re.compile(".+".join(re.escape(part) for part in parts)))
    return patterns


def test_every_docs_image_is_a_screenshot_the_browser_tests_take() -> None:
    images = sorted(IMAGES.glob("*.png"))
    assert images, "the notebook page is illustrated with screenshots from the browser tests"
    patterns = shot_names()
    assert [image.name for image in images if not any(p.fullmatch(image.name) for p in patterns)] == []
    assert sorted(IMAGES.iterdir()) == images, "docs/images holds the browser tests' PNGs only"


def test_every_image_the_readme_and_the_pages_show_exists() -> None:
    shown = {(page.parent / link).resolve()
             for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
             for link in re.findall(r"!\[[^\]]*\]\(([^):]+\.png)\)", page.read_text())}
    assert shown, "the README and the notebook page show screenshots"
    assert sorted(str(path) for path in shown if not path.is_file()) == []
    assert {path.name for path in shown} == {image.name for image in IMAGES.glob("*.png")}, "no image unused"
