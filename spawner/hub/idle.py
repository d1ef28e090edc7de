"""Per-course idle limits for jupyterhub-idle-culler.

The culler knows one global timeout; its ``cull_arbiter_hook`` sees each server's model, whose name
is the course slug, so the course's own limit applies (``gpu_idle_timeout_minutes`` for GPU courses).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..catalog import Catalog
from ..catalog.cache import CatalogCache


def idle_limit_seconds(catalog: Catalog, server_name: str, default_seconds: float) -> float:
    course = catalog.courses.get(server_name)
    return course.idle_timeout_seconds if course else default_seconds


def course_idle_arbiter(catalog_path: Path) -> Callable[..., Awaitable[bool]]:
    """A ``cull_arbiter_hook`` using the catalog as it is now (re-read only when its files change)."""
    cache = CatalogCache.for_root(catalog_path)

    async def arbiter(*, inactive: timedelta, inactive_limit: float, server: Mapping[str, Any], **kwargs) -> bool:
        catalog = await cache.refresh()
        return inactive.total_seconds() >= idle_limit_seconds(catalog, server.get("name", ""), inactive_limit)

    return arbiter
