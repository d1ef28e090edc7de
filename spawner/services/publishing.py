"""Publishing from the browser: what ``teachlab-courses`` does with an instructor's environment.yml.

* A candidate is checked beside the course's own course.yaml exactly as ``teachlab course validate``
  checks a course: the same one-line problems (``check_candidate``); nothing is written while it has any.
* One publish per course at a time in this service (a second is refused with who started the running one,
  and when); a publish from the CLI at the same time waits on the registry's lock and the log says so.
* The build is confined (``spawner.images.confinement``): the mirror proxy's internal network, memory, CPU
  share and time limits. Its log, the smoke test and the scan go to the page as they happen.
* Only a publish that passed replaces the catalog's environment.yml (atomically); a failure changes nothing.
  A rollback makes an earlier version current and puts its environment.yml back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import docker

from ..catalog import COURSE_FILE, ENVIRONMENT_FILE, Course, load_course
from ..core.blocking import PUBLISHES, run_blocking
from ..core.problems import TeachlabError
from ..core.progress import Progress
from ..images.build import ImageBuilder
from ..images.mirror_proxy import MirrorProxy
from ..images.publish import publish_course, rollback_course
from ..images.registry import CourseRecord, VersionRegistry
from ..images.scan import scan_summary
from ..images.settings import BuildSettings

log = logging.getLogger("teachlab.courses")
MAX_ENVIRONMENT_BYTES = 64 * 1024
LOG_LINES_KEPT = 5000


def check_candidate(catalog_root: Path, slug: str, text: str, workdir: Path) -> Course:
    """The course with ``text`` as its environment.yml, checked as ``teachlab course validate`` checks it.

    Raises ProblemsError (one line per problem, naming the catalog's file) or TeachlabError (too large)."""
    if len(text.encode("utf-8")) > MAX_ENVIRONMENT_BYTES:
        raise TeachlabError(
            f"{slug}/{ENVIRONMENT_FILE} is larger than {MAX_ENVIRONMENT_BYTES // 1024} KiB; list the packages, not their files"
        )
    folder = workdir / slug
    folder.mkdir(parents=True)
    shutil.copyfile(catalog_root / slug / COURSE_FILE, folder / COURSE_FILE)
    (folder / ENVIRONMENT_FILE).write_text(text, encoding="utf-8")
    return load_course(folder, shown_folder=Path(catalog_root.name) / slug)


def write_environment(course_folder: Path, text: str) -> None:
    """Replace the catalog's environment.yml in one rename, so the hub's catalog reader never sees half a file."""
    handle, temporary = tempfile.mkstemp(dir=course_folder, prefix=".environment.", suffix=".yml")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, course_folder / ENVIRONMENT_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def version_rows(record: CourseRecord) -> list[dict[str, Any]]:
    """A course's versions for its page, newest first."""
    return [
        {
            "version": version.version,
            "current": version.version == record.current,
            "created": version.created,
            "environment_hash": version.environment_hash[:12],
            "size_mb": round(version.size_bytes / 1e6, 1),
            "kernel_python": version.kernel_python,
            "scan": scan_summary(version.scan),
            "published_by": version.published_by or "",
        }
        for version in reversed(record.versions)
    ]


def history_rows(record: CourseRecord, limit: int = 50) -> list[dict[str, Any]]:
    """The newest publishes and rollbacks first: who, when, from which version to which, and how it ended."""
    return [vars(entry) for entry in reversed(record.history[-limit:])]


@dataclass
class PublishJob:
    """One publish: its log (lines), and how it ended."""

    id: str
    course: str
    actor: str
    started_at: datetime
    lines: list[str] = field(default_factory=list)
    state: str = "running"  # "running", "succeeded" or "failed"
    result: dict[str, Any] | None = None
    error: str | None = None
    task: asyncio.Future | None = field(default=None, repr=False)  # kept, so it is not collected while it runs
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def add(self, line: str) -> None:
        if len(self.lines) < LOG_LINES_KEPT:
            self.lines.append(line)

    def wake(self) -> None:
        """Wake the log's followers (on the event loop)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changed(self, timeout: float) -> None:
        """Return when a line was added or the job ended, or after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "course": self.course,
            "actor": self.actor,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "state": self.state,
            "result": self.result,
            "error": self.error,
            "lines": len(self.lines),
        }


class JobProgress(Progress):
    """A ``Progress`` that writes every step, build line and note into a job's log, from the publish thread."""

    def __init__(self, job: PublishJob, wake: Callable[[], None]):
        super().__init__(quiet=True)
        self.job = job
        self._wake = wake

    def _line(self, text: str) -> None:
        self.job.add(text)
        self._wake()

    def step(self, title: str):
        self._line(f"... {title}")
        return super().step(title)

    def detail(self, text: str) -> None:
        self._line(text)

    def info(self, text: str) -> None:
        self._line(text)

    def _finish(self, outcome: str) -> None:
        self._line(f"{'ok' if outcome == 'done' else 'FAILED'}: {self._step}")


class PublishBusy(TeachlabError):
    """A publish of this course is running in this service."""


class PublishJobs:
    """The running and the latest publish of each course."""

    def __init__(self) -> None:
        self.running: dict[str, PublishJob] = {}
        self.latest: dict[str, PublishJob] = {}
        self.by_id: dict[str, PublishJob] = {}

    def refuse_if_busy(self, course: str) -> None:
        job = self.running.get(course)
        if job is not None:
            raise PublishBusy(
                f"a publish of {course} by {job.actor} is running since {job.started_at.strftime('%H:%M:%S')} UTC; "
                "wait until it ends (follow its log on the course page), then publish again"
            )

    def start(self, course: str, actor: str, work: Callable[[JobProgress], dict[str, Any]]) -> PublishJob:
        """Start ``work`` in the publishes pool; refuse (PublishBusy) while this course has a running publish."""
        self.refuse_if_busy(course)
        loop = asyncio.get_running_loop()
        job = PublishJob(id=secrets.token_hex(8), course=course, actor=actor, started_at=datetime.now(timezone.utc))
        self.running[course] = self.latest[course] = self.by_id[job.id] = job
        progress = JobProgress(job, lambda: loop.call_soon_threadsafe(job.wake))

        async def run() -> None:
            try:
                job.result = await run_blocking(PUBLISHES, work, progress)
                job.state = "succeeded"
            except TeachlabError as error:
                job.error = str(error).strip()
                job.state = "failed"
            except Exception as error:  # the page must learn that the publish ended; the log keeps the traceback
                log.exception("publish of %s by %s failed unexpectedly", course, actor)
                job.error = f"the publish failed unexpectedly ({type(error).__name__}: {error}); the lab's admins find the details in the service's log"
                job.state = "failed"
            finally:
                self.running.pop(course, None)
                job.wake()

        job.task = asyncio.ensure_future(run())
        return job


class CoursePublisher:
    """The service's Docker side: publish a candidate through the confined builder, roll back. Blocking
    methods, run in the publishes pool."""

    def __init__(
        self,
        settings: BuildSettings,
        *,
        catalog_root: Path,
        lab: str,
        name_prefix: str,
        labels: Mapping[str, str],
        client: docker.DockerClient,
    ):
        self.settings = settings
        self.catalog_root = catalog_root
        self.lab = lab
        self.name_prefix = name_prefix
        self.labels = dict(labels)
        self.client = client

    @property
    def registry(self) -> VersionRegistry:
        return VersionRegistry(self.settings.registry_dir)

    def mirror_proxy(self, progress: Progress) -> MirrorProxy:
        builder = ImageBuilder(self.settings, progress, self.client)
        return MirrorProxy(builder, lab=self.lab, name_prefix=self.name_prefix, labels=self.labels)

    def publish(self, slug: str, text: str, actor: str, progress: Progress) -> dict[str, Any]:
        """Check, build confined, smoke-test, scan and make current; then the catalog gets the new environment.yml."""
        with tempfile.TemporaryDirectory(prefix="teachlab-candidate-") as work:
            course = check_candidate(self.catalog_root, slug, text, Path(work))
            progress.info(f"{slug}/{ENVIRONMENT_FILE} is valid; publishing as {actor}")
            proxy = self.mirror_proxy(progress)
            confinement = proxy.ensure()
            limits = confinement.limits
            progress.info(
                f"the build reaches only {', '.join(proxy.allowed_hosts())} (through the lab's mirror proxy), "
                f"with {limits.memory_bytes / 2**30:.1f} GiB of memory and {limits.seconds // 60} minutes at most"
            )
            try:
                result = publish_course(
                    course,
                    settings=self.settings,
                    progress=progress,
                    client=self.client,
                    actor=actor,
                    confinement=confinement,
                    on_wait=lambda: progress.info(
                        f"another publish of {slug} holds the course (the teachlab CLI); this one starts when it ends"
                    ),
                )
            except Exception:
                for line in proxy.log_tail(200):
                    if "refused" in line.lower() or "filtered" in line.lower():
                        progress.info(f"mirror proxy: {line.strip()}")
                raise
        write_environment(self.catalog_root / slug, text)
        version = self.registry.read(slug).version(result.version)
        smoke = result.smoke
        return {
            "version": result.version,
            "outcome": result.outcome,
            "previous": result.previous,
            "seconds": round(result.seconds, 1),
            "smoke": None
            if smoke is None
            else {"python": smoke.python, "kernel": smoke.default_kernel_title, "imports": sorted(smoke.imports)},
            "scan": scan_summary(version.scan),
        }

    def rollback(self, slug: str, version: str, actor: str) -> dict[str, Any]:
        """Make ``version`` current again and put its environment.yml back in the catalog (when it was recorded)."""
        record = rollback_course(slug, settings=self.settings, to_version=version, client=self.client, actor=actor)
        registry = self.registry
        restored = registry.has_file(slug, version, "environment")
        if restored:
            write_environment(self.catalog_root / slug, registry.version_file(slug, version, "environment").read_text())
        return {"current": record.current, "environment_restored": restored}
