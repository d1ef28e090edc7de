"""Test catalogs made from the example courses."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml


def copy_course(repo_root: Path, slug: str, catalog: Path, *, new_slug: str | None = None, **changes) -> Path:
    """Copy an example course into ``catalog``; ``changes`` replace top-level keys of its course.yaml."""
    target = catalog / (new_slug or slug)
    shutil.copytree(repo_root / "course_envs" / slug, target)
    if changes:
        path = target / "course.yaml"
        data = yaml.safe_load(path.read_text())
        data.update(changes)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def add_pip_requirements(course_folder: Path, *requirements: str) -> None:
    """Append requirements to the course's pip list (creating the list when it has none)."""
    path = course_folder / "environment.yml"
    data = yaml.safe_load(path.read_text())
    pip_lists = [entry for entry in data["dependencies"] if isinstance(entry, dict)]
    if pip_lists:
        pip_lists[0]["pip"].extend(requirements)
    else:
        data["dependencies"].append({"pip": list(requirements)})
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def register_stand_in_versions(state: Path, slugs) -> None:
    """Record a current v1 of each course with a stand-in image, for tests whose engine is a stand-in too."""
    from spawner.core.contract import StateLayout
    from spawner.images.registry import CourseVersion, VersionRegistry

    registry = VersionRegistry(StateLayout(state).courses)
    for slug in slugs:
        version = CourseVersion(
            version="v1",
            image=f"teachlab-test/course-{slug}:v1",
            image_id="sha256:0",
            environment_hash="0",
            created="2026-11-01T00:00:00+00:00",
            size_bytes=1,
            base_image="teachlab-test/debian-py39:v1.0.0",
            flavor="debian-py39",
        )
        registry.add_current(slug, version, "lock")
