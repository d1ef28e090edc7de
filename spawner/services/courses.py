"""teachlab-courses: instructors (and admins) publish course environments and follow their classes in the browser.

Pages (the hub's ``page.html``) and a REST API behind the hub's OAuth, on the service's own origin:

* ``courses/<slug>/``: the course's environment.yml to edit or upload, checked with the same one-line
  problems as ``teachlab course validate``; publish (the log streams into the page; the smoke test and the
  scan show at the end); the published versions and a one-click rollback; who published and rolled back what.
* ``courses/<slug>/class``: its students, whose server runs since when, their last activity, the version
  they run, GPUs held and GPU-hours this term; start, stop and open a student's server.

Who may do what: ``custom:teachlab-courses:publish:<course>`` and ``...:class:<course>`` (the course's
instructors, ``spawner.hub.roles``), ``custom:teachlab-courses:admin`` (admins: every course). Another
course's instructor gets 403 on the pages and the API. A start or stop is sent to the hub with the
instructor's own OAuth token, so the hub checks it against their role (``servers!server=<student>/<course>``);
this service's own token only reads. The service owns the confined builder: instructors never reach Docker.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import docker
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated, check_scopes
from jupyterhub.utils import subdomain_hook_idna, url_path_join
from tornado import httpclient, web
from tornado.iostream import StreamClosedError

from ..catalog import ENVIRONMENT_FILE, Catalog, Course
from ..catalog.cache import CatalogCache
from ..core.blocking import DOCKER_CALLS, FILES, LEDGER, run_blocking
from ..core.contract import Labels, Scopes
from ..core.problems import ProblemsError, TeachlabError
from ..engine import DockerUnavailable, connect
from ..gpu import GpuLedger, term_window
from ..gpu.cache import ledger_for
from ..images.registry import VersionRegistry
from ..images.settings import BuildSettings
from . import run_until_stopped
from .classlist import class_rows
from .hubpage import STATIC_DIR, HubLinks, ServiceHandling, page_templates
from .publishing import CoursePublisher, PublishBusy, PublishJobs, check_candidate, history_rows, version_rows

log = logging.getLogger("teachlab.courses")
SLUG = r"([a-z0-9][a-z0-9-]{0,31})"
USERNAME = r"([^/]{1,255})"
EVENT_KEEPALIVE_SECONDS = 15


class HubApi:
    """The hub's REST API: reads with this service's token, starts and stops with the caller's."""

    def __init__(self, api_url: str, token: str):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.http = httpclient.AsyncHTTPClient()

    async def request(self, method: str, path: str, *, token: str | None = None) -> httpclient.HTTPResponse:
        return await self.http.fetch(
            f"{self.api_url}{path}",
            method=method,
            headers={"Authorization": f"token {token or self.token}", "Accept": "application/jupyterhub-pagination+json"},
            body=b"" if method in ("POST", "PUT") else None,
            allow_nonstandard_methods=True,
            raise_error=False,
            request_timeout=60,
        )

    async def users(self) -> list[dict]:
        """Every hub user with their groups and servers (all pages)."""
        users: list[dict] = []
        offset = 0
        while True:
            response = await self.request("GET", f"/users?offset={offset}&limit=200")
            if response.code != 200:
                raise TeachlabError(f"the hub did not list its users ({response.code}); see the hub's log")
            page = json.loads(response.body)
            users.extend(page["items"])
            following = (page.get("_pagination") or {}).get("next")
            if not following:
                return users
            offset = following["offset"]


class CourseHandler(HubOAuthenticated, ServiceHandling, web.RequestHandler):
    """Base: the course from the URL, the caller's rights on it, pages in the hub's frame, errors as pages or JSON."""

    api = False  # API handlers answer errors as JSON

    @property
    def catalog(self) -> Catalog:
        return self.settings["catalog_cache"].catalog

    @property
    def jobs(self) -> PublishJobs:
        return self.settings["jobs"]

    @property
    def publisher(self) -> CoursePublisher:
        return self.settings["publisher"]

    @property
    def registry(self) -> VersionRegistry:
        return VersionRegistry(self.settings["build_settings"].registry_dir)

    def has(self, scope: str) -> bool:
        return bool(check_scopes(scope, set(self.current_user.get("scopes", ()))))

    def may_publish(self, slug: str) -> bool:
        return self.has(Scopes.COURSES_ADMIN) or self.has(Scopes.course_publish(slug))

    def may_follow(self, slug: str) -> bool:
        return self.has(Scopes.COURSES_ADMIN) or self.has(Scopes.course_class(slug))

    def course(self, slug: str, *, publish: bool = False, follow: bool = False) -> Course:
        """The course, once the caller may do what they ask with it (404 for an unknown course, else 403)."""
        course = self.catalog.courses.get(slug)
        if course is None:
            raise web.HTTPError(404, f"there is no course {slug!r} in this lab")
        if publish and not self.may_publish(slug):
            raise web.HTTPError(403, f"you may not publish {slug}: only its instructors and the lab's admins may")
        if follow and not self.may_follow(slug):
            raise web.HTTPError(403, f"you may not follow the class of {slug}: only its instructors and the lab's admins may")
        return course

    def my_courses(self) -> list[Course]:
        return [
            course
            for course in sorted(self.catalog.courses.values(), key=lambda c: c.slug)
            if self.may_publish(course.slug) or self.may_follow(course.slug)
        ]

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs) -> None:
        if self.api or self.current_user is None:
            self.write_json_error(status_code, **kwargs)
        else:
            self.write_error_page(status_code, **kwargs)

    async def environment_text(self, course: Course) -> str:
        return await run_blocking(FILES, (course.folder / ENVIRONMENT_FILE).read_text)

    async def versions_payload(self, course: Course) -> dict:
        record = await run_blocking(FILES, self.registry.read, course.slug)
        running = self.jobs.running.get(course.slug)
        latest = self.jobs.latest.get(course.slug)
        return {
            "course": course.slug,
            "current": record.current,
            "versions": version_rows(record),
            "history": history_rows(record),
            "environment": await self.environment_text(course),
            "job": (running or latest).summary() if (running or latest) else None,
        }


class IndexPage(CourseHandler):
    @web.authenticated
    async def get(self):
        self.render_page("courses_index.html", title="Your courses", courses=self.my_courses())


class PublishPage(CourseHandler):
    @web.authenticated
    async def get(self, slug: str):
        course = self.course(slug, publish=True)
        self.render_page(
            "course_publish.html",
            title=f"{course.title}: environment",
            course=course,
            may_follow=self.may_follow(slug),
            data=await self.versions_payload(course),
            api_prefix=url_path_join(self.settings["service_prefix"], "api/courses", slug),
        )


class ClassPage(CourseHandler):
    @web.authenticated
    async def get(self, slug: str):
        course = self.course(slug, follow=True)
        self.render_page(
            "course_class.html",
            title=f"{course.title}: class",
            course=course,
            may_publish=self.may_publish(slug),
            students=[row.as_dict() for row in await self.settings["class_rows"](course)],
            api_prefix=url_path_join(self.settings["service_prefix"], "api/courses", slug),
        )


class ValidateApi(CourseHandler):
    api = True

    @web.authenticated
    async def post(self, slug: str):
        course = self.course(slug, publish=True)
        problems = await self.check(course, self.body().get("environment"))
        self.write_json({"valid": not problems, "problems": problems})

    async def check(self, course: Course, environment: Any) -> list[str]:
        """The candidate's one-line problems (none: it is valid)."""
        if not isinstance(environment, str):
            raise web.HTTPError(400, 'send {"environment": "<the text of environment.yml>"}')
        catalog_root = self.catalog.root

        def check() -> list[str]:
            with tempfile.TemporaryDirectory(prefix="teachlab-check-") as work:
                try:
                    check_candidate(catalog_root, course.slug, environment, Path(work))
                except ProblemsError as problems:
                    return [str(problem) for problem in problems.problems]
                except TeachlabError as error:
                    return [str(error)]
            return []

        return await run_blocking(FILES, check)


class PublishApi(ValidateApi):
    @web.authenticated
    async def post(self, slug: str):
        course = self.course(slug, publish=True)
        environment = self.body().get("environment")
        problems = await self.check(course, environment)
        if problems:
            self.write_json({"message": "nothing was published: environment.yml has problems", "problems": problems}, 400)
            return
        actor = self.current_user["name"]
        try:
            job = self.jobs.start(slug, actor, lambda progress: self.publisher.publish(slug, environment, actor, progress))
        except PublishBusy as busy:
            self.write_json({"message": str(busy)}, 409)
            return
        log.info("publish of %s started by %s (job %s)", slug, actor, job.id)
        self.write_json(
            {"job": job.summary(), "events": url_path_join(self.request.path.rsplit("/", 1)[0], "publish", job.id, "events")}, 202
        )


class PublishEventsApi(CourseHandler):
    """The publish's log as server-sent events: ``line`` per log line (``id`` counts them, so a reconnecting
    browser resumes with ``Last-Event-ID``), then ``end`` with the job's summary."""

    api = True

    @web.authenticated
    async def get(self, slug: str, job_id: str):
        self.course(slug, publish=True)
        job = self.jobs.by_id.get(job_id)
        if job is None or job.course != slug:
            raise web.HTTPError(404, f"no publish {job_id} of {slug} in this service (it restarted since?)")
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            sent = max(0, int(self.request.headers.get("Last-Event-ID") or 0))
        except ValueError:
            sent = 0
        try:
            while True:
                for line in job.lines[sent:]:
                    sent += 1
                    self.write(f"id: {sent}\nevent: line\ndata: {json.dumps(line)}\n\n")
                if job.state != "running" and sent >= len(job.lines):
                    self.write(f"event: end\ndata: {json.dumps(job.summary())}\n\n")
                    await self.flush()
                    break
                await self.flush()
                before = len(job.lines)
                await job.changed(EVENT_KEEPALIVE_SECONDS)
                if len(job.lines) == before and job.state == "running":
                    self.write(": still working\n\n")
        except StreamClosedError:
            return
        self.finish()


class VersionsApi(CourseHandler):
    api = True

    @web.authenticated
    async def get(self, slug: str):
        self.write_json(await self.versions_payload(self.course(slug, publish=True)))


class RollbackApi(CourseHandler):
    api = True

    @web.authenticated
    async def post(self, slug: str):
        self.course(slug, publish=True)
        version = self.body().get("version")
        if not isinstance(version, str) or not version:
            raise web.HTTPError(400, 'send {"version": "v1"}: the version to make current')
        try:
            self.jobs.refuse_if_busy(slug)
        except PublishBusy as busy:
            self.write_json({"message": str(busy)}, 409)
            return
        actor = self.current_user["name"]
        try:
            result = await run_blocking(DOCKER_CALLS, self.publisher.rollback, slug, version, actor)
        except TeachlabError as error:
            self.write_json({"message": str(error)}, 400)
            return
        log.info("%s rolled %s back to %s", actor, slug, version)
        self.write_json(result)


class ClassApi(CourseHandler):
    api = True

    @web.authenticated
    async def get(self, slug: str):
        course = self.course(slug, follow=True)
        self.write_json({"course": slug, "students": [row.as_dict() for row in await self.settings["class_rows"](course)]})


class ServerActionApi(CourseHandler):
    """Start or stop a student's course server with the caller's own token: the hub decides, by their role."""

    api = True

    @web.authenticated
    async def post(self, slug: str, student: str, action: str):
        course = self.course(slug, follow=True)
        if not course.students.include(student, await self.student_groups(student)):
            raise web.HTTPError(404, f"{student} is not a student of {slug}")
        token = self.hub_auth.get_token(self)
        hub: HubApi = self.settings["hub"]
        path = f"/users/{quote(student, safe='')}/servers/{slug}"
        response = await hub.request("POST" if action == "start" else "DELETE", path, token=token)
        if response.code in (201, 202, 204):
            log.info("%s asked the hub to %s %s/%s", self.current_user["name"], action, student, slug)
            self.write_json({"student": student, "action": action, "status": response.code})
            return
        try:
            message = json.loads(response.body).get("message") or response.reason
        except (ValueError, AttributeError):
            message = response.reason
        if response.code == 403:
            message = (
                f"the hub refused to {action} {student}'s server: {message}. If {student} joined the course after you opened "
                "this page, reload it to sign in again"
            )
            self.hub_auth.clear_cookie(self)
        self.write_json({"message": message}, response.code if response.code >= 400 else 502)

    async def student_groups(self, student: str) -> list[str]:
        hub: HubApi = self.settings["hub"]
        response = await hub.request("GET", f"/users/{quote(student, safe='')}")
        if response.code != 200:
            return []
        return list(json.loads(response.body).get("groups") or ())


def server_url_function(public_url: str, per_server_origins: bool, course: str) -> Callable[[str], str]:
    """A student's course server URL, as the hub serves it (its own host with per-server origins)."""
    parsed = urlparse(public_url)
    port = f":{parsed.port}" if parsed.port else ""

    def url(username: str) -> str:
        host = subdomain_hook_idna(username, parsed.hostname, kind="user") if per_server_origins else parsed.hostname
        return f"{parsed.scheme}://{host}{port}/user/{quote(username, safe='')}/{course}/"

    return url


def class_rows_source(
    *,
    hub: HubApi,
    ledger: GpuLedger,
    client: docker.DockerClient,
    registry: VersionRegistry,
    lab: str,
    public_url: str,
    per_server_origins: bool,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> Callable:
    """``await rows(course)``: the class page's rows from the hub, the engine, the registry and the GPU ledger."""

    def running_versions(slug: str) -> dict[str, str]:
        filters = {"label": [f"{Labels.LAB}={lab}", f"{Labels.COURSE}={slug}"]}
        return {
            container.labels[Labels.USER]: container.labels.get(Labels.image("version"), "")
            for container in client.containers.list(filters=filters)
            if Labels.USER in container.labels
        }

    def gpu_figures(course: Course) -> tuple[dict[str, int], dict[str, float]]:
        held: dict[str, int] = {}
        for holding in ledger.holdings():
            if holding.course == course.slug:
                held[holding.username] = held.get(holding.username, 0) + 1
        start, end = term_window(course.term.start, course.term.end)
        moment = now()
        seconds = {}
        if moment > start:
            for row in ledger.usage_report(course=course.slug, since=start, until=min(moment, end)):
                seconds[row.username] = row.gpu_seconds
        return held, seconds

    async def rows(course: Course) -> list:
        users = await hub.users()
        versions = await run_blocking(DOCKER_CALLS, running_versions, course.slug)
        held, seconds = await run_blocking(LEDGER, gpu_figures, course)
        current = (await run_blocking(FILES, registry.read, course.slug)).current
        return class_rows(
            course,
            users=users,
            running_versions=versions,
            current_version=current,
            gpus_held=held,
            gpu_seconds=seconds,
            server_url=server_url_function(public_url, per_server_origins, course.slug),
        )

    return rows


def make_app(
    *,
    service_prefix: str,
    catalog_cache: CatalogCache,
    build_settings: BuildSettings,
    publisher: CoursePublisher,
    hub: HubApi,
    class_rows: Callable,
    links: HubLinks,
    cookie_secret: bytes,
) -> web.Application:
    api = url_path_join(service_prefix, "api/courses")
    return web.Application(
        [
            (service_prefix, IndexPage),
            (url_path_join(service_prefix, "oauth_callback"), HubOAuthCallbackHandler),
            (url_path_join(service_prefix, "static/(.*)"), web.StaticFileHandler, {"path": str(STATIC_DIR)}),
            (url_path_join(service_prefix, f"courses/{SLUG}/"), PublishPage),
            (url_path_join(service_prefix, f"courses/{SLUG}/class"), ClassPage),
            (url_path_join(api, f"{SLUG}/validate"), ValidateApi),
            (url_path_join(api, f"{SLUG}/publish"), PublishApi),
            (url_path_join(api, f"{SLUG}/publish/([0-9a-f]{{16}})/events"), PublishEventsApi),
            (url_path_join(api, f"{SLUG}/versions"), VersionsApi),
            (url_path_join(api, f"{SLUG}/rollback"), RollbackApi),
            (url_path_join(api, f"{SLUG}/class"), ClassApi),
            (url_path_join(api, f"{SLUG}/class/{USERNAME}/(start|stop)"), ServerActionApi),
        ],
        cookie_secret=cookie_secret,
        catalog_cache=catalog_cache,
        build_settings=build_settings,
        publisher=publisher,
        jobs=PublishJobs(),
        hub=hub,
        class_rows=class_rows,
        links=links,
        templates=page_templates(),
        service_prefix=service_prefix,
    )


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        print(f"teachlab-courses: {name} is not set (the hub sets it for its managed service)", file=sys.stderr)
        raise SystemExit(2)
    return value


def main(environ: Mapping[str, str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
    env = os.environ if environ is None else environ
    try:
        build_settings = BuildSettings.from_environment(env, labels=json.loads(env.get("TEACHLAB_EXTRA_LABELS") or "{}"))
        client = connect()
    except (ValueError, DockerUnavailable) as exc:
        print(f"teachlab-courses: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    catalog_cache = CatalogCache.for_root(Path(_required(env, "TEACHLAB_CATALOG")))
    catalog_cache.start_background_refresh()
    lab = _required(env, "TEACHLAB_LAB_ID")
    hub = HubApi(_required(env, "JUPYTERHUB_API_URL"), _required(env, "JUPYTERHUB_API_TOKEN"))
    publisher = CoursePublisher(
        build_settings,
        catalog_root=catalog_cache.root,
        lab=lab,
        name_prefix=_required(env, "TEACHLAB_NAME_PREFIX"),
        labels=build_settings.labels,
        client=client,
    )
    app = make_app(
        service_prefix=_required(env, "JUPYTERHUB_SERVICE_PREFIX"),
        catalog_cache=catalog_cache,
        build_settings=build_settings,
        publisher=publisher,
        hub=hub,
        class_rows=class_rows_source(
            hub=hub,
            ledger=ledger_for(_required(env, "TEACHLAB_GPU_LEDGER_URL")),
            client=client,
            registry=VersionRegistry(build_settings.registry_dir),
            lab=lab,
            public_url=_required(env, "TEACHLAB_PUBLIC_URL"),
            per_server_origins=env.get("TEACHLAB_PER_SERVER_ORIGINS", "true") == "true",
        ),
        links=HubLinks.from_environment(env),
        cookie_secret=secrets.token_bytes(32),
    )
    url = urlparse(_required(env, "JUPYTERHUB_SERVICE_URL"))
    app.listen(url.port, url.hostname)
    log.info("teachlab-courses listening at %s", env["JUPYTERHUB_SERVICE_PREFIX"])
    run_until_stopped()


if __name__ == "__main__":
    main()
