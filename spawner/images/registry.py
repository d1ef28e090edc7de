"""The version registry: which versions of a course exist and which one is current.

One JSON file per course under ``<state>/courses/``. Writers hold an exclusive lock on the course and
replace the file atomically (write, fsync, rename), so the hub, which reads it at every spawn, sees
the old current version or the new one and never a half-written file. Locks of installed packages
sit beside it, one file per version. Every publish and rollback (who, when, from which version to which,
how it ended) is kept in the same file, written in the same replace as the change it records.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
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
    # Recorded since the two-Python images (older records read with these defaults):
    kernel_python: str | None = None
    server_python: str | None = None
    jupyter_server: str | None = None
    cuda_runtime: str | None = None
    scan: dict | None = None  # spawner.images.scan.scan_image's record, plus later audits under "audits"
    sbom: str | None = None  # path of the CycloneDX SBOM beside the locks
    locks: dict | None = None  # layer -> path: course, server, debian
    published_by: str | None = None  # who published it (the hub user, or the admin's login for the CLI)
    # The image by digest in the stack's registry (``<registry>/<namespace>/course-<slug>@sha256:...``) when
    # publishing pushed it there (``BuildSettings.registry_address``): what a swarm's nodes pull. None: this engine only.
    registry_image: str | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """One publish or rollback of a course, kept for the audit: who, when, from which version to which."""

    at: str  # ISO 8601, UTC
    actor: str
    action: str  # "publish" or "rollback"
    from_version: str | None
    to_version: str | None  # None when a publish failed
    outcome: str  # "published", "unchanged", "restored", "rolled back" or "failed"
    detail: str = ""  # why a publish failed (its first line)


# Files recorded beside each version, under ``<slug>/``: layer locks, what the image contains, its SBOM.
VERSION_FILES = {
    "course": "{version}.lock.txt",
    "server": "{version}.server-lock.txt",
    "debian": "{version}.debian-lock.txt",
    "contents": "{version}.contents.json",
    "sbom": "{version}.sbom.cdx.json",
    "environment": "{version}.environment.yml",  # the environment.yml it was built from (a rollback restores it)
}


@dataclass(frozen=True)
class CourseRecord:
    slug: str
    current: str | None
    versions: tuple[CourseVersion, ...]
    history: tuple[HistoryEntry, ...] = ()

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
        return self.version_file(slug, version, "course")

    def version_file(self, slug: str, version: str, kind: str) -> Path:
        return self.root / slug / VERSION_FILES[kind].format(version=version)

    def read(self, slug: str) -> CourseRecord:
        try:
            data = json.loads(self._path(slug).read_text())
        except FileNotFoundError:
            return CourseRecord(slug, None, ())
        return CourseRecord(
            slug,
            data["current"],
            tuple(CourseVersion(**v) for v in data["versions"]),
            tuple(HistoryEntry(**entry) for entry in data.get("history", ())),
        )

    def current_image(self, slug: str) -> CourseVersion | None:
        return self.read(slug).current_version

    def read_lock(self, slug: str, version: str, kind: str = "course") -> str:
        path = self.version_file(slug, version, kind)
        try:
            return path.read_text()
        except FileNotFoundError:
            raise TeachlabError(f"no {kind} lock for {slug} {version} at {path}") from None

    def has_file(self, slug: str, version: str, kind: str) -> bool:
        return self.version_file(slug, version, kind).is_file()

    @contextmanager
    def exclusive(self, slug: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Serialize publishers of one course (across processes); readers never wait. ``on_wait`` is called
        once when another publisher holds the course, before waiting for it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{slug}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, record: CourseRecord) -> None:
        payload = {
            "course": record.slug,
            "current": record.current,
            "versions": [asdict(v) for v in record.versions],
            "history": [asdict(entry) for entry in record.history],
        }
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

    def add_current(
        self,
        slug: str,
        version: CourseVersion,
        lock_text: str,
        files: Mapping[str, str | bytes] | None = None,
        event: HistoryEntry | None = None,
    ) -> CourseRecord:
        """Write the version's lock and its other files (``VERSION_FILES`` kinds), then record the version
        and make it current in one atomic replace (files without a registry entry are harmless; the
        reverse never happens)."""
        written = {"course": lock_text, **(files or {})}
        for kind, content in written.items():
            path = self.version_file(slug, version.version, kind)
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        paths = {kind: str(self.version_file(slug, version.version, kind)) for kind in written}
        version = replace(
            version,
            locks={kind: paths[kind] for kind in ("course", "server", "debian") if kind in paths},
            sbom=paths.get("sbom"),
        )
        record = self.read(slug)
        updated = replace(
            record, current=version.version, versions=record.versions + (version,), history=_appended(record, event)
        )
        self._write(updated)
        return updated

    def record_audit(self, slug: str, version: str, audit: dict) -> CourseRecord:
        """Keep the newest audit of a version beside its publish-time scan."""
        record = self.read(slug)
        record.version(version)
        versions = tuple(
            replace(v, scan={**(v.scan or {}), "last_audit": audit}) if v.version == version else v for v in record.versions
        )
        updated = replace(record, versions=versions)
        self._write(updated)
        return updated

    def make_current(self, slug: str, version: str, event: HistoryEntry | None = None) -> CourseRecord:
        record = self.read(slug)
        record.version(version)
        updated = replace(record, current=version, history=_appended(record, event))
        self._write(updated)
        return updated

    def record_registry_image(self, slug: str, version: str, registry_image: str) -> CourseRecord:
        """Record where an existing version was pushed (a version published before the lab had a registry)."""
        record = self.read(slug)
        record.version(version)
        versions = tuple(replace(v, registry_image=registry_image) if v.version == version else v for v in record.versions)
        updated = replace(record, versions=versions)
        self._write(updated)
        return updated

    def record_event(self, slug: str, event: HistoryEntry) -> CourseRecord:
        """Keep a publish or rollback that changed nothing (unchanged, failed) in the course's history."""
        record = self.read(slug)
        updated = replace(record, history=_appended(record, event))
        self._write(updated)
        return updated


def _appended(record: CourseRecord, event: HistoryEntry | None) -> tuple[HistoryEntry, ...]:
    return record.history if event is None else (*record.history, event)
