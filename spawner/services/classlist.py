"""Who is in a class and what their servers do: the rows of an instructor's class page (pure).

Students are the course's ``students.users`` and the hub users in its ``students.groups`` (a person the hub
has not seen active yet is listed as never signed in). For each: whether their course server runs, since when,
their last activity, the course version it runs (and whether an older one than the current), the GPUs it
holds and the GPU-hours they used this term.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..catalog import Course
from ..core.naming import version_number


@dataclass(frozen=True)
class StudentRow:
    username: str
    known: bool  # the hub knows them (they signed in, or an admin made them)
    status: str  # "running", "starting", "stopping", "stopped" or "never signed in"
    started: str | None  # ISO 8601, as the hub reports it
    last_activity: str | None
    version: str | None  # the course version their running server was started from
    outdated: bool  # that version is older than the current one
    gpus_held: int
    gpu_hours: float  # this term
    server_url: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status(server: Mapping[str, Any] | None) -> str:
    if not server:
        return "stopped"
    if server.get("pending") == "stop":
        return "stopping"
    if server.get("ready"):
        return "running"
    return "starting"


def _has_been_active(user: Mapping[str, Any] | None) -> bool:
    """Signed in, or had a server, at some time: the hub also records students listed in course.yaml before their
    first sign-in (so that the class pre-warm can start their servers); those have no activity yet."""
    return bool(user and user.get("last_activity"))


def is_older(version: str | None, current: str | None) -> bool:
    if not version or not current:
        return False
    return version_number(version) < version_number(current)


def class_rows(
    course: Course,
    *,
    users: Iterable[Mapping[str, Any]],
    running_versions: Mapping[str, str],
    current_version: str | None,
    gpus_held: Mapping[str, int],
    gpu_seconds: Mapping[str, float],
    server_url: Callable[[str], str],
) -> list[StudentRow]:
    """One row per student of ``course``, by username.

    ``users`` are the hub's user models (name, groups, servers); ``running_versions`` the version each
    student's running container was made from; ``gpus_held`` and ``gpu_seconds`` per username."""
    known = {user["name"]: user for user in users}
    names = set(course.students.users)
    names.update(name for name, user in known.items() if course.students.include(name, user.get("groups") or ()))
    rows = []
    for name in sorted(names):
        user = known.get(name)
        server = (user.get("servers") or {}).get(course.slug) if user else None
        version = running_versions.get(name) if server else None
        rows.append(
            StudentRow(
                username=name,
                known=user is not None,
                status=_status(server) if server or _has_been_active(user) else "never signed in",
                started=server.get("started") if server else None,
                last_activity=(server or {}).get("last_activity") or (user or {}).get("last_activity"),
                version=version,
                outdated=is_older(version, current_version),
                gpus_held=gpus_held.get(name, 0),
                gpu_hours=round(gpu_seconds.get(name, 0.0) / 3600, 2),
                server_url=server_url(name),
            )
        )
    return rows
