"""The hub's home page: one row per course the signed-in person may use now.

Template variables are rendered on the event loop, so the rows come from memory only: the live
catalog's snapshot, and each course's current published version, re-read with the catalog (off the
event loop) rather than at every page view.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from ..catalog import Catalog
from ..catalog.cache import CatalogCache
from ..images.registry import VersionRegistry

TEMPLATES_DIR = Path(__file__).with_name("templates")
# Why the lab stopped a server (lost access, GPU quota, maximum age), shown on the owner's home page until they
# start it again. Kept in the hub's memory: a hub restart forgets the notice, never the stop.
NOTICES: dict[tuple[str, str], str] = {}


def user_group_names(user: Any) -> list[str]:
    """Hub group names of a JupyterHub User (or orm.User)."""
    return [group.name for group in user.groups]


class CurrentVersions:
    """Each course's current published version, refreshed whenever the catalog cache refreshes."""

    def __init__(self, cache: CatalogCache, registry_dir: Path):
        self._registry = VersionRegistry(registry_dir)
        self.versions: dict[str, str] = {}
        self.read(cache.catalog)
        cache.on_reload(self.read)

    def read(self, catalog: Catalog) -> None:
        versions = {}
        for slug in catalog.courses:
            current = self._registry.current_image(slug)
            if current is not None:
                versions[slug] = current.version
        self.versions = versions


def notices_for(user: Any) -> list[dict]:
    """Template variable ``notices``: why the lab stopped this person's servers, also of courses they lost."""
    if user is None:
        return []
    return [{"server": server, "reason": reason} for (name, server), reason in sorted(NOTICES.items()) if name == user.name]


def course_rows(cache: CatalogCache, registry_dir: Path, today: Callable[[], date]) -> Callable[[Any], list[dict]]:
    """Template variable ``courses``: what the home page lists for a user (from memory only)."""
    current = CurrentVersions(cache, registry_dir)

    def rows(user: Any) -> list[dict]:
        if user is None:
            return []
        result = []
        for course, access in cache.catalog.available_to(user.name, user_group_names(user), today()):
            spawner = user.spawners.get(course.slug) if course.slug in user.orm_spawners else None
            version = current.versions.get(course.slug)
            result.append(
                {
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
                }
            )
        return result

    return rows
