"""Hub-side helpers the config file and the spawner share: the live catalog, roles, home page data.

The catalog is re-read when its files change, so a new or edited course needs no hub restart; an
edit that breaks the catalog is logged with the usual one-line problems and the last good catalog
stays in use. The home page reads only the in-memory snapshot (template variables are rendered
on the event loop); files are checked in the executor.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from .catalog import COURSE_FILE, ENVIRONMENT_FILE, Catalog, Course, load_catalog
from .problems import ProblemsError
from .registry import VersionRegistry

log = logging.getLogger("teachlab")
REFRESH_SECONDS = 10

_caches: dict[Path, "CatalogCache"] = {}
_files_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teachlab-catalog")


def _signature(root: Path) -> tuple:
    """Names, sizes and mtimes of every catalog file: cheap to compute, changes on any edit."""
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for name in (COURSE_FILE, ENVIRONMENT_FILE):
            path = folder / name
            try:
                stat = path.stat()
                entries.append((str(path), stat.st_size, stat.st_mtime_ns))
            except FileNotFoundError:
                entries.append((str(path), None, None))
    return tuple(entries)


class CatalogCache:
    """The last good catalog, refreshed from disk off the event loop; with ``watch_versions``, also each
    course's current published version, for pages rendered on the event loop."""

    def __init__(self, root: Path, catalog: Catalog):
        self.root = root
        self._catalog = catalog
        self._signature = _signature(root)
        self._refresher: Optional[asyncio.Task] = None
        self._registry: Optional[VersionRegistry] = None
        self.current_versions: dict[str, str] = {}

    def watch_versions(self, registry_dir: Path) -> None:
        self._registry = VersionRegistry(registry_dir)
        self._read_versions()

    def _read_versions(self) -> None:
        if self._registry is not None:
            versions = {}
            for slug in self._catalog.courses:
                current = self._registry.current_image(slug)
                if current is not None:
                    versions[slug] = current.version
            self.current_versions = versions

    @classmethod
    def for_root(cls, root: Path) -> "CatalogCache":
        """One cache per catalog folder; the first call loads it and raises ProblemsError if it is broken."""
        root = root.resolve()
        if root not in _caches:
            _caches[root] = cls(root, load_catalog(root))
        return _caches[root]

    @property
    def catalog(self) -> Catalog:
        self._ensure_background_refresh()
        return self._catalog

    def refresh_now(self) -> Catalog:
        """Blocking: reload when the files changed (keep the last good catalog if they are broken or
        unreadable). Run it in an executor."""
        try:
            signature = _signature(self.root)
            if signature != self._signature:
                self._signature = signature
                self._catalog = load_catalog(self.root)
                log.info("course catalog reloaded: %s", ", ".join(sorted(self._catalog.courses)))
            self._read_versions()
        except ProblemsError as problems:
            for problem in problems.problems:
                log.error("course catalog not reloaded: %s", problem)
        except (OSError, ValueError) as exc:
            log.error("course catalog not reloaded: %s", exc)
        return self._catalog

    async def refresh(self) -> Catalog:
        return await asyncio.get_running_loop().run_in_executor(_files_executor, self.refresh_now)

    def _ensure_background_refresh(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._refresher is None or self._refresher.done():
            self._refresher = loop.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            await self.refresh()


def user_group_names(user: Any) -> list[str]:
    """Hub group names of a JupyterHub User (or orm.User)."""
    return [group.name for group in user.groups]


def course_rows(cache: CatalogCache, registry_dir: Path, today: Callable[[], date]) -> Callable[[Any], list[dict]]:
    """Template variable ``courses``: what the home page lists for a user (from memory only)."""
    cache.watch_versions(registry_dir)

    def rows(user: Any) -> list[dict]:
        if user is None:
            return []
        catalog = cache.catalog
        result = []
        for course, access in catalog.available_to(user.name, user_group_names(user), today()):
            spawner = user.spawners.get(course.slug) if course.slug in user.orm_spawners else None
            version = cache.current_versions.get(course.slug)
            result.append({
                "slug": course.slug,
                "title": course.title,
                "description": course.description,
                "term": f"{course.term.start.isoformat()} to {course.term.end.isoformat()}",
                "cpu": f"{course.resources.cpu:g}",
                "memory": course.resources.memory,
                "gpu": course.gpu,
                "role": access.role,
                "published": version is not None,
                "version": version,
                "active": bool(spawner and spawner.active),
                "stopping": bool(spawner and spawner.pending == "stop"),
                "ready": bool(spawner and spawner.ready),
                "url": user.server_url(course.slug),
            })
        return result

    return rows


INSTRUCTOR_USER_SCOPES = ("list:users", "read:users:name", "read:users:activity")
INSTRUCTOR_SERVER_SCOPES = ("read:servers", "servers", "access:servers")


def instructor_role_name(slug: str) -> str:
    return f"instructor-{slug}"


def course_students(course: Course, group_members: Mapping[str, Iterable[str]]) -> set[str]:
    """Everyone enrolled in a course: its listed users and the members of its groups."""
    students = set(course.students.users)
    for group in course.students.groups:
        students.update(group_members.get(group, ()))
    return students


def instructor_scopes(slug: str, students: Iterable[str]) -> list[str]:
    """Exactly this course's server of each student: ``servers!server=<student>/<course>``, not ``!group=``,
    which would also cover the student's servers of other courses."""
    scopes = []
    for student in sorted(set(students)):
        scopes += [f"{scope}!user={student}" for scope in INSTRUCTOR_USER_SCOPES]
        scopes += [f"{scope}!server={student}/{slug}" for scope in INSTRUCTOR_SERVER_SCOPES]
    return scopes


def instructor_roles(catalog: Catalog, group_members: Mapping[str, Iterable[str]]) -> list[dict]:
    """One role per course: its instructors may list, open, start and stop its students' course servers.

    ``group_members`` is what the hub knows when it starts (its database); logins keep the roles
    current afterwards (``sync_instructor_scopes``).
    """
    return [
        {
            "name": instructor_role_name(course.slug),
            "description": f"Instructors of {course.title}: list, open, start and stop its students' servers",
            "scopes": instructor_scopes(course.slug, course_students(course, group_members)),
            "users": list(course.instructors.users),
            "groups": list(course.instructors.groups),
        }
        for course in sorted(catalog.courses.values(), key=lambda c: c.slug)
        if course.instructors.users or course.instructors.groups
    ]


def sync_instructor_scopes(db: Any, catalog: Catalog, username: str, groups: Iterable[str]) -> None:
    """At login (the groups claim is fresh): add or remove this user's server in each course's instructor role."""
    from jupyterhub import orm

    groups = set(groups)
    changed = False
    for course in catalog.courses.values():
        role = orm.Role.find(db, instructor_role_name(course.slug))
        if role is None:
            continue
        own = set(instructor_scopes(course.slug, [username]))
        enrolled = course.students.include(username, groups)
        scopes = (set(role.scopes) | own) if enrolled else (set(role.scopes) - own)
        if scopes != set(role.scopes):
            role.scopes = sorted(scopes)
            changed = True
    if changed:
        db.commit()


def instructor_scopes_hook(cache: CatalogCache) -> Callable:
    """``Authenticator.post_auth_hook`` keeping instructor roles equal to course membership."""

    def hook(authenticator: Any, handler: Any, authentication: dict) -> dict:
        groups = authentication.get("groups") or ()
        sync_instructor_scopes(handler.db, cache.catalog, authentication["name"], groups)
        return authentication

    return hook
