"""CourseSpawner: DockerSpawner glue that starts a student's server for one course.

The server name is the course slug. At ``start()`` the spawner checks who may use the course (the
catalog, the hub groups, the term), resolves the course's current published image, prepares the
student's work volume and the course data volumes, and sets DockerSpawner's extension points
(``image``, volumes, limits, ``extra_host_config``, ``extra_create_kwargs``). Everything a student
sends (``user_options``, the server name) is checked against the catalog before it is used.
"""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Any, Optional

import docker.errors
from dockerspawner import DockerSpawner
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Dict, Unicode, default

from . import naming
from .catalog import Access, Course
from .hub import CatalogCache, user_group_names
from .registry import CourseVersion, VersionRegistry

STATE_VERSION = 1
LABEL = "org.teachlab."
ALLOWED_OPTION_KEYS = ("course",)
MAX_OPTION_LENGTH = 64
DATA_MOUNT = "/home/jovyan/data"
WORK_MOUNT = "/home/jovyan/work"


def _literal(text: str) -> str:
    """Escape ``{`` and ``}`` so DockerSpawner's template rendering leaves ``text`` exactly as it is."""
    return text.replace("{", "{{").replace("}", "}}")


class CourseSpawner(DockerSpawner):
    """One container per (student, course), from the course's current published image."""

    catalog_path = Unicode(
        help="""Folder of the course catalog (course_envs/<slug>/course.yaml + environment.yml).

        Re-read when its files change; no hub restart needed.
        c.CourseSpawner.catalog_path = "/srv/teachlab/course_envs"
        """,
    ).tag(config=True)

    state_dir = Unicode(
        help="""Teachlab state folder shared with the `teachlab` CLI; published versions live in <state_dir>/courses.

        c.CourseSpawner.state_dir = "/srv/teachlab/state"
        """,
    ).tag(config=True)

    extra_labels = Dict(
        value_trait=Unicode(),
        help="""Labels added to every container and volume this spawner creates (e.g. a deployment or test id).

        c.CourseSpawner.extra_labels = {"org.example.lab": "cs-department"}
        """,
    ).tag(config=True)

    today = AnyTrait(
        help="""Callable returning today's date, used for course terms (tests pass a fixed day).

        c.CourseSpawner.today = lambda: datetime.date(2027, 1, 15)
        """,
    ).tag(config=True)

    user_options = AnyTrait(help="Options from the spawn form or the REST API: untrusted, checked in start().")

    course_slug = Unicode(None, allow_none=True, help="Course of this server (persisted in the state).")
    image_version = Unicode(None, allow_none=True, help="Published version the running server was started from.")
    home_volume = Unicode(None, allow_none=True, help="Name of the student's work volume (persisted, never renamed).")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._progress_events: list[dict] = []
        self._start_finished = True

    @default("user_options")
    def _default_user_options(self):
        return {}

    @default("today")
    def _default_today(self):
        return date.today

    @default("remove")
    def _default_remove(self):
        return True

    @default("cmd")
    def _default_cmd(self):
        return ["/opt/jupyter/bin/jupyterhub-singleuser"]

    @default("pull_policy")
    def _default_pull_policy(self):
        return "never"

    @default("notebook_dir")
    def _default_notebook_dir(self):
        return WORK_MOUNT

    @default("options_form")
    def _default_options_form(self):
        return ""

    @default("object_name")
    def _object_name_default(self):
        if self.name and naming.is_course_slug(self.name):
            return naming.container_name(self.user.name, self.name)
        return ""

    # -- state --------------------------------------------------------------------------------------
    def get_state(self) -> dict:
        state = super().get_state()
        state["teachlab_state_version"] = STATE_VERSION
        for key in ("course_slug", "image_version", "home_volume"):
            value = getattr(self, key)
            if value:
                state[key] = value
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.course_slug = state.get("course_slug") or self.course_slug
        self.image_version = state.get("image_version") or self.image_version
        self.home_volume = state.get("home_volume") or self.home_volume

    def clear_state(self) -> None:
        """Forget the running container and its version; keep the course and the volume name."""
        super().clear_state()
        self.image_version = None

    # -- catalog and access -------------------------------------------------------------------------
    @property
    def catalog_cache(self) -> CatalogCache:
        return CatalogCache.for_root(Path(self.catalog_path))

    @property
    def registry(self) -> VersionRegistry:
        return VersionRegistry(Path(self.state_dir) / "courses")

    def _bad_request(self, message: str, choices: list[str]) -> web.HTTPError:
        listing = ", ".join(choices) if choices else "none (ask your instructor to add you to a course)"
        return web.HTTPError(400, f"{message}. Your courses: {listing}")

    def _check_user_options(self, choices: list[str]) -> None:
        options = self.user_options
        if options is None:
            return
        if not isinstance(options, dict):
            raise self._bad_request("Server options must be a JSON object such as {\"course\": \"<slug>\"}", choices)
        unknown = sorted(str(key)[:MAX_OPTION_LENGTH] for key in options if key not in ALLOWED_OPTION_KEYS)
        if unknown:
            self.log.warning("refusing unknown server options from %s: %s", self.user.name, unknown)
            raise self._bad_request(f"Unknown server option(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(ALLOWED_OPTION_KEYS)}", choices)
        course = options.get("course")
        if course is not None and (not isinstance(course, str) or len(course) > MAX_OPTION_LENGTH or course != self.name):
            raise self._bad_request(f"Option 'course' must name this server's course '{self.name[:MAX_OPTION_LENGTH]}'", choices)

    async def _resolve_course(self) -> tuple[Course, Access]:
        """The course of this server and the user's access, or an HTTP 400/403 that lists valid choices."""
        catalog = await self.catalog_cache.refresh()
        groups = user_group_names(self.user)
        today = self.today()
        choices = [course.slug for course, _ in catalog.available_to(self.user.name, groups, today)]
        self._check_user_options(choices)
        if not self.name:
            raise self._bad_request("Start a course, not a default server: each course is its own server named after it", choices)
        course = catalog.courses.get(self.name)
        if course is None:
            raise self._bad_request(f"There is no course named {self.name[:MAX_OPTION_LENGTH]!r}", choices)
        access = course.access(self.user.name, groups, today)
        if not access.allowed:
            raise self._bad_request(f"You cannot use {course.slug}: {access.reason}", choices)
        return course, access

    # -- progress -----------------------------------------------------------------------------------
    def _report(self, progress: int, message: str) -> None:
        self._progress_events.append({"progress": progress, "message": message})

    async def progress(self):
        sent = 0
        while True:
            events = self._progress_events
            while sent < len(events):
                yield events[sent]
                sent += 1
            if self._start_finished:
                return
            await asyncio.sleep(0.3)

    # -- storage ------------------------------------------------------------------------------------
    def _labels(self, course: Course) -> dict[str, str]:
        return {
            **self.extra_labels,
            LABEL + "user": self.user.name,
            LABEL + "server": self.name,
            LABEL + "course": course.slug,
        }

    async def _ensure_volume(self, name: str, labels: dict[str, str]) -> bool:
        """Create the named volume when missing; True when it was created now."""
        try:
            await self.docker("inspect_volume", name)
            return False
        except docker.errors.NotFound:
            await self.docker("create_volume", name=name, labels=labels)
            return True

    async def _prepare_storage(self, course: Course, access: Access, image: str) -> None:
        self.home_volume = self.home_volume or naming.home_volume_name(self.user.name, course.slug)
        volume_labels = {**self.extra_labels, LABEL + "course": course.slug}
        created = []
        if await self._ensure_volume(self.home_volume, {**volume_labels, LABEL + "user": self.user.name}):
            created.append(self.home_volume)
        data_mode = "rw" if access.role == "instructor" else "ro"
        volumes: dict[str, Any] = {self.home_volume: {"bind": WORK_MOUNT, "mode": "rw"}}
        for name in course.data_volumes:
            volume = naming.data_volume_name(course.slug, name)
            if await self._ensure_volume(volume, volume_labels):
                created.append(volume)
            volumes[volume] = {"bind": f"{DATA_MOUNT}/{name}", "mode": data_mode}
        if created:
            await self._give_volumes_to_student_uid(image, created)
        self.volumes = volumes
        self.read_only_volumes = {}

    async def _give_volumes_to_student_uid(self, image: str, volumes: list[str]) -> None:
        """New volumes belong to root; hand them to uid 1000 once, with a short root container."""
        binds = {volume: {"bind": f"/mnt/{index}", "mode": "rw"} for index, volume in enumerate(volumes)}
        host_config = self.client.create_host_config(binds=binds, network_mode="none", cap_drop=["ALL"], cap_add=["CHOWN"])
        container = await self.docker(
            "create_container", image=image, user="0:0", entrypoint=["/bin/chown"],
            command=["1000:1000"] + [f"/mnt/{index}" for index in range(len(volumes))],
            host_config=host_config, labels={**self.extra_labels, LABEL + "helper": "chown"},
        )
        try:
            await self.docker("start", container["Id"])
            result = await self.docker("wait", container["Id"], timeout=60)
            if result.get("StatusCode") != 0:
                raise web.HTTPError(500, f"Could not prepare storage for {self.name}")
        finally:
            await self.docker("remove_container", container["Id"], force=True)

    # -- start / stop -------------------------------------------------------------------------------
    async def _current_version(self, course: Course) -> CourseVersion:
        loop = asyncio.get_running_loop()
        current = await loop.run_in_executor(self.executor, self.registry.current_image, course.slug)
        if current is None:
            raise web.HTTPError(503, f"{course.title} has no published environment yet; ask your instructor to publish it")
        return current

    async def start(self):
        self._progress_events = []
        self._start_finished = False
        try:
            self._report(5, "Checking your access to the course")
            course, access = await self._resolve_course()
            self.course_slug = course.slug
            version = await self._current_version(course)
            self.image = version.image
            self.image_version = version.version
            self.object_name = naming.container_name(self.user.name, course.slug)
            self._report(20, f"Preparing storage for {course.title}")
            await self._prepare_storage(course, access, version.image)
            self.mem_limit = course.resources.memory
            self.cpu_limit = course.resources.cpu
            self.extra_host_config = {
                "security_opt": ["no-new-privileges"],
                "cap_drop": ["ALL"],
                "pids_limit": 1024,
                "init": False,
            }
            self.extra_create_kwargs = {
                "user": "1000:1000",
                "labels": {_literal(key): _literal(value) for key, value in self._labels(course).items()},
            }
            self._report(50, f"Creating your container from {course.title} {version.version}")
            ip_port = await super().start()
            self._report(80, "Waiting for JupyterLab to start")
            return ip_port
        finally:
            self._start_finished = True

    def get_env(self) -> dict:
        env = super().get_env()
        if self.course_slug:
            env["TEACHLAB_COURSE"] = self.course_slug
            env["TEACHLAB_COURSE_VERSION"] = self.image_version or ""
        return env

    async def poll(self):
        if not self.object_name:
            return 0  # start() refused before naming a container: nothing runs
        return await super().poll()

    async def stop(self, now: bool = False):
        if not self.object_name:
            # Nothing was created: start() refused before naming a container.
            self.clear_state()
            return
        await super().stop(now=now)
