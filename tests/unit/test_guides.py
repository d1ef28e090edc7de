"""The students', instructors' and admins' guides exist, and every picture they show is there (taken from a
real lab by the browser tests under tests/e2e/ that name it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
BROWSER_TESTS = DOCS.parent / "tests" / "e2e"
GUIDES = ("students.md", "instructors.md", "admins.md")
PICTURE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _taken_by(name: str) -> str:
    """The browser tests that save a picture of this name."""
    takers = [f"tests/e2e/{test.name}" for test in sorted(BROWSER_TESTS.glob("test_*.py")) if f'"{name}"' in test.read_text()]
    return " or ".join(takers) or "the browser test that should take it (none does)"


@pytest.mark.parametrize("guide", GUIDES)
def test_every_picture_a_guide_shows_is_there(guide):
    text = (DOCS / guide).read_text()
    pictures = PICTURE.findall(text)
    assert len(pictures) >= 3, f"{guide} should show the lab in pictures"
    for picture in pictures:
        path = DOCS / picture
        assert path.is_file(), f"{guide} shows {picture}, which is missing: run {_taken_by(path.stem)}"
        assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{picture} is not a PNG"


def test_every_picture_a_guide_shows_is_taken_by_a_browser_test():
    for guide in GUIDES:
        for picture in PICTURE.findall((DOCS / guide).read_text()):
            assert "none does" not in _taken_by(Path(picture).stem), f"no browser test takes {picture} ({guide})"


def test_no_picture_is_left_that_no_guide_shows():
    shown = {Path(picture).name for guide in DOCS.glob("*.md") for picture in PICTURE.findall(guide.read_text())}
    assert {path.name for path in (DOCS / "img").glob("*.png")} <= shown


def test_the_students_guide_has_the_ssh_config_entry_and_the_offline_vs_code_setting():
    text = (DOCS / "students.md").read_text()
    assert re.search(r"^Host \S+\n    HostName \S+\n    Port \d+\n    User \S+\+\S+$", text, re.MULTILINE)
    assert "remote.SSH.localServerDownload" in text
    assert "ssh -p 2222 alice+intro-python@" in text
