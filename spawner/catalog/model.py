"""The course catalog's model: frozen dataclasses of a checked course.yaml and environment.yml.

Pure: built by ``spawner.catalog.loader``, read by the hub, the image builder and the CLI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ..core.units import parse_memory
from .envfile import CondaEnvironment
from .timetable import Session


@dataclass(frozen=True)
class Members:
    """People named by hub group or username."""

    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()

    def include(self, username: str, user_groups: Iterable[str]) -> bool:
        return username in self.users or not set(self.groups).isdisjoint(user_groups)


@dataclass(frozen=True)
class Term:
    """Students may start the course from ``start`` through ``end`` (both inclusive)."""

    start: date
    end: date


@dataclass(frozen=True)
class Resources:
    cpu: float
    memory: str
    disk: str

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    @property
    def disk_bytes(self) -> int:
        return parse_memory(self.disk)


@dataclass(frozen=True)
class Access:
    """Whether a person may use a course now, as what, and if not, why (shown to them)."""

    role: str | None  # "instructor", "student" or None
    reason: str

    @property
    def allowed(self) -> bool:
        return self.role is not None


@dataclass(frozen=True)
class Course:
    slug: str
    title: str
    description: str
    term: Term
    students: Members
    instructors: Members
    resources: Resources
    gpu: int
    idle_timeout_minutes: int
    gpu_idle_timeout_minutes: int
    gpu_max_server_hours: float
    image_flavor: str
    data_volumes: tuple[str, ...]
    network: str  # "open" or "off": may servers reach the public internet
    environment: CondaEnvironment
    folder: Path
    sessions: tuple[Session, ...] = ()

    def access(self, username: str, user_groups: Iterable[str], today: date) -> Access:
        """Instructors always; students only during the term."""
        groups = tuple(user_groups)
        if self.instructors.include(username, groups):
            return Access("instructor", "you teach this course")
        if not self.students.include(username, groups):
            return Access(None, f"you are not enrolled in '{self.slug}'")
        if today < self.term.start:
            return Access(None, f"the term of '{self.slug}' starts on {self.term.start.isoformat()}")
        if today > self.term.end:
            return Access(None, f"the term of '{self.slug}' ended on {self.term.end.isoformat()}")
        return Access("student", "you are enrolled")

    @property
    def idle_timeout_seconds(self) -> int:
        minutes = self.gpu_idle_timeout_minutes if self.gpu else self.idle_timeout_minutes
        return minutes * 60


@dataclass(frozen=True)
class Catalog:
    root: Path
    courses: Mapping[str, Course]

    def available_to(self, username: str, user_groups: Iterable[str], today: date) -> list[tuple[Course, Access]]:
        """Courses this person may start now, sorted by slug."""
        groups = tuple(user_groups)
        pairs = [(course, course.access(username, groups, today)) for course in self.courses.values()]
        return sorted(((c, a) for c, a in pairs if a.allowed), key=lambda pair: pair[0].slug)
