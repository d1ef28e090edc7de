"""The live catalog: the last good catalog, re-read when its files change.

A new or edited course needs no hub restart; an edit that breaks the catalog is logged with the usual
one-line problems and the last good catalog stays in use. Pages rendered on the event loop read the
in-memory snapshot (``catalog``); files are checked in the ``files`` pool (``refresh``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..core.blocking import FILES, run_blocking
from ..core.problems import ProblemsError
from .loader import COURSE_FILE, ENVIRONMENT_FILE, load_catalog
from .model import Catalog

log = logging.getLogger("teachlab")
REFRESH_SECONDS = 10

_caches: dict[Path, CatalogCache] = {}


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
    """The last good catalog of one folder; ``on_reload`` callbacks run (in the files pool) after each
    successful reload, with the new catalog."""

    def __init__(self, root: Path, catalog: Catalog):
        self.root = root
        self._catalog = catalog
        self._signature = _signature(root)
        self._refresher: asyncio.Task | None = None
        self._listeners: list[Callable[[Catalog], None]] = []
        self._async_listeners: list[Callable[[Catalog], Awaitable[None]]] = []

    @classmethod
    def for_root(cls, root: Path) -> CatalogCache:
        """One cache per catalog folder; the first call loads it and raises ProblemsError if it is broken."""
        root = Path(root).resolve()
        if root not in _caches:
            _caches[root] = cls(root, load_catalog(root))
        return _caches[root]

    @property
    def catalog(self) -> Catalog:
        self._ensure_background_refresh()
        return self._catalog

    def on_reload(self, listener: Callable[[Catalog], None]) -> None:
        """Call ``listener(catalog)`` after every refresh (blocking work is fine: it runs off the event loop)."""
        self._listeners.append(listener)

    def on_reload_async(self, listener: Callable[[Catalog], Awaitable[None]]) -> None:
        """Await ``listener(catalog)`` on the event loop after every background refresh (for work that must run
        there, such as the hub's database)."""
        self._async_listeners.append(listener)

    def start_background_refresh(self) -> None:
        """Refresh every ``REFRESH_SECONDS`` from now on, when an event loop runs (the hub loads its config in one)."""
        self._ensure_background_refresh()

    def refresh_now(self) -> Catalog:
        """Blocking: reload when the files changed (keep the last good catalog if they are broken or
        unreadable), then tell the listeners."""
        try:
            signature = _signature(self.root)
            if signature != self._signature:
                self._signature = signature
                self._catalog = load_catalog(self.root)
                log.info("course catalog reloaded: %s", ", ".join(sorted(self._catalog.courses)))
        except ProblemsError as problems:
            for problem in problems.problems:
                log.error("course catalog not reloaded: %s", problem)
        except (OSError, ValueError) as exc:
            log.error("course catalog not reloaded: %s", exc)
        for listener in self._listeners:
            try:
                listener(self._catalog)
            except Exception:
                log.exception("a catalog listener failed")
        return self._catalog

    async def refresh(self) -> Catalog:
        return await run_blocking(FILES, self.refresh_now)

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
            catalog = await self.refresh()
            for listener in self._async_listeners:
                try:
                    await listener(catalog)
                except Exception:
                    log.exception("a catalog listener failed")
