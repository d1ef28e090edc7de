"""The version registry: atomic current-version switches, locks beside versions (no Docker)."""

from __future__ import annotations

import json
import threading

import pytest

from spawner.core.problems import TeachlabError
from spawner.images.registry import CourseVersion, VersionRegistry


def _version(tag: str, env_hash: str = "h") -> CourseVersion:
    return CourseVersion(
        version=tag,
        image=f"teachlab/course-c1:{tag}",
        image_id=f"sha256:{tag}",
        environment_hash=env_hash,
        created="2026-11-25T12:00:00+00:00",
        size_bytes=1,
        base_image="b",
        flavor="debian-py39",
    )


def test_add_make_current_and_read_back(tmp_path):
    registry = VersionRegistry(tmp_path)
    assert registry.read("c1").current is None and registry.read("c1").next_version() == "v1"
    registry.add_current("c1", _version("v1", "a"), "numpy==1.26.4\n")
    record = registry.add_current("c1", _version("v2", "b"), "numpy==2.0.0\n")
    assert record.current == "v2" and record.next_version() == "v3"
    assert registry.make_current("c1", "v1").current == "v1"
    assert registry.current_image("c1").image == "teachlab/course-c1:v1"
    assert registry.read_lock("c1", "v2") == "numpy==2.0.0\n"
    assert registry.read("c1").with_environment_hash("b").version == "v2"


def test_unknown_version_lists_the_known_ones(tmp_path):
    registry = VersionRegistry(tmp_path)
    registry.add_current("c1", _version("v1"), "")
    with pytest.raises(TeachlabError, match=r"course c1 has no version v9 \(published versions: v1\)"):
        registry.make_current("c1", "v9")
    assert registry.read("c1").current == "v1"


def test_readers_never_see_a_half_written_file(tmp_path):
    """A reader polling while a writer flips the current version always parses a whole document."""
    registry = VersionRegistry(tmp_path)
    registry.add_current("c1", _version("v1"), "")
    registry.add_current("c1", _version("v2"), "")
    stop = threading.Event()
    seen, errors = set(), []

    def read_forever():
        while not stop.is_set():
            try:
                seen.add(json.loads((tmp_path / "c1.json").read_text())["current"])
            except Exception as exc:  # noqa: BLE001 - a torn write would show up here
                errors.append(exc)

    reader = threading.Thread(target=read_forever)
    reader.start()
    for index in range(300):
        registry.make_current("c1", "v1" if index % 2 else "v2")
    stop.set()
    reader.join()
    assert errors == [] and seen <= {"v1", "v2"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".c1.") and p.suffix == ".json"]  # no temp files left
