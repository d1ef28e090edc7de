"""The version registry: atomic current-version switches, locks beside versions (no Docker)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest

from spawner.core.problems import TeachlabError
from spawner.images.registry import CourseVersion, HistoryEntry, VersionRegistry


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


def _event(actor: str, action: str, old: str | None, new: str | None, outcome: str) -> HistoryEntry:
    return HistoryEntry("2026-11-29T10:00:00+00:00", actor, action, old, new, outcome)


def test_every_publish_and_rollback_is_kept_with_who_and_from_which_version_to_which(tmp_path):
    registry = VersionRegistry(tmp_path)
    registry.add_current(
        "c1", replace(_version("v1", "a"), published_by="lena"), "", event=_event("lena", "publish", None, "v1", "published")
    )
    registry.add_current("c1", _version("v2", "b"), "", event=_event("lena", "publish", "v1", "v2", "published"))
    registry.record_event(
        "c1", HistoryEntry("2026-11-29T10:05:00+00:00", "lena", "publish", "v2", None, "failed", "pip: no such package")
    )
    registry.make_current("c1", "v1", _event("ada", "rollback", "v2", "v1", "rolled back"))
    record = VersionRegistry(tmp_path).read("c1")
    assert record.current == "v1" and record.version("v1").published_by == "lena"
    assert [(e.actor, e.action, e.from_version, e.to_version, e.outcome) for e in record.history] == [
        ("lena", "publish", None, "v1", "published"),
        ("lena", "publish", "v1", "v2", "published"),
        ("lena", "publish", "v2", None, "failed"),
        ("ada", "rollback", "v2", "v1", "rolled back"),
    ]
    assert record.history[2].detail == "pip: no such package"


def test_records_written_before_the_history_read_back_without_one(tmp_path):
    (tmp_path / "c1.json").write_text(
        json.dumps({"course": "c1", "current": "v1", "versions": [{**vars(_version("v1")), "published_by": None}]})
    )
    record = VersionRegistry(tmp_path).read("c1")
    assert record.history == () and record.current == "v1"
    assert VersionRegistry(tmp_path).record_event("c1", _event("x", "publish", "v1", "v1", "unchanged")).history[0].actor == "x"


def test_a_second_publisher_is_told_it_waits_then_gets_the_course(tmp_path):
    registry = VersionRegistry(tmp_path)
    told, inside = threading.Event(), threading.Event()

    def second():
        with registry.exclusive("c1", on_wait=told.set):
            inside.set()

    with registry.exclusive("c1"):
        waiter = threading.Thread(target=second)
        waiter.start()
        assert told.wait(5)
        assert not inside.wait(0.3)  # still waiting while the first holds the course
    waiter.join(5)
    assert inside.is_set()
    called = []
    with registry.exclusive("c1", on_wait=lambda: called.append(1)):
        pass
    assert called == []  # nobody held it: no waiting, no note
