"""teachlab-warmer: the class pre-warm, a hub-managed service.

Every half minute it looks at each course's sessions (course.yaml ``sessions``, in the lab's time zone):
from ``lead`` before a session's start until its end, the enrolled students the hub knows (listed in
course.yaml, or members of its groups) get their server started, a few seconds apart, as long as the warm
servers' memory stays within the admin's budget. GPU courses too, within their quotas: the start itself is
refused otherwise. ``grace`` after the start, a warm server its student never opened is stopped (wasted);
one that was opened is left alone (used). Starts go through the hub's REST API with the service's own token
(least scopes), so the refresh of each student's sign-in and every check of a normal start apply.

``POST <prefix>api/warm/<course>`` (scope ``custom:teachlab-warmer:warm``) warms a course now: what
``teachlab class warm SLUG --now`` calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

from jupyterhub.services.auth import HubAuthenticated, check_scopes
from jupyterhub.utils import url_path_join
from tornado import ioloop, web

from ..catalog import Catalog, Course
from ..catalog.cache import CatalogCache
from ..catalog.timetable import due_for_warming, occurrences
from ..core.blocking import LEDGER, run_blocking
from ..core.contract import Scopes
from ..hubclient import HubApi, HubRefused
from ..prewarm.planner import plan_warm
from ..prewarm.records import WarmRecords
from . import run_until_stopped
from .hubpage import ServiceHandling

log = logging.getLogger("teachlab.warmer")
TICK_SECONDS = 30
# A warm server counts as opened when the hub saw activity on it this long after it started.
USED_AFTER_SECONDS = 30


@dataclass(frozen=True)
class WarmSettings:
    lead: timedelta
    grace: timedelta
    budget_bytes: int
    stagger_seconds: float
    zone: ZoneInfo


class Warmer:
    """One lab's pre-warm: decides and acts through the hub's API; its records say what it did."""

    def __init__(
        self,
        *,
        hub: HubApi,
        records: WarmRecords,
        catalog_cache: CatalogCache,
        settings: WarmSettings,
        today: Callable[[], date],
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ):
        self.hub = hub
        self.records = records
        self.catalog_cache = catalog_cache
        self.settings = settings
        self.today = today
        self.clock = clock
        self._busy: set[tuple[str, datetime]] = set()

    async def tick(self) -> None:
        catalog = await self.catalog_cache.refresh()
        now = self.clock()
        for course in catalog.courses.values():
            if not course.sessions or not (course.term.start <= self.today() <= course.term.end):
                continue
            for occurrence in occurrences(course.slug, course.sessions, now, self.settings.zone):
                if due_for_warming(occurrence, now, self.settings.lead):
                    await self.warm(course, occurrence.starts)
        await self.clean_up(catalog, now)

    async def enrolled(self, course: Course) -> set[str]:
        """The students the hub knows: listed by name in course.yaml, and members of the course's groups."""
        students = {name for name in course.students.users if await self.hub.user(name) is not None}
        for group in course.students.groups:
            students.update(await self.hub.group_members(group))
        return students - set(course.instructors.users)

    async def warm(self, course: Course, session_start: datetime) -> dict[str, list[str]]:
        """Start the servers this session still needs; returns who was started, refused and left over."""
        key = (course.slug, session_start)
        if key in self._busy:
            return {"started": [], "refused": [], "over_budget": []}
        self._busy.add(key)
        try:
            students = sorted(await self.enrolled(course))
            running = []
            for name in students:
                model = await self.hub.user(name)
                if model and course.slug in (model.get("servers") or {}):
                    running.append(name)
            already = await run_blocking(LEDGER, self.records.warmed, course.slug, session_start)
            in_use = sum(record.memory_bytes for record in await run_blocking(LEDGER, self.records.undecided))
            plan = plan_warm(
                enrolled=students,
                running=running,
                already_warmed=already,
                memory_per_server=course.resources.memory_bytes,
                budget_bytes=self.settings.budget_bytes,
                warm_memory_in_use=in_use,
            )
            started, refused = [], []

            async def start(name: str) -> None:
                try:
                    await self.hub.start_server(name, course.slug)
                    started.append(name)
                except HubRefused as refusal:
                    if refusal.status == 400 and "pending" in refusal.message:
                        started.append(name)  # a start of its own is already under way
                        return
                    refused.append(name)
                    await self._decide_latest(name, course.slug, session_start, "refused", refusal.message)

            # The requests go out ``stagger`` apart without waiting for each other (the hub answers a start only
            # once it is up or after its slow-spawn timeout); the hub's admission queue paces the boots.
            requests = []
            for name in plan.start:
                claimed = await run_blocking(
                    LEDGER,
                    self.records.claim,
                    username=name,
                    course=course.slug,
                    session_start=session_start,
                    memory_bytes=course.resources.memory_bytes,
                    now=self.clock(),
                )
                if claimed:
                    requests.append(asyncio.ensure_future(start(name)))
                    await asyncio.sleep(self.settings.stagger_seconds)
            await asyncio.gather(*requests)
            started.sort()
            refused.sort()
            if plan.over_budget:
                log.warning(
                    "warm %s: %d student(s) over the memory budget: %s",
                    course.slug,
                    len(plan.over_budget),
                    ", ".join(plan.over_budget),
                )
            log.info("warm %s for %s: started %d, refused %d", course.slug, session_start.isoformat(), len(started), len(refused))
            return {"started": started, "refused": refused, "over_budget": list(plan.over_budget)}
        finally:
            self._busy.discard(key)

    async def _decide_latest(self, username: str, course: str, session_start: datetime, outcome: str, detail: str) -> None:
        for record in await run_blocking(LEDGER, self.records.undecided):
            if (record.username, record.course, record.session_start) == (username, course, session_start):
                await run_blocking(LEDGER, self.records.decide, record.id, outcome, detail)

    async def clean_up(self, catalog: Catalog, now: datetime) -> None:
        """After the grace: stop warm servers nobody opened (wasted), keep the opened ones (used). The grace counts
        from the session's start, or from the warm start when that came later (a lab restarted during class)."""
        for record in await run_blocking(LEDGER, self.records.undecided):
            course = catalog.courses.get(record.course)
            if course is not None and now < max(record.session_start, record.warmed_at) + self.settings.grace:
                continue
            model = await self.hub.user(record.username) or {}
            server = (model.get("servers") or {}).get(record.course)
            if server is None:
                await run_blocking(LEDGER, self.records.decide, record.id, "used", "stopped before the check")
                continue
            if was_opened(server):
                await run_blocking(LEDGER, self.records.decide, record.id, "used", "")
                continue
            try:
                await self.hub.stop_server(record.username, record.course)
            except HubRefused as refusal:
                log.warning("could not stop the unused warm server %s/%s: %s", record.username, record.course, refusal.message)
                continue
            await run_blocking(LEDGER, self.records.decide, record.id, "wasted", "nobody opened it")


def was_opened(server: Mapping) -> bool:
    """The hub saw activity on the server a while after it started: someone opened it."""
    started, last = server.get("started"), server.get("last_activity")
    if not started or not last:
        return False
    started_at = datetime.fromisoformat(started.replace("Z", "+00:00"))
    last_at = datetime.fromisoformat(last.replace("Z", "+00:00"))
    return (last_at - started_at).total_seconds() > USED_AFTER_SECONDS


class WarmNowHandler(HubAuthenticated, ServiceHandling, web.RequestHandler):
    """``POST api/warm/<course>``: warm a course now (admins, and the lab's CLI)."""

    @web.authenticated
    async def post(self, slug: str):
        if not check_scopes(Scopes.WARM, set(self.current_user.get("scopes", ()))):
            raise web.HTTPError(403, f"this needs the scope {Scopes.WARM}")
        warmer: Warmer = self.settings["warmer"]
        catalog = await warmer.catalog_cache.refresh()
        course = catalog.courses.get(slug)
        if course is None:
            raise web.HTTPError(404, f"no course {slug!r}; courses: {', '.join(sorted(catalog.courses))}")
        now = warmer.clock().replace(second=0, microsecond=0)
        result = await warmer.warm(course, now)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"course": slug, "session_start": now.isoformat(), **result}))

    write_error = ServiceHandling.write_json_error


def make_app(*, prefix: str, warmer: Warmer) -> web.Application:
    return web.Application([(url_path_join(prefix, r"api/warm/([a-z0-9-]+)"), WarmNowHandler)], warmer=warmer)


def main(environ: Mapping[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    # Set by spawner.hub.config.warmer_service from the lab's settings (their defaults live there).
    settings = WarmSettings(
        lead=timedelta(minutes=float(env["TEACHLAB_WARM_LEAD_MINUTES"])),
        grace=timedelta(minutes=float(env["TEACHLAB_WARM_UNUSED_MINUTES"])),
        budget_bytes=int(env["TEACHLAB_WARM_MEMORY_BUDGET_BYTES"]),
        stagger_seconds=float(env["TEACHLAB_WARM_STAGGER_SECONDS"]),
        zone=ZoneInfo(env["TEACHLAB_TIMEZONE"]),
    )
    today = (lambda: date.fromisoformat(env["TEACHLAB_TODAY"])) if env.get("TEACHLAB_TODAY") else date.today
    warmer = Warmer(
        hub=HubApi(env["JUPYTERHUB_API_URL"], env["JUPYTERHUB_API_TOKEN"]),
        records=WarmRecords.open(env["TEACHLAB_RECORDS_URL"]),
        catalog_cache=CatalogCache.for_root(Path(env["TEACHLAB_CATALOG"])),
        settings=settings,
        today=today,
    )
    app = make_app(prefix=env["JUPYTERHUB_SERVICE_PREFIX"], warmer=warmer)
    url = urlparse(env["JUPYTERHUB_SERVICE_URL"])
    app.listen(url.port, url.hostname)

    async def forever() -> None:
        while True:
            try:
                await warmer.tick()
            except Exception:
                log.exception("warm tick failed; trying again")
            await asyncio.sleep(TICK_SECONDS)

    ioloop.IOLoop.current().add_callback(forever)
    run_until_stopped()


if __name__ == "__main__":
    main()
