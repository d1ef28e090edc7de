"""Publishing course environments: build, smoke-test, version, make current, roll back.

A library API (``publish_course``, ``rollback_course``) used by the CLI and usable by a service.
A failure at any step leaves the registry as it was: the previous version stays current.
"""

from __future__ import annotations

import io
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import docker
import docker.errors

from ..catalog import Course
from ..core.contract import IMAGE, Labels
from ..core.naming import version_number
from ..core.problems import TeachlabError
from ..core.progress import Progress
from ..engine import connect
from .build import CandidateImage, ImageBuilder
from .registry import CourseRecord, CourseVersion, VersionRegistry
from .settings import BuildSettings
from .smoke import run_smoke_test

LOCK_PATHS = {"venv": (IMAGE.pip_lock,), "conda": (IMAGE.conda_lock, IMAGE.pip_lock)}


@dataclass(frozen=True)
class PublishResult:
    slug: str
    version: str
    image: str
    environment_hash: str
    outcome: str  # "published", "unchanged" (already current) or "restored" (an earlier identical version made current)
    seconds: float


def _read_file(client: docker.DockerClient, image_id: str, path: str, labels: dict[str, str]) -> str:
    """A file of an image, read from a container that is created, never started, and removed."""
    container = client.containers.create(image_id, command=["true"], entrypoint=[], labels=labels)
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            member = archive.getmembers()[0]
            return archive.extractfile(member).read().decode("utf-8")
    finally:
        container.remove(force=True)


def read_lock(client: docker.DockerClient, candidate: CandidateImage, labels: dict[str, str]) -> str:
    """What was installed: ``pip freeze`` (venv) or the explicit conda list plus the pip part."""
    parts = [_read_file(client, candidate.image_id, path, labels) for path in LOCK_PATHS[candidate.flavor.environment_builder]]
    return "\n# pip\n".join(parts)


def _image_present(client: docker.DockerClient, image_id: str) -> bool:
    try:
        client.images.get(image_id)
        return True
    except docker.errors.ImageNotFound:
        return False


def publish_course(
    course: Course,
    *,
    settings: BuildSettings,
    progress: Progress | None = None,
    client: docker.DockerClient | None = None,
    from_lock: str | None = None,
) -> PublishResult:
    """Build, smoke-test and make current a new version of ``course``; reuse an identical version."""
    started = time.monotonic()
    progress = progress or Progress(quiet=True)
    client = client or connect()
    builder = ImageBuilder(settings, progress, client)
    registry = VersionRegistry(settings.registry_dir)
    with registry.exclusive(course.slug):
        lock = registry.read_lock(course.slug, from_lock) if from_lock else None
        candidate = builder.build_course(course, lock=lock)
        record = registry.read(course.slug)
        same = record.with_environment_hash(candidate.environment_hash)
        if same and _image_present(client, same.image_id):
            outcome = "unchanged" if record.current == same.version else "restored"
            if outcome == "restored":
                registry.make_current(course.slug, same.version)
            return PublishResult(
                course.slug, same.version, same.image, same.environment_hash, outcome, time.monotonic() - started
            )
        with progress.step(f"smoke test {course.slug}: run code in the default kernel"):
            run_smoke_test(
                client,
                image=candidate.image_id,
                course=course,
                distributions=candidate.top_level_distributions,
                labels={**settings.labels, Labels.SMOKE_TEST: course.slug},
            )
        version = record.next_version()
        reference, image_id = builder.tag_version(candidate, version)
        entry = CourseVersion(
            version=version,
            image=reference,
            image_id=image_id,
            environment_hash=candidate.environment_hash,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            size_bytes=int(client.images.get(image_id).attrs.get("Size", 0)),
            base_image=candidate.base_image,
            flavor=candidate.flavor.name,
        )
        registry.add_current(
            course.slug, entry, read_lock(client, candidate, {**settings.labels, Labels.LOCK_READER: course.slug})
        )
    return PublishResult(course.slug, version, reference, candidate.environment_hash, "published", time.monotonic() - started)


def rollback_course(
    slug: str, *, settings: BuildSettings, to_version: str | None = None, client: docker.DockerClient | None = None
) -> CourseRecord:
    """Make an earlier version current again (default: the one before the current)."""
    registry = VersionRegistry(settings.registry_dir)
    client = client or connect()
    with registry.exclusive(slug):
        record = registry.read(slug)
        if record.current is None:
            raise TeachlabError(
                f"course {slug} has no published version to roll back (publish it first: teachlab course publish {slug})"
            )
        if to_version is None:
            current_number = version_number(record.current)
            earlier = [v for v in record.versions if version_number(v.version) < current_number]
            if not earlier:
                raise TeachlabError(
                    f"course {slug} has no version before {record.current} (versions: {', '.join(v.version for v in record.versions)})"
                )
            target = max(earlier, key=lambda v: version_number(v.version))
        else:
            target = record.version(to_version)
        if not _image_present(client, target.image_id):
            raise TeachlabError(
                f"the image of {slug} {target.version} is gone from this engine "
                f"(rebuild it: teachlab course publish {slug} --from-lock {target.version})"
            )
        return registry.make_current(slug, target.version)
