"""CourseSpawner: DockerSpawner glue that starts a student's server for one course.

The server name is the course slug. At ``start()`` the spawner checks who may use the course (the
catalog, the hub groups, the term), resolves the course's current published image, prepares the
student's work volume and the course data volumes, and sets DockerSpawner's extension points
(``image``, volumes, limits, ``extra_host_config``, ``extra_create_kwargs``). Everything a student
sends (``user_options``, the server name) is checked against the catalog before it is used.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import docker.errors
import jinja2
from docker.types import DeviceRequest
from dockerspawner import DockerSpawner
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Dict, List, Unicode, Union, default

from . import naming
from .catalog import Access, Course
from .gpu import AllocationRefused, GpuInventoryError
from .gpuhub import GPU_LABEL, default_ledger_url, inventory_for, ledger_for
from .hub import CatalogCache, user_group_names
from .registry import CourseVersion, VersionRegistry
from .smoke import STUDENT_CONTAINER_HARDENING

STATE_VERSION = 1
# Ledger, registry and inventory calls get threads of their own: DockerSpawner's executor has one thread
# for every docker-py call of the hub, and a busy database must not hold up everyone's starts and polls.
_teachlab_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="teachlab-spawner")
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

    gpu_inventory = Union(
        [Unicode(), List(Dict())],
        default_value="",
        help="""The GPUs this hub gives out: "nvml" discovers them on this host, a list declares them, "" means none.

        c.CourseSpawner.gpu_inventory = "nvml"
        c.CourseSpawner.gpu_inventory = [{"uuid": "GPU-5f1e...", "index": 0, "model": "NVIDIA A100", "memory": "40G"}]
        """,
    ).tag(config=True)

    gpu_ledger_url = Unicode(
        help="""SQLAlchemy URL of the GPU ledger (who holds which GPU, usage, quotas). SQLite by default.

        c.CourseSpawner.gpu_ledger_url = "postgresql://teachlab@db/teachlab"
        """,
    ).tag(config=True)

    gpu_driver = Unicode(
        "nvidia",
        help="""Docker device driver of GPU device requests.

        c.CourseSpawner.gpu_driver = "nvidia"
        """,
    ).tag(config=True)

    form_template_paths = List(
        Unicode(),
        help="""Folders searched before the built-in templates for course_form.html (the spawn form of GPU courses).

        c.CourseSpawner.form_template_paths = ["/srv/teachlab/templates"]
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
    gpu_devices = List(Unicode(), help="UUIDs of the GPUs this server holds (persisted).")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._progress_events: list[dict] = []
        self._start_finished = True
        self._gpus_requested = False

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

    @default("gpu_ledger_url")
    def _default_gpu_ledger_url(self):
        return default_ledger_url(Path(self.state_dir))

    @default("options_form")
    def _default_options_form(self):
        return _course_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return _single_values

    @default("object_name")
    def _object_name_default(self):
        if self.name and naming.is_course_slug(self.name):
            return naming.container_name(self.user.name, self.name)
        return ""

    # -- state --------------------------------------------------------------------------------------
    def get_state(self) -> dict:
        state = super().get_state()
        state["teachlab_state_version"] = STATE_VERSION
        for key in ("course_slug", "image_version", "home_volume", "gpu_devices"):
            value = getattr(self, key)
            if value:
                state[key] = list(value) if key == "gpu_devices" else value
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.course_slug = state.get("course_slug") or self.course_slug
        self.image_version = state.get("image_version") or self.image_version
        self.home_volume = state.get("home_volume") or self.home_volume
        self.gpu_devices = state.get("gpu_devices") or self.gpu_devices

    def clear_state(self) -> None:
        """Forget the running container, its version and GPUs; keep the course and the volume name."""
        super().clear_state()
        self.image_version = None
        self.gpu_devices = []

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
        """The course of this server and the user's access, or an HTTP 400 that lists the valid choices."""
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
            try:
                await self._give_volumes_to_student_uid(image, created)
            except Exception as exc:
                # Empty and still root's: remove them, so the next start creates and hands them over again.
                for name in created:
                    await self.docker("remove_volume", name)
                self.log.error("preparing storage for %s failed: %s", self._log_name, exc)
                raise web.HTTPError(503, f"Could not prepare your storage for {course.title}; please try again")
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
                raise RuntimeError(f"chown exited with {result.get('StatusCode')}")
        finally:
            await self.docker("remove_container", container["Id"], force=True)

    # -- GPUs ---------------------------------------------------------------------------------------
    async def _in_executor(self, function: Callable, /, **kwargs) -> Any:
        """Run a blocking ledger, registry or inventory call off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(_teachlab_executor, partial(function, **kwargs))

    async def _reserve_gpus(self, course: Course) -> None:
        """Take the course's GPUs in the ledger, or refuse with the reason before anything starts."""
        try:
            devices = await self._in_executor(inventory_for, setting=self.gpu_inventory)
        except GpuInventoryError as exc:
            self.log.error("GPU inventory: %s", exc)
            raise web.HTTPError(503, f"{course.title} needs a GPU, but this lab cannot see its GPUs right now; tell the lab's admins")
        if not devices:
            raise web.HTTPError(503, f"{course.title} needs a GPU, but this lab has none")
        ledger = await self._in_executor(ledger_for, url=self.gpu_ledger_url)
        self._gpus_requested = True  # from here on a cancelled start may leave a holding: release it then
        try:
            allocation = await self._in_executor(
                ledger.allocate, username=self.user.name, course=course.slug, server_name=self.name, count=course.gpu,
                devices=devices, term_start=course.term.start, term_end=course.term.end, container_name=self.object_name,
            )
        except AllocationRefused as refusal:
            raise web.HTTPError(refusal.status, refusal.reason)
        self.gpu_devices = list(allocation.device_uuids)

    async def _release_gpus(self, reason: str, *, held: Optional[bool] = None) -> None:
        """Release this server's GPUs in the ledger (idempotent); ``held`` overrides the in-memory record."""
        if self.gpu_devices if held is None else held:
            ledger = await self._in_executor(ledger_for, url=self.gpu_ledger_url)
            released = await self._in_executor(ledger.release, username=self.user.name, server_name=self.name, reason=reason)
            self.log.info("released GPUs %s of %s (%s)", ",".join(released), self._log_name, reason)
            self.gpu_devices = []

    def _gpu_host_config(self) -> dict:
        if not self.gpu_devices:
            return {}
        request = DeviceRequest(driver=self.gpu_driver, device_ids=list(self.gpu_devices), capabilities=[["gpu"]])
        return {"device_requests": [request]}

    # -- start / stop -------------------------------------------------------------------------------
    async def _current_version(self, course: Course) -> CourseVersion:
        current = await self._in_executor(self.registry.current_image, slug=course.slug)
        if current is None:
            raise web.HTTPError(503, f"{course.title} has no published environment yet; ask your instructor to publish it")
        return current

    async def start(self):
        self._progress_events = []
        self._start_finished = False
        self._gpus_requested = False
        try:
            self._report(5, "Checking your access to the course")
            course, access = await self._resolve_course()
            self.course_slug = course.slug
            version = await self._current_version(course)
            self.image = version.image
            self.image_version = version.version
            self.object_name = naming.container_name(self.user.name, course.slug)
            if course.gpu:
                self._report(15, f"Reserving {course.gpu} GPU(s) for {course.title}")
                await self._reserve_gpus(course)
            self._report(20, f"Preparing storage for {course.title}")
            await self._prepare_storage(course, access, version.image)
            self.mem_limit = course.resources.memory
            self.cpu_limit = course.resources.cpu
            self.extra_host_config = {**STUDENT_CONTAINER_HARDENING, "init": False, **self._gpu_host_config()}
            labels = self._labels(course)
            if self.gpu_devices:
                labels[GPU_LABEL] = ",".join(self.gpu_devices)
            self.extra_create_kwargs = {
                "user": "1000:1000",
                "labels": {_literal(key): _literal(value) for key, value in labels.items()},
            }
            self._report(50, f"Creating your container from {course.title} {version.version}")
            ip_port = await super().start()
            self._report(80, "Waiting for JupyterLab to start")
            return ip_port
        except BaseException:
            await self._release_gpus("the start failed", held=self._gpus_requested or bool(self.gpu_devices))
            raise
        finally:
            self._start_finished = True

    def get_env(self) -> dict:
        env = super().get_env()
        if self.course_slug:
            env["TEACHLAB_COURSE"] = self.course_slug
            env["TEACHLAB_COURSE_VERSION"] = self.image_version or ""
        # Always set, so an image's own NVIDIA_VISIBLE_DEVICES ("all") cannot widen the request, and a CPU
        # course gets no GPU even where nvidia is the engine's default runtime.
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(self.gpu_devices) if self.gpu_devices else "void"
        return env

    async def poll(self):
        if not self.object_name:
            return 0  # start() refused before naming a container: nothing runs
        status = await super().poll()
        if status is not None and not self._spawn_pending:
            await self._release_gpus("its container is gone")
        return status

    async def stop(self, now: bool = False):
        held = bool(self.gpu_devices)  # DockerSpawner.stop clears the state; release only once the container is gone
        if self.object_name:
            await super().stop(now=now)
        await self._release_gpus("the server stopped", held=held)
        self.clear_state()


def _single_values(form_data: dict) -> dict:
    """Form fields arrive as lists; one value each is all the course form sends."""
    return {key: values[0] if isinstance(values, list) and len(values) == 1 else values for key, values in form_data.items()}


_form_environments: dict[tuple[str, ...], jinja2.Environment] = {}


def _form_environment(paths: tuple[str, ...]) -> jinja2.Environment:
    if paths not in _form_environments:
        loader = jinja2.FileSystemLoader([*paths, str(Path(__file__).with_name("templates"))])
        _form_environments[paths] = jinja2.Environment(loader=loader, autoescape=True)
    return _form_environments[paths]


async def _course_form(spawner: CourseSpawner) -> str:
    """The spawn form: only GPU courses have one, showing the student's remaining GPU-hours."""
    catalog = await spawner.catalog_cache.refresh()
    course = catalog.courses.get(spawner.name)
    if course is None or not course.gpu:
        return ""
    ledger = await spawner._in_executor(ledger_for, url=spawner.gpu_ledger_url)
    remaining = await spawner._in_executor(ledger.remaining_gpu_hours, username=spawner.user.name, course=course.slug,
                                           term_start=course.term.start, term_end=course.term.end)
    template = _form_environment(tuple(spawner.form_template_paths)).get_template("course_form.html")
    return template.render(course=course, remaining_gpu_hours=remaining)
