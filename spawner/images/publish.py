"""Publishing course environments: build, smoke-test, scan, version, make current, roll back, audit.

A library API (``publish_course``, ``rollback_course``, ``audit_version``) used by the CLI and the
``teachlab-courses`` service. A failure at any step (a blocking scan finding included) leaves the registry
as it was: the previous version stays current. Each version records its three locks, what its image
contains, its scan, its SBOM and the environment.yml it was built from
(``spawner.images.registry.VERSION_FILES``); every publish and rollback is kept in the course's history
(who, when, from which version to which, how it ended).
"""

from __future__ import annotations

import getpass
import io
import json
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import docker
import docker.errors

from ..catalog import ENVIRONMENT_FILE, Course
from ..core.contract import IMAGE, Labels
from ..core.naming import version_number
from ..core.problems import TeachlabError
from ..core.progress import Progress
from ..engine import connect
from .advisories import load_advisories
from .build import BuildConfinement, CandidateImage, ImageBuilder
from .contents import ImageContents, cuda_runtime, image_labels
from .distribution import push_version
from .evidence import read_contents, scan_debian_with_trivy, trivy_database_present, write_sbom
from .locks import CONDA_PIP_SEPARATOR
from .registry import CourseRecord, CourseVersion, HistoryEntry, VersionRegistry
from .scan import Acceptance, AcceptanceStore, blocking_findings, new_findings, scan_image, scan_summary
from .settings import BuildSettings
from .smoke import SmokeReport, run_smoke_test

LOCK_PATHS = {"venv": (IMAGE.pip_lock,), "conda": (IMAGE.conda_lock, IMAGE.pip_lock)}


@dataclass(frozen=True)
class PublishResult:
    slug: str
    version: str
    image: str
    environment_hash: str
    outcome: str  # "published", "unchanged" (already current) or "restored" (an earlier identical version made current)
    seconds: float
    previous: str | None = None  # the version that was current before
    smoke: SmokeReport | None = None  # None when an existing version was reused
    registry_image: str | None = None  # the version by digest in the stack's registry (when the lab has one)


def login_name() -> str:
    """Who runs a CLI command: the admin behind sudo if any."""
    import os

    return os.environ.get("SUDO_USER") or getpass.getuser()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:500]


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
    return CONDA_PIP_SEPARATOR.join(parts)


def _image_present(client: docker.DockerClient, image_id: str) -> bool:
    try:
        client.images.get(image_id)
        return True
    except docker.errors.ImageNotFound:
        return False


class ScanBlocked(TeachlabError):
    """A known vulnerability in the Jupyter server environment that no admin accepted."""


@dataclass(frozen=True)
class VersionLocks:
    """The three locks of a published version, read back to rebuild it (``--from-lock``)."""

    course: str
    server: str | None
    debian: str | None


def read_version_locks(registry: VersionRegistry, slug: str, version: str) -> VersionLocks:
    """A version's locks; versions published before the server and Debian layers were locked have only the course lock."""
    optional = {
        kind: registry.read_lock(slug, version, kind) if registry.has_file(slug, version, kind) else None
        for kind in ("server", "debian")
    }
    return VersionLocks(registry.read_lock(slug, version), optional["server"], optional["debian"])


def build_from_locks(builder: ImageBuilder, course: Course, locks: VersionLocks) -> CandidateImage:
    """The whole image from a version's locks: the base from its server and Debian locks, then the course layer."""
    base = None
    if locks.server is not None or locks.debian is not None:
        base = builder.build_base(course.image_flavor, server_lock=locks.server, debian_lock=locks.debian)
    return builder.build_course(course, lock=locks.course, base_image=base)


def ensure_pushed(
    registry: VersionRegistry,
    slug: str,
    version: CourseVersion,
    *,
    settings: BuildSettings,
    client: docker.DockerClient,
    progress: Progress | None = None,
) -> str | None:
    """An existing version's registry image: pushed and recorded now when the lab has a registry and the version was
    published before it had one (publishing again or rolling back is how such a version reaches the nodes)."""
    if settings.registry_address is None or version.registry_image is not None:
        return version.registry_image
    progress = progress or Progress(quiet=True)
    with progress.step(f"push {slug} {version.version} to the registry {settings.registry_address}"):
        reference = push_version(client, image_id=version.image_id, slug=slug, version=version.version, settings=settings)
    registry.record_registry_image(slug, version.version, reference)
    return reference


def _blocked_message(slug: str, blocked: list[dict], scan: dict) -> str:
    data = scan["advisory_data"]
    lines = [
        f"{slug}: known vulnerabilities in the Jupyter server environment (advisory data of {data['date']}, {data['source']}):"
    ]
    for finding in blocked:
        fixed = ", ".join(finding["fixed"]) or "no fixed version yet"
        lines.append(
            f"  {finding['id']}: {finding['package']} {finding['installed']} (fixed in {fixed}) {finding['summary'][:100]}"
        )
    lines.append(
        "update the pin in constraints.txt and the server lock (teachlab image lock-server), or, if it cannot be exploited here, "
        f"accept it: --accept {blocked[0]['id']} --reason '...' --expires YYYY-MM-DD"
    )
    return "\n".join(lines)


def publish_course(
    course: Course,
    *,
    settings: BuildSettings,
    progress: Progress | None = None,
    client: docker.DockerClient | None = None,
    from_lock: str | None = None,
    accept: Sequence[Acceptance] = (),
    today: date | None = None,
    actor: str | None = None,
    confinement: BuildConfinement | None = None,
    on_wait: Callable[[], None] | None = None,
) -> PublishResult:
    """Build, smoke-test, scan and make current a new version of ``course``; reuse an identical version.

    ``accept`` records admins' acceptances of advisories in the server environment (used by this and
    later publishes until they expire). ``actor`` is who publishes (the history and the version record
    it); ``confinement`` runs the course build on the mirror proxy's network with limits (the service's
    builds of instructors' environments); ``on_wait`` is called when another publish of the course runs."""
    started = time.monotonic()
    progress = progress or Progress(quiet=True)
    client = client or connect()
    today = today or date.today()
    actor = actor or login_name()
    builder = ImageBuilder(settings, progress, client, confinement=confinement)
    registry = VersionRegistry(settings.registry_dir)
    database = load_advisories(settings.advisory_db) if settings.advisory_db else None
    store = AcceptanceStore(settings.layout.acceptances)
    with registry.exclusive(course.slug, on_wait=on_wait):
        previous = registry.read(course.slug).current
        try:
            return _publish_locked(
                course,
                builder=builder,
                registry=registry,
                database=database,
                store=store,
                progress=progress,
                client=client,
                from_lock=from_lock,
                accept=accept,
                today=today,
                actor=actor,
                started=started,
            )
        except Exception as error:
            registry.record_event(
                course.slug, HistoryEntry(_now(), actor, "publish", previous, None, "failed", _first_line(error))
            )
            raise


def _publish_locked(
    course: Course,
    *,
    builder: ImageBuilder,
    registry: VersionRegistry,
    database,
    store: AcceptanceStore,
    progress: Progress,
    client: docker.DockerClient,
    from_lock: str | None,
    accept: Sequence[Acceptance],
    today: date,
    actor: str,
    started: float,
) -> PublishResult:
    """``publish_course`` while it holds the course's lock."""
    settings = builder.settings
    if from_lock:
        candidate = build_from_locks(builder, course, read_version_locks(registry, course.slug, from_lock))
    else:
        candidate = builder.build_course(course)
    record = registry.read(course.slug)
    same = record.with_environment_hash(candidate.environment_hash)
    if same and _image_present(client, same.image_id):
        registry_image = ensure_pushed(registry, course.slug, same, settings=settings, client=client, progress=progress)
        outcome = "unchanged" if record.current == same.version else "restored"
        event = HistoryEntry(_now(), actor, "publish", record.current, same.version, outcome)
        if outcome == "restored":
            registry.make_current(course.slug, same.version, event)
        else:
            registry.record_event(course.slug, event)
        return PublishResult(
            course.slug,
            same.version,
            same.image,
            same.environment_hash,
            outcome,
            time.monotonic() - started,
            previous=record.current,
            registry_image=registry_image,
        )
    with progress.step(f"smoke test {course.slug}: run code in the default kernel"):
        smoke = run_smoke_test(
            client,
            image=candidate.image_id,
            course=course,
            distributions=candidate.top_level_distributions,
            labels={**settings.labels, Labels.SMOKE_TEST: course.slug},
        )
    progress.info(
        f"smoke test passed: Python {smoke.python} in the kernel '{smoke.default_kernel_title}', "
        f"{len(smoke.imports)} package(s) import"
    )
    helper_labels = {**settings.labels, Labels.LOCK_READER: course.slug}
    with progress.step(f"scan {course.slug}: both Python environments and the Debian packages"):
        contents = read_contents(client, candidate.image_id, helper_labels)
        debian = scan_debian_with_trivy(candidate.image_id, settings.trivy_cache_dir)
        scan = scan_image(contents, database, acceptances=[*store.read(), *accept], today=today, debian=debian)
    progress.info(f"scan: {scan_summary(scan)}")
    blocked = blocking_findings(scan)
    if blocked:
        raise ScanBlocked(_blocked_message(course.slug, blocked, scan))
    if accept:
        store.add(accept)
    version = record.next_version()
    reference, image_id = builder.tag_version(candidate, version, image_labels(contents))
    files: dict[str, str | bytes] = {
        "server": _read_file(client, image_id, IMAGE.server_lock, helper_labels),
        "debian": contents.debian_lock(),
        "contents": json.dumps(contents.as_dict(), indent=1),
        "environment": (course.folder / ENVIRONMENT_FILE).read_text(),
    }
    with progress.step(f"SBOM of {course.slug} {version} (CycloneDX)"), tempfile.TemporaryDirectory() as folder:
        sbom = Path(folder) / "sbom.cdx.json"
        write_sbom(image_id, sbom)
        files["sbom"] = sbom.read_bytes()
    registry_image = None
    if settings.registry_address is not None:  # last: a failed push leaves nothing recorded
        with progress.step(f"push {course.slug} {version} to the registry {settings.registry_address}"):
            registry_image = push_version(client, image_id=image_id, slug=course.slug, version=version, settings=settings)
    entry = CourseVersion(
        version=version,
        image=reference,
        image_id=image_id,
        environment_hash=candidate.environment_hash,
        created=_now(),
        size_bytes=int(client.images.get(image_id).attrs.get("Size", 0)),
        base_image=candidate.base_image,
        flavor=candidate.flavor.name,
        kernel_python=contents.kernel_python,
        server_python=contents.server_python,
        jupyter_server=contents.server_packages.get("jupyter-server"),
        cuda_runtime=cuda_runtime(contents),
        scan=scan,
        published_by=actor,
        registry_image=registry_image,
    )
    registry.add_current(
        course.slug,
        entry,
        read_lock(client, candidate, helper_labels),
        files,
        HistoryEntry(_now(), actor, "publish", record.current, version, "published"),
    )
    return PublishResult(
        course.slug,
        version,
        reference,
        candidate.environment_hash,
        "published",
        time.monotonic() - started,
        previous=record.current,
        smoke=smoke,
        registry_image=registry_image,
    )


def audit_version(
    registry: VersionRegistry,
    slug: str,
    *,
    settings: BuildSettings,
    today: date,
    client: docker.DockerClient | None = None,
) -> tuple[dict, list[tuple[str, dict]]]:
    """Re-check a course's current version against the newest advisory data; returns the audit and the
    findings its publish-time scan did not have. The audit is recorded with the version. Docker is needed
    only for Trivy, or for a version published before its contents were recorded."""
    database = load_advisories(settings.advisory_db) if settings.advisory_db else None
    with registry.exclusive(slug):
        record = registry.read(slug)
        current = record.current_version
        if current is None:
            raise TeachlabError(f"course {slug} has no published version to audit (publish it: teachlab course publish {slug})")
        labels = {**settings.labels, Labels.LOCK_READER: slug}
        if registry.has_file(slug, current.version, "contents"):
            contents = ImageContents.from_dict(json.loads(registry.version_file(slug, current.version, "contents").read_text()))
        else:
            client = client or connect()
            if not _image_present(client, current.image_id):
                raise TeachlabError(f"{slug} {current.version}: neither its recorded contents nor its image are here to audit")
            contents = read_contents(client, current.image_id, labels)
        debian = None
        if trivy_database_present(settings.trivy_cache_dir):
            client = client or connect()
            if _image_present(client, current.image_id):
                debian = scan_debian_with_trivy(current.image_id, settings.trivy_cache_dir)
        audit = scan_image(
            contents, database, acceptances=AcceptanceStore(settings.layout.acceptances).read(), today=today, debian=debian
        )
        registry.record_audit(slug, current.version, audit)
    return audit, new_findings(current.scan, audit)


def rollback_course(
    slug: str,
    *,
    settings: BuildSettings,
    to_version: str | None = None,
    client: docker.DockerClient | None = None,
    actor: str | None = None,
) -> CourseRecord:
    """Make an earlier version current again (default: the one before the current); the history records who."""
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
        ensure_pushed(registry, slug, target, settings=settings, client=client)
        event = HistoryEntry(_now(), actor or login_name(), "rollback", record.current, target.version, "rolled back")
        return registry.make_current(slug, target.version, event)
