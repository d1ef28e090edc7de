"""The version registry: which versions of a course exist and which one is current.

One JSON file per course under ``<state>/courses/``. Writers hold an exclusive lock on the course and
replace the file atomically (write, fsync, rename), so the hub, which reads it at every spawn, sees
the old current version or the new one and never a half-written file. Locks of installed packages
sit beside it, one file per version.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..core.naming import version_number, version_tag
from ..core.problems import TeachlabError


@dataclass(frozen=True)
class CourseVersion:
    version: str
    image: str
    image_id: str
    environment_hash: str
    created: str  # ISO 8601, UTC
    size_bytes: int
    base_image: str
    flavor: str


@dataclass(frozen=True)
class CourseRecord:
    slug: str
    current: str | None
    versions: tuple[CourseVersion, ...]

    def version(self, tag: str) -> CourseVersion:
        for entry in self.versions:
            if entry.version == tag:
                return entry
        known = ", ".join(v.version for v in self.versions) or "none"
        raise TeachlabError(f"course {self.slug} has no version {tag} (published versions: {known})")

    @property
    def current_version(self) -> CourseVersion | None:
        return self.version(self.current) if self.current else None

    def with_environment_hash(self, environment_hash: str) -> CourseVersion | None:
        matches = [v for v in self.versions if v.environment_hash == environment_hash]
        return matches[-1] if matches else None

    def next_version(self) -> str:
        return version_tag(max((version_number(v.version) for v in self.versions), default=0) + 1)


class VersionRegistry:
    """Reads and atomically updates ``<root>/<slug>.json``; ``<root>/<slug>/<version>.lock.txt`` holds locks."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, slug: str) -> Path:
        return self.root / f"{slug}.json"

    def lock_path(self, slug: str, version: str) -> Path:
        return self.root / slug / f"{version}.lock.txt"

    def read(self, slug: str) -> CourseRecord:
        try:
            data = json.loads(self._path(slug).read_text())
        except FileNotFoundError:
            return CourseRecord(slug, None, ())
        return CourseRecord(slug, data["current"], tuple(CourseVersion(**v) for v in data["versions"]))

    def current_image(self, slug: str) -> CourseVersion | None:
        return self.read(slug).current_version

    def read_lock(self, slug: str, version: str) -> str:
        path = self.lock_path(slug, version)
        try:
            return path.read_text()
        except FileNotFoundError:
            raise TeachlabError(f"no package lock for {slug} {version} at {path}") from None

    @contextmanager
    def exclusive(self, slug: str) -> Iterator[None]:
        """Serialize publishers of one course (across processes); readers never wait."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{slug}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, record: CourseRecord) -> None:
        payload = {"course": record.slug, "current": record.current, "versions": [asdict(v) for v in record.versions]}
        self.root.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.root, prefix=f".{record.slug}.", suffix=".json")
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump(payload, stream, indent=2)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self._path(record.slug))
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def add_current(self, slug: str, version: CourseVersion, lock_text: str) -> CourseRecord:
        """Write the version's lock, then record the version and make it current in one atomic replace
        (a lock without a registry entry is harmless; the reverse never happens)."""
        lock_path = self.lock_path(slug, version.version)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path.write_text(lock_text)
        record = self.read(slug)
        updated = replace(record, current=version.version, versions=record.versions + (version,))
        self._write(updated)
        return updated

    def make_current(self, slug: str, version: str) -> CourseRecord:
        record = self.read(slug)
        record.version(version)
        updated = replace(record, current=version)
        self._write(updated)
        return updated
