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
from typing import Any, Callable, Optional

from .catalog import COURSE_FILE, ENVIRONMENT_FILE, Catalog, load_catalog
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
    """The last good catalog, refreshed from disk off the event loop."""

    def __init__(self, root: Path, catalog: Catalog):
        self.root = root
        self._catalog = catalog
        self._signature = _signature(root)
        self._refresher: Optional[asyncio.Task] = None

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
        """Blocking: reload when the files changed. Run it in an executor."""
        signature = _signature(self.root)
        if signature != self._signature:
            self._signature = signature
            try:
                self._catalog = load_catalog(self.root)
                log.info("course catalog reloaded: %s", ", ".join(sorted(self._catalog.courses)))
            except ProblemsError as problems:
                for problem in problems.problems:
                    log.error("course catalog not reloaded: %s", problem)
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
    """Template variable ``courses``: what the home page lists for a user."""
    registry = VersionRegistry(registry_dir)

    def rows(user: Any) -> list[dict]:
        if user is None:
            return []
        catalog = cache.catalog
        result = []
        for course, access in catalog.available_to(user.name, user_group_names(user), today()):
            spawner = user.spawners.get(course.slug) if course.slug in user.orm_spawners else None
            current = registry.current_image(course.slug)
            result.append({
                "slug": course.slug,
                "title": course.title,
                "description": course.description,
                "term": f"{course.term.start.isoformat()} to {course.term.end.isoformat()}",
                "cpu": f"{course.resources.cpu:g}",
                "memory": course.resources.memory,
                "gpu": course.gpu,
                "role": access.role,
                "published": current is not None,
                "version": current.version if current else None,
                "active": bool(spawner and spawner.active),
                "stopping": bool(spawner and spawner.pending == "stop"),
                "ready": bool(spawner and spawner.ready),
                "url": user.server_url(course.slug),
            })
        return result

    return rows


def instructor_roles(catalog: Catalog) -> list[dict]:
    """One role per course: its instructors may list, open, start and stop its students' servers."""
    roles = []
    for course in sorted(catalog.courses.values(), key=lambda c: c.slug):
        filters = [f"group={group}" for group in course.students.groups] + [f"user={user}" for user in course.students.users]
        scopes = [f"{scope}!{target}" for target in filters
                  for scope in ("list:users", "read:users:name", "read:users:activity", "read:servers", "servers", "access:servers")]
        if not scopes or not (course.instructors.users or course.instructors.groups):
            continue
        roles.append({
            "name": f"instructor-{course.slug}",
            "description": f"Instructors of {course.title}: list, open, start and stop its students' servers",
            "scopes": scopes,
            "users": list(course.instructors.users),
            "groups": list(course.instructors.groups),
        })
    return roles
