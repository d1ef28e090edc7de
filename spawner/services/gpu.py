"""teachlab-gpu: the hub-managed service for GPU quotas, holdings and usage (REST API and small pages).

Who may do what is decided by JupyterHub scopes on the caller's token or OAuth session:
``custom:teachlab-gpu:admin`` (admins: read everything, set quotas, release devices),
``custom:teachlab-gpu:usage:<course>`` (instructors: their course's usage); every signed-in user reads
their own usage. Admins set quotas in the page's forms too (XSRF-protected, audited like the CLI's
changes) and see charts of GPU-hours per course over the term and of GPUs held over the last day (uPlot,
served from ``static/``). Pages use the hub's ``page.html``. Started by the hub
(``python -m spawner.services.gpu``) with the JUPYTERHUB_* variables.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated, check_scopes
from jupyterhub.utils import url_path_join
from tornado import web

from ..catalog import Catalog
from ..catalog.cache import CatalogCache
from ..core.blocking import LEDGER, run_blocking
from ..core.contract import Scopes
from ..gpu import LOCAL_NODE, GpuDevice, GpuLedger, QuotaError, term_window
from ..gpu.cache import inventory_for, ledger_for, parse_inventory_setting
from ..gpu.charts import Span, held_over_time, term_usage
from . import run_until_stopped
from .hubpage import STATIC_DIR, HubLinks, ServiceHandling, page_templates

ADMIN_SCOPE = Scopes.GPU_ADMIN
usage_scope = Scopes.gpu_usage
# sha256 of the vendored chart library (static/uplot/README.md says where it comes from).
VENDORED = {
    "uplot/uPlot.iife.min.js": "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
    "uplot/uPlot.min.css": "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
}
USERNAME_MAX_LENGTH = 255


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"cannot serialize {type(value).__name__}")


class GpuHandler(HubOAuthenticated, ServiceHandling, web.RequestHandler):
    """Base: the ledger, the inventory and the catalog, and scope checks on the signed-in caller."""

    @property
    def ledger(self) -> GpuLedger:
        return self.settings["ledger"]

    @property
    def catalog(self) -> Catalog:
        return self.settings["catalog_cache"].catalog

    async def blocking(self, function: Callable, /, **kwargs) -> Any:
        return await run_blocking(LEDGER, function, **kwargs)

    def has(self, scope: str) -> bool:
        return bool(check_scopes(scope, set(self.current_user.get("scopes", ()))))

    def require(self, scope: str) -> None:
        if not self.has(scope):
            raise web.HTTPError(403, f"this needs the scope {scope}")

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload, default=_json_default))

    write_error = ServiceHandling.write_json_error

    async def chart_data(self, now: datetime) -> dict:
        """The charts' series, from the intervals since the earliest GPU course's term began (or the last day)."""
        earliest = min((course.term.start for course in self.catalog.courses.values() if course.gpu), default=now.date())
        since = min(term_window(earliest, earliest)[0], now - timedelta(days=1))
        intervals = await self.blocking(self.ledger.usage_intervals, since=since, until=now)
        return chart_data(intervals, catalog=self.catalog, now=now)

    def known_course(self, course: str) -> None:
        if course not in self.catalog.courses:
            raise web.HTTPError(404, f"no course {course!r}; courses: {', '.join(sorted(self.catalog.courses))}")

    async def change_quota(self, setter: Callable, *, keys: tuple[str, ...], course: str, **fixed: str) -> dict:
        """An admin's quota change: the body's ``keys`` and the ``fixed`` arguments go to the ledger's ``setter``,
        which audits it; a bad value is a 400 that says how to fix it. Returns the values from the body."""
        self.require(ADMIN_SCOPE)
        self.known_course(course)
        body = self.body()
        values = {key: body.get(key) for key in keys}
        try:
            await self.blocking(setter, course=course, **fixed, **values, actor=self.current_user["name"])
        except QuotaError as exc:
            raise web.HTTPError(400, str(exc))
        return values

    async def my_usage(self) -> list[dict]:
        """Per GPU course of the caller's: GPU-hours used and left this term."""
        username = self.current_user["name"]
        today: Callable[[], date] = self.settings["today"]
        rows = []
        for course in sorted(self.catalog.courses.values(), key=lambda c: c.slug):
            if not course.gpu or not course.access(username, self.current_user.get("groups", ()), today()).allowed:
                continue
            remaining = await self.blocking(
                self.ledger.remaining_gpu_hours,
                username=username,
                course=course.slug,
                term_start=course.term.start,
                term_end=course.term.end,
            )
            term_start, term_end = term_window(course.term.start, course.term.end)
            used = await self.blocking(
                self.ledger.usage_seconds,
                username=username,
                course=course.slug,
                since=term_start,
                until=min(datetime.now(timezone.utc), term_end),
            )
            quota = await self.blocking(self.ledger.quota_for, username=username, course=course.slug)
            rows.append(
                {
                    "course": course.slug,
                    "title": course.title,
                    "used_gpu_hours": round(used / 3600, 2),
                    "remaining_gpu_hours": None if remaining is None else round(remaining, 2),
                    "gpu_hours_quota": quota.gpu_hours,
                }
            )
        return rows


class HoldingsHandler(GpuHandler):
    @web.authenticated
    async def get(self):
        self.require(ADMIN_SCOPE)
        devices: list[GpuDevice] = self.settings["devices"]
        holdings = {h.device_uuid: h for h in await self.blocking(self.ledger.holdings, node=LOCAL_NODE)}
        self.write_json(
            [
                {**asdict(device), "holder": asdict(holdings[device.uuid]) if device.uuid in holdings else None}
                for device in devices
            ]
        )


class UsageHandler(GpuHandler):
    @web.authenticated
    async def get(self):
        course = self.get_query_argument("course", None)
        if not self.has(ADMIN_SCOPE):
            if course is None:
                raise web.HTTPError(400, "name your course: ?course=<slug> (only admins see every course)")
            self.require(usage_scope(course))
        rows = await self.blocking(self.ledger.usage_report, course=course)
        self.write_json([{"course": r.course, "username": r.username, "gpu_hours": round(r.gpu_seconds / 3600, 4)} for r in rows])


class MyUsageHandler(GpuHandler):
    @web.authenticated
    async def get(self):
        self.write_json(await self.my_usage())


class QuotasHandler(GpuHandler):
    @web.authenticated
    async def get(self):
        self.require(ADMIN_SCOPE)
        self.write_json(
            {"courses": await self.blocking(self.ledger.course_quotas), "users": await self.blocking(self.ledger.user_overrides)}
        )


class CourseQuotaHandler(GpuHandler):
    @web.authenticated
    async def put(self, course: str):
        body = await self.change_quota(
            self.ledger.set_course_quota, keys=("max_concurrent_gpus", "gpu_hours_per_student"), course=course
        )
        self.write_json({"course": course, **body})


class UserQuotaHandler(GpuHandler):
    @web.authenticated
    async def put(self, course: str, username: str):
        await self.change_quota(self.ledger.set_user_override, keys=("gpu_hours", "max_gpus"), course=course, username=username)
        quota = await self.blocking(self.ledger.quota_for, username=username, course=course)
        self.write_json({"course": course, "username": username, "quota": asdict(quota)})


class ReleaseHandler(GpuHandler):
    @web.authenticated
    async def post(self):
        self.require(ADMIN_SCOPE)
        body = self.body()
        if not isinstance(body.get("username"), str) or not isinstance(body.get("server_name"), str):
            raise web.HTTPError(400, 'send {"username": ..., "server_name": ..., "reason": ...}')
        released = await self.blocking(
            self.ledger.release,
            username=body["username"],
            server_name=body["server_name"],
            reason=str(body.get("reason") or "released by an admin"),
            actor=self.current_user["name"],
        )
        self.write_json({"released": released})


class AuditHandler(GpuHandler):
    @web.authenticated
    async def get(self):
        self.require(ADMIN_SCOPE)
        self.write_json([asdict(entry) for entry in await self.blocking(self.ledger.audit_log, limit=200)])


def chart_data(intervals: list, *, catalog: Catalog, now: datetime) -> dict:
    """The two charts' series: GPU-hours per GPU course over its term, GPUs held over the last day."""
    spans = [Span(interval.course, interval.started_at, interval.ended_at) for interval in intervals]
    gpu_courses = [course for course in catalog.courses.values() if course.gpu]
    terms = {course.slug: (course.term.start, course.term.end) for course in gpu_courses}
    return {
        "term": term_usage(spans, terms=terms, now=now),
        "held": held_over_time(spans, courses=sorted(terms), now=now),
    }


class PageHandler(GpuHandler):
    """The admin page (holdings, charts, quota forms, usage, changes) or, for everyone else, their own usage."""

    async def admin_page(self, *, message: str = "", error: bool = False, status: int = 200) -> None:
        now = datetime.now(timezone.utc)
        charts = await self.chart_data(now)
        holdings = {h.device_uuid: h for h in await self.blocking(self.ledger.holdings, node=LOCAL_NODE)}
        courses = sorted(self.catalog.courses.values(), key=lambda c: (not c.gpu, c.slug))
        self.render_page(
            "gpu_admin.html",
            title="GPUs",
            status=status,
            message=message,
            error=error,
            devices=self.settings["devices"],
            holdings=holdings,
            courses=courses,
            charts=charts,
            quotas=await self.blocking(self.ledger.course_quotas),
            overrides=await self.blocking(self.ledger.user_overrides),
            usage=await self.blocking(self.ledger.usage_report),
            audit=await self.blocking(self.ledger.audit_log, limit=20),
        )

    @web.authenticated
    async def get(self):
        if self.has(ADMIN_SCOPE):
            await self.admin_page()
        else:
            self.render_page("gpu_student.html", title="Your GPU time", rows=await self.my_usage())

    def write_error(self, status_code: int, **kwargs) -> None:
        if self.current_user is None:
            super(GpuHandler, self).write_error(status_code, **kwargs)
        else:
            self.write_error_page(status_code, **kwargs)


def _form_limit(name: str, text_value: str, *, whole: bool) -> int | float | None:
    """A limit typed into a form: empty means none; otherwise a number >= 0 (whole for GPU counts)."""
    value = text_value.strip()
    if not value:
        return None
    try:
        number = int(value) if whole else float(value)
    except ValueError:
        kind = "a whole number" if whole else "a number of hours"
        raise QuotaError(
            f"{name}: {value!r} is not {kind} (write e.g. {'2' if whole else '20 or 7.5'}, or leave it empty for no limit)"
        )
    if not math.isfinite(number) or number < 0:
        raise QuotaError(f"{name}: {value!r} must be 0 or more (leave it empty for no limit)")
    return number


class QuotaFormHandler(PageHandler):
    """The admin page's quota forms: validated, audited with the admin's name, answered with the page."""

    async def save(self, change: Callable[[], Any], done: str) -> None:
        try:
            await self.blocking(change)
        except QuotaError as exc:
            await self.admin_page(message=f"Nothing was changed: {exc}", error=True, status=400)
            return
        await self.admin_page(message=done)

    def course_argument(self) -> str:
        course = self.get_body_argument("course", "").strip()
        self.known_course(course)
        return course


class CourseQuotaForm(QuotaFormHandler):
    @web.authenticated
    async def post(self):
        self.require(ADMIN_SCOPE)
        course = self.course_argument()
        try:
            max_concurrent = _form_limit("GPUs at once", self.get_body_argument("max_concurrent_gpus", ""), whole=True)
            hours = _form_limit("GPU-hours per student", self.get_body_argument("gpu_hours_per_student", ""), whole=False)
        except QuotaError as exc:
            await self.admin_page(message=f"Nothing was changed: {exc}", error=True, status=400)
            return
        await self.save(
            lambda: self.ledger.set_course_quota(
                course, max_concurrent_gpus=max_concurrent, gpu_hours_per_student=hours, actor=self.current_user["name"]
            ),
            f"{course}: {'no limit' if max_concurrent is None else max_concurrent} GPUs at once, "
            f"{'unlimited' if hours is None else f'{hours:g}'} GPU-hours per student this term.",
        )


class StudentQuotaForm(QuotaFormHandler):
    @web.authenticated
    async def post(self):
        self.require(ADMIN_SCOPE)
        course = self.course_argument()
        username = self.get_body_argument("username", "").strip()
        if not username or len(username) > USERNAME_MAX_LENGTH or any(character.isspace() for character in username):
            await self.admin_page(
                message="Nothing was changed: name the student by their username (no spaces), e.g. alice", error=True, status=400
            )
            return
        try:
            hours = _form_limit("GPU-hours", self.get_body_argument("gpu_hours", ""), whole=False)
            max_gpus = _form_limit("GPUs at once", self.get_body_argument("max_gpus", ""), whole=True)
        except QuotaError as exc:
            await self.admin_page(message=f"Nothing was changed: {exc}", error=True, status=400)
            return
        if hours is None and max_gpus is None:
            done = f"{username} in {course}: the override is removed; the course's limits apply."
        else:
            done = (
                f"{username} in {course}: {'the course value of' if hours is None else f'{hours:g}'} GPU-hours, "
                f"{'no cap of their own on' if max_gpus is None else max_gpus} GPUs at once."
            )
        await self.save(
            lambda: self.ledger.set_user_override(
                username, course, gpu_hours=hours, max_gpus=max_gpus, actor=self.current_user["name"]
            ),
            done,
        )


class ChartsHandler(GpuHandler):
    @web.authenticated
    async def get(self):
        self.require(ADMIN_SCOPE)
        now = datetime.now(timezone.utc)
        charts = await self.chart_data(now)
        self.write_json(charts)


def make_app(
    *,
    prefix: str,
    ledger: GpuLedger,
    devices: list[GpuDevice],
    catalog_cache: CatalogCache,
    today: Callable[[], date] = date.today,
    links: HubLinks | None = None,
) -> web.Application:
    api = url_path_join(prefix, "api")
    return web.Application(
        [
            (prefix, PageHandler),
            (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
            (url_path_join(prefix, "quotas/course"), CourseQuotaForm),
            (url_path_join(prefix, "quotas/student"), StudentQuotaForm),
            (url_path_join(prefix, "static/(.*)"), web.StaticFileHandler, {"path": str(STATIC_DIR)}),
            (url_path_join(api, "charts"), ChartsHandler),
            (url_path_join(api, "holdings"), HoldingsHandler),
            (url_path_join(api, "usage"), UsageHandler),
            (url_path_join(api, "me"), MyUsageHandler),
            (url_path_join(api, "quotas"), QuotasHandler),
            (url_path_join(api, r"quotas/courses/([a-z0-9-]+)"), CourseQuotaHandler),
            (url_path_join(api, r"quotas/courses/([a-z0-9-]+)/users/([^/]+)"), UserQuotaHandler),
            (url_path_join(api, "release"), ReleaseHandler),
            (url_path_join(api, "audit"), AuditHandler),
        ],
        cookie_secret=os.urandom(32),
        ledger=ledger,
        devices=devices,
        catalog_cache=catalog_cache,
        templates=page_templates(),
        today=today,
        links=links or HubLinks(hub_url="/hub/", base_prefix="/"),
        service_prefix=prefix,
    )


def main(environ: dict | None = None) -> None:
    env = os.environ if environ is None else environ
    prefix = env["JUPYTERHUB_SERVICE_PREFIX"]
    app = make_app(
        prefix=prefix,
        ledger=ledger_for(env["TEACHLAB_GPU_LEDGER_URL"]),
        devices=inventory_for(parse_inventory_setting(env.get("TEACHLAB_GPU_INVENTORY"))),
        catalog_cache=CatalogCache.for_root(Path(env["TEACHLAB_CATALOG"])),
        today=(lambda: date.fromisoformat(env["TEACHLAB_TODAY"])) if env.get("TEACHLAB_TODAY") else date.today,
        links=HubLinks.from_environment(env),
    )
    url = urlparse(env["JUPYTERHUB_SERVICE_URL"])
    app.listen(url.port, url.hostname)
    run_until_stopped()


if __name__ == "__main__":
    main()
