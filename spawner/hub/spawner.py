"""CourseSpawner: DockerSpawner glue that starts a student's server for one course.

The server name is the course slug. ``start()`` checks who may use the course (the catalog, the hub
groups, the term), resolves the course's current published image, reserves GPUs in the ledger,
prepares the work and data volumes, then builds the container with the pure
``make_container_spec`` and hands it to the engine in ``create_object`` (DockerSpawner's hook).
Everything a student sends (``user_options``, the server name) is checked against the catalog before
it is used.

On a swarm (``swarm_placement``), ``start()`` first places the server on a node (``spawner.cluster``; the GPU
ledger for GPU courses) and every Docker call of that server goes to that node's engine: ``client`` is the
one hook that changes, so volumes, the container, its polls and its stop all happen there
(docs/scale-out.md). A single server keeps ``node`` empty and talks to its own engine as before. There the server
runs the version's image by digest from the stack's registry when publishing pushed it (``registry_image``): the
node's engine pulls exactly those bytes the first time (``pull_image``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.tls
import jinja2
import requests.exceptions
from docker.utils import kwargs_from_env
from dockerspawner import DockerSpawner
from jupyterhub.utils import exponential_backoff
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Float, Integer, List, Unicode, Union, default

from ..catalog import Access, Course
from ..catalog.cache import CatalogCache
from ..cluster.book import PlacementBook
from ..cluster.facts import node_address, node_from_swarm
from ..cluster.placement import Node, NoRoom, PlacedServer, ServerRequest
from ..core import naming
from ..core.blocking import FILES, LEDGER, run_blocking
from ..core.contract import IMAGE, Labels, StateLayout
from ..core.problems import TeachlabError
from ..engine.client import EngineClient, engine_client
from ..gpu import AllocationRefused, GpuInventoryError, GpuLedger
from ..gpu.cache import inventory_for, ledger_for
from ..gpu.cuda import cuda_driver_refusal, host_driver_version
from ..images.distribution import pull_stream_events, stream_error
from ..images.registry import CourseVersion, VersionRegistry
from ..node.disks import VolumeStore
from .admission import admission_for
from .container_spec import ContainerSpec, make_container_spec
from .coursedata import refresh_copy
from .gpus import container_claims, reconcile_with_claims
from .home import NOTICES, TEMPLATES_DIR, user_group_names
from .metrics import SPAWN_SECONDS
from .startup import ensure_student_network, reconcile_report_lines
from .storage import ServerStorage, StorageFailed

STATE_VERSION = 1
DOCKER_THREADS = 8
# Server extensions a course server does not use: jupyter_lsp scans for some twenty language servers at every
# boot and finds none (no course image installs one).
LEAN_SERVER_ARGUMENTS = ("--ServerApp.jpserver_extensions=jupyter_lsp=False",)
OFFLINE_ADDRESS_ATTEMPTS = 5
ALLOWED_OPTION_KEYS = ("course",)
MAX_OPTION_LENGTH = 64
# A node's engine that does not answer: its servers are gone for the hub (docker.errors.APIError is an HTTP
# answer, not one of these).
ENGINE_UNREACHABLE = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
# How long a node whose engine did not answer takes no new server (the swarm marks it down later, if at all).
UNREACHABLE_HOLD_SECONDS = 60


class CourseSpawner(DockerSpawner):
    """One container per (student, course), from the course's current published image."""

    _docker_pool: ThreadPoolExecutor | None = None
    # One hub process: its placements, its clients of the nodes' engines, the nodes whose network it prepared.
    placement_book = PlacementBook()
    _node_clients: dict[str, docker.DockerClient] = {}
    _prepared_nodes: dict[str, str | None] = {}  # node -> when its node agent had started as it was prepared
    _unreachable_nodes: dict[str, float] = {}  # node -> when its engine last did not answer (monotonic)
    _gpu_nodes_reconciled = False  # the GPU nodes' holdings were checked against their containers
    _data_refreshes: dict[tuple[str, str], asyncio.Future] = {}  # (node, data volume) -> the refresh under way
    _image_spreads: dict[str, asyncio.Future] = {}  # image by digest -> its pulls onto the other nodes

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

    name_prefix = Unicode(
        naming.DEFAULT_PREFIX,
        help="""Prefix of this lab's container and volume names; labs sharing a Docker engine need different ones.
        Never change it while students have work: their volumes are found by name.

        c.CourseSpawner.name_prefix = "teachlab"
        """,
    ).tag(config=True)

    lab_id = Unicode(
        help="""Id of this lab, put on every container it starts (its lab label); GPU reconciliation at hub start
        counts only this lab's containers. Set by apply() from the state folder.

        c.CourseSpawner.lab_id = "3f9c2a1b7d4e"
        """,
    ).tag(config=True)

    extra_labels = Dict(
        value_trait=Unicode(),
        help="""Labels added to every container and volume this spawner creates (e.g. a deployment or test id).

        The platform's own labels (user, server, course, lab, GPUs) are always set and cannot be replaced here.
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

    volume_dir = Unicode(
        help="""Folder of the size-limited work volumes on this node (ext4 files and their mount points); a local disk.

        c.CourseSpawner.volume_dir = "/srv/teachlab/volumes"
        """,
    ).tag(config=True)

    node_agent_image = Unicode(
        "",
        help="""Image of the node agent that makes and mounts work volumes on this node (spawner/hub/nodeagent.py), for
        a hub running in a container; empty: the hub's own process does it (it must then run as root on the node).

        c.CourseSpawner.node_agent_image = "teachlab/hub:3f9c2a1b7d4e"
        """,
    ).tag(config=True)

    offline_address_range = Unicode(
        help="""Addresses of the students' network given to servers of courses with `network: off`; the node's firewall
        forwards nothing from them. Set by apply() from the network.

        c.CourseSpawner.offline_address_range = "172.24.8.0/21"
        """,
    ).tag(config=True)

    concurrent_boots = Integer(
        help="""How many servers boot at once; more starts wait in line, told their place and an estimate.

        Booting a Jupyter server takes about a second of CPU: on a node with few cores, booting all of a class at
        once makes everyone wait for the last. Too few slots leave cores idle while a slot's container is being
        created. Default: four times the node's CPU count.
        c.CourseSpawner.concurrent_boots = 8
        """,
    ).tag(config=True)

    gpu_ledger_url = Unicode(
        help="""SQLAlchemy URL of the GPU ledger (who holds which GPU, usage, quotas). SQLite in the state folder by default.

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

    swarm_placement = Bool(
        False,
        help="""Place each server on a node of the swarm that the hub's Docker engine manages (docs/scale-out.md).

        The hub reads the swarm's nodes (role and GPU labels, CPUs, memory, ready or not), chooses one, and creates
        the server's container on that node's engine (``node_engine_url_template``), with the same spec as on one
        server. Off: every server runs on the hub's own engine.
        c.CourseSpawner.swarm_placement = True
        """,
    ).tag(config=True)

    node_engine_url_template = Unicode(
        "tcp://{address}:2376",
        help="""Where a node's Docker engine listens; ``{address}`` is the node's address in the swarm.

        c.CourseSpawner.node_engine_url_template = "tcp://{address}:2376"
        """,
    ).tag(config=True)

    node_engine_tls = Dict(
        help="""docker-py ``TLSConfig`` arguments for the nodes' engines: mutual TLS with certificates of the lab's CA.

        c.CourseSpawner.node_engine_tls = {"ca_cert": "/run/secrets/nodes-ca.crt", "verify": True,
            "client_cert": ["/run/secrets/hub-engine.crt", "/run/secrets/hub-engine.key"]}
        """,
    ).tag(config=True)

    node_engine_timeout = Float(
        10.0,
        help="""Seconds a node's engine may take to answer one call; a node that does not answer in time has lost its
        servers (they are stopped in the hub at that poll, their GPUs released).

        c.CourseSpawner.node_engine_timeout = 10
        """,
    ).tag(config=True)

    node_engine_api_version = Unicode(
        "1.41",
        help="""Docker API version spoken to the nodes' engines (Engine 20.10 speaks 1.41). Fixed rather than probed, so
        that no call waits on an engine that is down just to learn its version.

        c.CourseSpawner.node_engine_api_version = "1.41"
        """,
    ).tag(config=True)

    course_data_node = Unicode(
        "",
        help="""With ``swarm_placement``: the node that holds every course's data volumes as instructors write them.

        Instructors' servers of a course with data volumes run there; a server on any other node starts with that
        node's copy brought up to date from it (spawner.hub.coursedata). Courses with data volumes are not started
        on a swarm while this is empty: without it each node would hold different data.
        c.CourseSpawner.course_data_node = "worker-1"
        """,
    ).tag(config=True)

    hub_address = Unicode(
        "",
        help="""The hub's address as the swarm's nodes reach it: a node where the hub does not run forwards its
        students' gateway's hub port there (spawner.node.firewall). Needed with ``swarm_placement``.

        c.CourseSpawner.hub_address = "10.0.0.2"
        """,
    ).tag(config=True)

    student_subnet = Unicode(
        "",
        help="""Subnet of the students' network; every node's is the same, so servers reach the hub at the same gateway
        address everywhere. Set by apply() from the hub's own students' network.

        c.CourseSpawner.student_subnet = "172.24.0.0/20"
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
    node = Unicode(None, allow_none=True, help="Swarm node that runs this server (persisted while it runs).")
    node_address = Unicode(None, allow_none=True, help="That node's address: its engine and the server's port (persisted).")
    work_node = Unicode(None, allow_none=True, help="Swarm node that holds the student's work volume (persisted).")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._progress_events: list[dict] = []
        self._start_finished = True
        self._gpus_requested = False
        self._spec: ContainerSpec | None = None

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
        return list(IMAGE.singleuser_command)

    @default("pull_policy")
    def _default_pull_policy(self):
        return "never"

    @default("notebook_dir")
    def _default_notebook_dir(self):
        return IMAGE.work_mount

    @default("gpu_ledger_url")
    def _default_gpu_ledger_url(self):
        return StateLayout(Path(self.state_dir)).gpu_ledger_url

    @default("concurrent_boots")
    def _default_concurrent_boots(self):
        return 4 * (os.cpu_count() or 1)

    @default("args")
    def _default_args(self):
        """Spawner.args: the extensions a course server does not use stay off (each boot costs less CPU)."""
        return list(LEAN_SERVER_ARGUMENTS)

    @default("client_kwargs")
    def _default_client_kwargs(self):
        return {"max_pool_size": DOCKER_THREADS}

    @property
    def client(self):
        """The Docker engine of this server's node (DockerSpawner's one client where no node is set: a single server,
        and the swarm's manager, where nodes are read)."""
        if not self.node_address:
            return self.manager_client
        return self._node_engine(self.node_address).api

    @property
    def manager_client(self):
        """The hub's own engine: the single server's, or a manager of the swarm. DockerSpawner's one client; over
        TLS it is made here as DockerSpawner makes it, as an ``EngineClient``."""
        cls = type(self)
        if cls._client is None and self.tls_config:
            arguments = {"version": "auto", "tls": docker.tls.TLSConfig(**self.tls_config)}
            cls._client = EngineClient(**{**arguments, **kwargs_from_env(), **self.client_kwargs})
        return super().client

    def _node_engine(self, address: str) -> docker.DockerClient:
        """A client of the engine at ``address`` (one per engine, shared by every server there), mutual TLS when set."""
        url = self.node_engine_url_template.format(address=address)
        clients = type(self)._node_clients
        if url not in clients:
            arguments = dict(self.node_engine_tls)
            if isinstance(arguments.get("client_cert"), list):
                arguments["client_cert"] = tuple(arguments["client_cert"])
            clients[url] = engine_client(
                base_url=url,
                version=self.node_engine_api_version,  # no version probe: an engine that is down must not hang a caller
                timeout=self.node_engine_timeout,
                tls=docker.tls.TLSConfig(**arguments) if arguments else False,
                max_pool_size=DOCKER_THREADS,
            )
        return clients[url]

    @property
    def executor(self):
        """Docker calls of every spawn in a pool of threads, not DockerSpawner's single one: a slow call (a
        volume helper's wait, a busy engine) must not hold up everyone else's start and poll."""
        cls = type(self)
        if cls._docker_pool is None:
            cls._docker_pool = ThreadPoolExecutor(DOCKER_THREADS, thread_name_prefix="teachlab-docker")
        return cls._docker_pool

    async def _in_docker_pool(self, function, *args):
        """``function(*args)`` in the Docker thread pool: calls on a node's engine, which DockerSpawner's ``docker``
        (always its one client) cannot make."""
        return await asyncio.wrap_future(self.executor.submit(function, *args))

    @default("volume_dir")
    def _default_volume_dir(self):
        return str(StateLayout(Path(self.state_dir)).volumes)

    @default("options_form")
    def _default_options_form(self):
        return _course_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return _single_values

    @default("object_name")
    def _object_name_default(self):
        if self.name and naming.is_course_slug(self.name):
            return self.names.container(self.user.name, self.name)
        return ""

    # -- state --------------------------------------------------------------------------------------
    def get_state(self) -> dict:
        state = super().get_state()
        state["teachlab_state_version"] = STATE_VERSION
        for key in ("course_slug", "image_version", "home_volume", "gpu_devices", "node", "node_address", "work_node"):
            value = getattr(self, key)
            if value:
                state[key] = list(value) if key == "gpu_devices" else value
        reserved = self.placement_book.reservation(self.user.name, self.name) if self.node else None
        if reserved is not None:
            state["node_reservation"] = {"cpus": reserved.cpus, "memory_bytes": reserved.memory_bytes}
        return state

    def load_state(self, state: dict) -> None:
        """Read back what ``get_state`` wrote; older states upgrade (see ``upgrade_state``)."""
        super().load_state(state)
        state = upgrade_state(state, server_name=self.name, log=self.log)
        self.course_slug = state.get("course_slug") or self.course_slug
        self.image_version = state.get("image_version") or self.image_version
        self.home_volume = state.get("home_volume") or self.home_volume
        self.gpu_devices = state.get("gpu_devices") or self.gpu_devices
        self.node = state.get("node") or self.node
        self.node_address = state.get("node_address") or self.node_address
        self.work_node = state.get("work_node") or self.work_node
        reserved = state.get("node_reservation")
        if self.node and isinstance(reserved, dict):
            # A running server found at hub start holds its reservation again before any new placement.
            self.placement_book.record(
                PlacedServer(
                    node=self.node,
                    username=self.user.name,
                    server_name=self.name,
                    cpus=float(reserved.get("cpus", 0)),
                    memory_bytes=int(reserved.get("memory_bytes", 0)),
                    gpu_devices=tuple(self.gpu_devices),
                )
            )

    def clear_state(self) -> None:
        """Forget the running container, its version, GPUs and node; keep the course, the volume name and the
        node that holds the work."""
        super().clear_state()
        self.image_version = None
        self.gpu_devices = []
        if self.node:
            self.placement_book.forget(self.user.name, self.name)
        self.node = None
        self.node_address = None

    # -- catalog and access -------------------------------------------------------------------------
    @property
    def catalog_cache(self) -> CatalogCache:
        return CatalogCache.for_root(Path(self.catalog_path))

    @property
    def registry(self) -> VersionRegistry:
        return VersionRegistry(StateLayout(Path(self.state_dir)).courses)

    def _bad_request(self, message: str, choices: list[str]) -> web.HTTPError:
        listing = ", ".join(choices) if choices else "none (ask your instructor to add you to a course)"
        return refusal(400, f"{message}. Your courses: {listing}")

    def _check_user_options(self, choices: list[str]) -> None:
        options = self.user_options
        if options is None:
            return
        if not isinstance(options, dict):
            raise self._bad_request('Server options must be a JSON object such as {"course": "<slug>"}', choices)
        unknown = sorted(str(key)[:MAX_OPTION_LENGTH] for key in options if key not in ALLOWED_OPTION_KEYS)
        if unknown:
            self.log.warning("refusing unknown server options from %s: %s", self.user.name, unknown)
            raise self._bad_request(
                f"Unknown server option(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(ALLOWED_OPTION_KEYS)}", choices
            )
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
    @property
    def storage(self) -> ServerStorage:
        return ServerStorage(
            docker=self.docker,
            client=self.client,
            store=self.volume_store,
            names=self.names,
            extra_labels=dict(self.extra_labels),
            log=self.log,
        )

    @property
    def volume_store(self) -> VolumeStore:
        """The node's sized volumes: made in this process, or by the node agent when the hub runs in a container."""
        if not self.node_agent_image:
            return VolumeStore(Path(self.volume_dir))
        from .nodeagent import AgentVolumeStore, NodeAgent

        agent = NodeAgent(
            self.client,
            image=self.node_agent_image,
            name=self.names.node_agent(),
            volume_root=Path(self.volume_dir),
            labels={**self.extra_labels, Labels.LAB: self.lab_id},
        )
        return AgentVolumeStore(agent)

    @property
    def names(self) -> naming.LabNames:
        return naming.LabNames(self.name_prefix)

    async def _prepare_storage(self, course: Course, version: CourseVersion) -> None:
        # On a node the version's base image is not there (the course image comes by digest, when first run): the data
        # volumes' owner is set with the node agent's image, which every node has (swarm placement requires it).
        helper_image = self.node_agent_image if self.node and self.node_agent_image else version.base_image
        try:
            await self.storage.prepare(
                course=course, username=self.user.name, home_volume=self.home_volume, helper_image=helper_image
            )
        except StorageFailed as exc:
            self.log.error("preparing storage for %s failed: %s", self._log_name, exc)
            raise refusal(503, f"Could not prepare your storage for {course.title}; please try again")

    # -- GPUs ---------------------------------------------------------------------------------------
    async def _reserve_gpus(self, course: Course) -> None:
        """Take the course's GPUs in the ledger, or refuse with the reason before anything starts."""
        try:
            devices = await run_blocking(LEDGER, inventory_for, self.gpu_inventory)
        except GpuInventoryError as exc:
            self.log.error("GPU inventory: %s", exc)
            raise refusal(503, f"{course.title} needs a GPU, but this lab cannot see its GPUs right now; tell the lab's admins")
        if not devices:
            raise refusal(503, f"{course.title} needs a GPU, but this lab has none")
        ledger = await run_blocking(LEDGER, ledger_for, self.gpu_ledger_url)
        self._gpus_requested = True  # from here on a cancelled start may leave a holding: release it then
        try:
            allocation = await run_blocking(
                LEDGER,
                ledger.allocate,
                username=self.user.name,
                course=course.slug,
                server_name=self.name,
                count=course.gpu,
                devices=devices,
                term_start=course.term.start,
                term_end=course.term.end,
                container_name=self.object_name,
            )
        except AllocationRefused as refused:
            raise refusal(refused.status, refused.reason)
        self.gpu_devices = list(allocation.device_uuids)

    async def _check_cuda_driver(self, course: Course, version: CourseVersion) -> None:
        """Refuse a GPU course whose image needs a newer NVIDIA driver than this host has (spawner.gpu.cuda)."""
        try:
            devices = await run_blocking(LEDGER, inventory_for, self.gpu_inventory)
        except GpuInventoryError:
            return  # _reserve_gpus tells the student, and the log says why
        refusal = cuda_driver_refusal(
            course_title=course.title, cuda_runtime=version.cuda_runtime, host_driver=host_driver_version(devices)
        )
        if refusal:
            self.log.warning("refusing %s: %s", self._log_name, refusal)
            raise web.HTTPError(409, refusal)

    async def _release_gpus(self, reason: str, *, held: bool | None = None) -> None:
        """Release this server's GPUs in the ledger (idempotent); ``held`` overrides the in-memory record."""
        if self.gpu_devices if held is None else held:
            ledger = await run_blocking(LEDGER, ledger_for, self.gpu_ledger_url)
            released = await run_blocking(LEDGER, ledger.release, username=self.user.name, server_name=self.name, reason=reason)
            self.log.info("released GPUs %s of %s (%s)", ",".join(released), self._log_name, reason)
            self.gpu_devices = []

    # -- nodes of a swarm ----------------------------------------------------------------------------
    async def _swarm_nodes(self) -> tuple[list[Node], dict[str, str]]:
        """The swarm's nodes as placement reads them, and each one's address (read from the manager)."""
        listing = await self._in_docker_pool(self.manager_client.nodes)
        try:
            nodes = [node_from_swarm(attrs) for attrs in listing]
            addresses = {node.name: node_address(attrs) for node, attrs in zip(nodes, listing, strict=True)}
        except TeachlabError as exc:
            self.log.error("cannot place %s: %s", self._log_name, exc)
            raise refusal(503, "The lab's machines are not set up right now; tell the lab's admins")
        silent = type(self)._unreachable_nodes
        now = time.monotonic()
        nodes = [
            replace(node, ready=False)
            if now - silent.get(node.name, -UNREACHABLE_HOLD_SECONDS) < UNREACHABLE_HOLD_SECONDS
            else node
            for node in nodes
        ]
        return nodes, addresses

    async def _place(self, course: Course, *, writes_data: bool) -> None:
        """Choose this server's node (and its GPUs there), or refuse at once with the reason: which resource, how
        much is free at most, where. The reservation is held from here until the server stops. A server that writes
        the course's data (an instructor's) goes only to the course data node."""
        if self.node_engine_url_template.startswith("tcp://") and not self.node_engine_tls:
            self.log.error(
                "swarm_placement: set c.CourseSpawner.node_engine_tls; a node's Docker API over TCP without mutual TLS "
                "is root on that node for anyone who reaches it, so the hub does not use it"
            )
            raise refusal(503, "The lab's machines are not set up right now; tell the lab's admins")
        if course.gpu:
            await self._reconcile_gpu_nodes_once()
        nodes, addresses = await self._swarm_nodes()
        if course.data_volumes:
            nodes = self._nodes_for_data(course, nodes, writes_data=writes_data)
        request = ServerRequest(
            course=course.slug, cpus=course.resources.cpu, memory_bytes=course.resources.memory_bytes, gpus=course.gpu
        )
        book = self.placement_book
        username, server_name = self.user.name, self.name
        if course.gpu:
            async with _gpu_placement_lock():
                ledger = await run_blocking(LEDGER, ledger_for, self.gpu_ledger_url)
                self._gpus_requested = True  # from here on a cancelled start may leave a holding: release it then
                others = [s for s in book.placed() if (s.username, s.server_name) != (username, server_name)]
                try:
                    allocation = await run_blocking(
                        LEDGER,
                        ledger.place_and_allocate,
                        username=username,
                        server_name=server_name,
                        request=request,
                        nodes=nodes,
                        placed=others,
                        term_start=course.term.start,
                        term_end=course.term.end,
                        container_name=self.object_name,
                    )
                except AllocationRefused as refused:
                    raise refusal(refused.status, refused.reason)
                chosen, why = allocation.node, f"{allocation.node}: GPUs {','.join(allocation.device_uuids)}"
                self.gpu_devices = list(allocation.device_uuids)
                book.record(
                    PlacedServer(chosen, username, server_name, request.cpus, request.memory_bytes, allocation.device_uuids)
                )
        else:
            await self._follow_moved_work(nodes, addresses)
            try:
                placement = book.choose(request, nodes, username=username, server_name=server_name, preferred=self.work_node)
            except NoRoom as no_room:
                raise refusal(503, no_room.reason)
            chosen, why = placement.node, placement.why
        self.node, self.node_address = chosen, addresses[chosen]
        self.log.info("placed %s on %s", self._log_name, why)
        if self.work_node and self.work_node != chosen:
            self.log.warning(
                "the earlier work of %s is on %s, which cannot take it now; it starts on %s with an empty work folder "
                "(teachlab work move %s %s --to %s brings the work back once %s is up)",
                self._log_name,
                self.work_node,
                chosen,
                self.user.name,
                course.slug,
                chosen,
                self.work_node,
            )
            self._report(
                18,
                f"Your earlier work for {course.title} is on {self.work_node}, which cannot take it now: this server "
                f"starts with an empty work folder, and that work stays on {self.work_node} (ask the lab's admins to "
                "bring it back)",
            )

    def _nodes_for_data(self, course: Course, nodes: list[Node], *, writes_data: bool) -> list[Node]:
        """The nodes a server of a course with data volumes may go to: any, or only the data node for a writer."""
        if not self.course_data_node:
            self.log.error("swarm_placement: set c.CourseSpawner.course_data_node; %s has data volumes", course.slug)
            raise refusal(503, "The lab's machines are not set up right now; tell the lab's admins")
        if not writes_data:
            return nodes
        home = [node for node in nodes if node.name == self.course_data_node]
        if not home or not home[0].ready:
            raise refusal(
                503,
                f"{course.title}'s data is kept on {self.course_data_node}, which is down: instructors' servers run "
                "there; try again later",
            )
        return home

    async def _refresh_course_data(self, course: Course) -> None:
        """On a node other than the course data node, bring the node's copy of each data volume up to the data
        node's files. Starts at once on one node share one refresh; a data node that cannot be read leaves the copy
        as it is, and the student is told."""
        if not (self.node and course.data_volumes) or self.node == self.course_data_node:
            return
        for name in course.data_volumes:
            volume = self.names.data_volume(course.slug, name)
            key = (self.node, volume)
            refresh = type(self)._data_refreshes.get(key)
            if refresh is None or refresh.done():
                refresh = asyncio.ensure_future(self._refresh_data_volume(volume))
                type(self)._data_refreshes[key] = refresh
            if not await asyncio.shield(refresh):
                self._report(
                    22,
                    f"The course data ({name}) could not be brought up to date from {self.course_data_node}: you see "
                    "this machine's last copy of it",
                )

    async def _refresh_data_volume(self, volume: str) -> bool:
        """One refresh of this node's copy of ``volume``; False when it could not be made."""
        data_node = self.course_data_node
        _, addresses = await self._swarm_nodes()
        if data_node not in addresses:
            self.log.error("course_data_node %s is not a node of the swarm", data_node)
            return False
        if time.monotonic() - type(self)._unreachable_nodes.get(data_node, -UNREACHABLE_HOLD_SECONDS) < UNREACHABLE_HOLD_SECONDS:
            return False
        source, target = self._node_engine(addresses[data_node]), self._node_engine(self.node_address)
        labels = {**self.extra_labels, Labels.LAB: self.lab_id}
        began = time.monotonic()
        try:
            copied = await self._in_docker_pool(
                lambda: refresh_copy(source, target, volume, image=self.node_agent_image, labels=labels)
            )
        except (docker.errors.DockerException, OSError, *ENGINE_UNREACHABLE) as exc:  # OSError: a helper failed
            if isinstance(exc, ENGINE_UNREACHABLE):
                type(self)._unreachable_nodes[data_node] = time.monotonic()
            self.log.warning("course data %s on %s was not refreshed from %s: %s", volume, self.node, data_node, exc)
            return False
        if copied:
            self.log.info("course data %s copied from %s to %s in %.1f s", volume, data_node, self.node, time.monotonic() - began)
        return True

    def _pull_on_other_nodes(self, image: str, *, role: str) -> None:
        """At a version's first start in this hub process, pull its image onto every other ready node of its role in
        the background: the first server of that version on each of them then finds it there instead of waiting for
        the pull (minutes for a big image) while a class starts."""
        spreads = type(self)._image_spreads
        if image not in spreads:
            spreads[image] = asyncio.ensure_future(self._pull_everywhere(image, role=role, besides=self.node))

    async def _pull_everywhere(self, image: str, *, role: str, besides: str | None) -> None:
        try:
            nodes, addresses = await self._swarm_nodes()
        except web.HTTPError:
            return  # the swarm cannot be read now: each node's first server pulls it itself
        targets = [node.name for node in nodes if node.ready and node.role == role and node.name != besides]
        await asyncio.gather(*(self._pull_onto(name, addresses[name], image) for name in targets))

    async def _pull_onto(self, node: str, address: str, image: str) -> None:
        repository, digest = image.split("@", 1)
        began = time.monotonic()
        try:
            try:
                await self._node_docker(address, "inspect_image", image)
                return
            except docker.errors.NotFound:
                pass
            reason = stream_error(pull_stream_events(await self._node_docker(address, "pull", repository, tag=digest)))
        except (docker.errors.APIError, *ENGINE_UNREACHABLE) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if reason is None:
            self.log.info("pulled %s onto %s ahead of its first server there in %.1f s", image, node, time.monotonic() - began)
        else:
            self.log.warning(
                "pulling %s onto %s ahead of its first server failed (that server will pull it): %s", image, node, reason
            )

    async def _node_docker(self, address: str, method: str, *args, **kwargs):
        """One docker-py APIClient call on the engine of the node at ``address`` (any node, not only this server's)."""
        api = self._node_engine(address).api
        return await self._in_docker_pool(lambda: getattr(api, method)(*args, **kwargs))

    async def _holds_work(self, address: str) -> bool | None:
        """Whether the engine at ``address`` has this student's work volume; None when it cannot tell."""
        try:
            await self._in_docker_pool(self._node_engine(address).api.inspect_volume, self.home_volume)
            return True
        except docker.errors.NotFound:
            return False
        except (docker.errors.APIError, *ENGINE_UNREACHABLE):
            return None

    async def _follow_moved_work(self, nodes: list[Node], addresses: dict[str, str]) -> None:
        """Find work an admin moved (``teachlab work move``): when the recorded work node does not have the work
        volume any more (or cannot take a server now), the ready node that has it becomes the work node. A work node
        whose engine does not answer keeps its place (its work may be there)."""
        if not self.work_node:
            return
        ready = {node.name for node in nodes if node.ready}
        if self.work_node in ready and await self._holds_work(addresses[self.work_node]) is not False:
            return
        others = sorted(ready - {self.work_node})
        found = await asyncio.gather(*(self._holds_work(addresses[name]) for name in others))
        holders = [name for name, holds in zip(others, found, strict=True) if holds]
        if holders:
            self.log.info("the work of %s is on %s now, not on %s", self._log_name, holders[0], self.work_node)
            self.work_node = holders[0]

    async def _reconcile_gpu_nodes_once(self) -> None:
        """Before this hub process's first GPU placement, make the ledger's holdings on every GPU node equal to the GPU
        labels of that node's running containers, as a single server's hub start does for its own engine: a holding
        left by a spawn that died with the previous hub is freed, and a running container the ledger lacks (a
        ledger restored from a backup) gets its holding back, so its device is not handed out twice.

        Here and not in the hub's start (``apply``): the nodes' engines are reached with this spawner's settings
        (``node_engine_tls``, often from a site's config file), and a node that does not answer must not stop the
        hub. Under the GPU placement lock, so a crowd's first starts wait for it and no ``place_and_allocate`` runs
        before it ends. CPU placements do not read the ledger and do not wait."""
        cls = type(self)
        async with _gpu_placement_lock():
            if cls._gpu_nodes_reconciled:
                return
            nodes, addresses = await self._swarm_nodes()
            ledger = await run_blocking(LEDGER, ledger_for, self.gpu_ledger_url)
            gpu_nodes = [node.name for node in nodes if node.role == "gpu"]
            await asyncio.gather(*(self._reconcile_gpu_node(ledger, name, addresses[name]) for name in gpu_nodes))
            cls._gpu_nodes_reconciled = True

    async def _reconcile_gpu_node(self, ledger: GpuLedger, node: str, address: str) -> None:
        engine = self._node_engine(address)
        try:
            claims = await self._in_docker_pool(container_claims, engine, self.lab_id)
        except (docker.errors.APIError, *ENGINE_UNREACHABLE) as exc:
            if isinstance(exc, ENGINE_UNREACHABLE):
                type(self)._unreachable_nodes[node] = time.monotonic()
            self.log.warning(
                "GPU holdings on node %s were not checked against its containers (its engine: %s); they stay as they are",
                node,
                exc,
            )
            return
        report = await run_blocking(LEDGER, reconcile_with_claims, ledger, claims, node)
        for line in reconcile_report_lines(report, node):
            self.log.warning(line)

    async def _prepare_node(self) -> None:
        """The node's students' network (same name and subnet as the hub's) and its egress policy, made through the
        node's engine and its node agent once per node and hub process, and again whenever the node agent has started
        since: the node rebooted or its engine restarted, and the rules of its egress policy may be gone with it."""
        node = self.node
        if not node:
            return
        prepared = type(self)._prepared_nodes
        if node in prepared and await self._node_agent_started() == prepared[node]:
            return
        async with _node_preparation_lock(node):  # a crowd's first starts on a node prepare it once
            if node not in prepared or await self._node_agent_started() != prepared[node]:
                await self._prepare_node_now()

    async def _node_agent_started(self) -> str | None:
        """When this node's agent last started; None when it is not there or its engine cannot say."""
        try:
            found = await self.docker("inspect_container", self.names.node_agent())
        except (docker.errors.APIError, *ENGINE_UNREACHABLE):
            return None
        return found["State"].get("StartedAt")

    async def _prepare_node_now(self) -> None:
        node, address = self.node, self.node_address
        if not self.node_agent_image:
            self.log.error("swarm_placement needs node_agent_image: the hub cannot make volumes or rules on %s", node)
            raise refusal(503, "The lab's machines are not set up right now; tell the lab's admins")
        from .nodeagent import NodeAgent

        engine = self._node_engine(address)
        forward = "" if address == self.hub_address else self.hub_address
        labels = {**self.extra_labels, Labels.LAB: self.lab_id}

        def prepare() -> str:
            net = ensure_student_network(
                engine, self.network_name, labels, self.hub.port, subnet=self.student_subnet or None, hub_address=forward
            )
            agent = NodeAgent(
                engine.api,
                image=self.node_agent_image,
                name=self.names.node_agent(),
                volume_root=Path(self.volume_dir),
                labels=labels,
            )
            agent.ensure()
            agent.install_firewall(net)
            return agent.started_at()

        try:
            type(self)._prepared_nodes[node] = await self._in_docker_pool(prepare)
        except (TeachlabError, docker.errors.APIError, *ENGINE_UNREACHABLE) as exc:
            if isinstance(exc, ENGINE_UNREACHABLE):
                type(self)._unreachable_nodes[node] = time.monotonic()
            self.log.error("preparing node %s for %s failed: %s", node, self._log_name, exc)
            raise refusal(503, f"The machine chosen for your server ({node}) is not ready; please try again")

    def _forget_node(self) -> None:
        if self.node:
            self.placement_book.forget(self.user.name, self.name)
        self.node = None
        self.node_address = None

    # -- start / stop -------------------------------------------------------------------------------
    async def _current_version(self, course: Course) -> CourseVersion:
        current = await run_blocking(FILES, self.registry.current_image, course.slug)
        if current is None:
            raise refusal(503, f"{course.title} has no published environment yet; ask your instructor to publish it")
        return current

    def _image_of(self, version: CourseVersion) -> str:
        """On a swarm, the version by digest from the stack's registry when publishing pushed it there (every node gets
        the same bytes); else the version's tag on this engine."""
        return version.registry_image if self.swarm_placement and version.registry_image else version.image

    async def pull_image(self, image):
        """DockerSpawner's pull step. A digest reference (a version in the stack's registry) is pulled by its digest
        when the node's engine lacks it, whatever ``pull_policy`` says but ``skip`` (its bytes cannot change under
        it; DockerSpawner would split it at its last ``:`` and ask the engine for a repository that does not
        exist); a failure is one line for the student and the engine's reason in the log. Tags follow
        ``pull_policy`` (``never`` by default: the image is this engine's own)."""
        if not naming.is_digest_reference(image) or self.pull_policy == "skip":
            return await super().pull_image(image)
        try:
            await self.docker("inspect_image", image)
            return
        except docker.errors.NotFound:
            pass
        where = f" onto {self.node}" if self.node else ""
        self._report(45, f"Fetching the course's environment{where} (the first server of this version there)")
        repository, digest = image.split("@", 1)
        began = time.monotonic()
        try:
            output = await self.docker("pull", repository, tag=digest)
            reason = stream_error(pull_stream_events(output))
        except docker.errors.APIError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if reason is None:
            try:
                await self.docker("inspect_image", image)
            except docker.errors.NotFound:
                reason = "the engine answered the pull but does not have the image"
        if reason is not None:
            self.log.error("pulling %s for %s%s failed: %s", image, self._log_name, where, reason)
            raise refusal(
                503, f"The course's environment could not be fetched{where}; please try again, or tell the lab's admins"
            )
        self.log.info("pulled %s%s for %s in %.1f s", image, where, self._log_name, time.monotonic() - began)

    async def start(self):
        NOTICES.pop((self.user.name, self.name), None)
        self._progress_events = []
        self._start_finished = False
        self._gpus_requested = False
        began = time.monotonic()
        ticket = None
        booted = False
        try:
            self._report(5, "Checking your access to the course")
            course, access = await self._resolve_course()
            self.course_slug = course.slug
            version = await self._current_version(course)
            image = self._image_of(version)
            self.image = image
            self.image_version = version.version
            self.object_name = self.names.container(self.user.name, course.slug)
            self.home_volume = self.home_volume or self.names.home_volume(self.user.name, course.slug)
            if self.swarm_placement:
                self._report(12, f"Choosing a machine for {course.title}")
                await self._place(course, writes_data=(access.role or "student") != "student")
                if naming.is_digest_reference(image):
                    self._pull_on_other_nodes(image, role="gpu" if course.gpu else "cpu")
                await self._prepare_node()
            elif course.gpu:
                await self._check_cuda_driver(course, version)  # before any GPU is held
                self._report(15, f"Reserving {course.gpu} GPU(s) for {course.title}")
                await self._reserve_gpus(course)
            self._report(20, f"Preparing storage for {course.title}")
            await self._prepare_storage(course, version)
            await self._refresh_course_data(course)
            admission = admission_for(self.concurrent_boots)
            ticket = admission.join(f"{self.user.name}/{self.name}", course.slug)
            await admission.wait(ticket, lambda line: self._report(25, f"Many students are starting now: you are {line}"))
            self.mem_limit = course.resources.memory_bytes  # also tells the server its limits (MEM_LIMIT, CPU_LIMIT)
            self.cpu_limit = course.resources.cpu
            self._spec = make_container_spec(
                course=course,
                image=image,
                version=version.version,
                role=access.role or "student",
                username=self.user.name,
                home_volume=self.home_volume,
                lab_id=self.lab_id,
                names=self.names,
                gpu_device_ids=self.gpu_devices,
                gpu_driver=self.gpu_driver,
                extra_labels=self.extra_labels,
                extra_host_config=self.extra_host_config if isinstance(self.extra_host_config, dict) else None,
            )
            self._report(50, f"Creating your container from {course.title} {version.version}")
            ip, port = await super().start()
            self._report(80, "Waiting for JupyterLab to start")
            # The boot is the CPU-heavy part: the slot is held until the server answers, so a crowd boots a few
            # at a time instead of all together; JupyterHub's own wait then finds it up at once.
            await self._wait_until_answering(f"http://{ip}:{port}{self.server.base_url}api")
            booted = True
            if self.node:
                self.work_node = self.node  # its work volume is there now (recorded only once the server runs)
            SPAWN_SECONDS.labels(course=course.slug).observe(time.monotonic() - began)
            return ip, port
        except BaseException:
            await self._release_gpus("the start failed", held=self._gpus_requested or bool(self.gpu_devices))
            self._forget_node()
            raise
        finally:
            if ticket is not None:
                admission_for(self.concurrent_boots).leave(ticket, booted=booted)
            self._start_finished = True

    async def _wait_until_answering(self, url: str) -> None:
        """Wait for the booting server at ``url`` in short, even steps: JupyterHub's own wait doubles its pause up
        to 5 s, which would keep a boot slot idle for seconds after the server is up."""
        client = AsyncHTTPClient()

        async def answers() -> bool:
            try:
                response = await client.fetch(url, raise_error=False, follow_redirects=False, request_timeout=5)
            except (OSError, HTTPClientError):
                return False
            return response.code != 599

        await exponential_backoff(
            answers,
            f"The server at {url} did not answer within {self.http_timeout} seconds",
            start_wait=0.05,
            scale_factor=1.5,
            max_wait=0.2,
            timeout=self.http_timeout,
        )

    async def create_object(self):
        """Create the container from the spec ``start()`` built (DockerSpawner's hook for this). A course without
        internet gets an address from the offline range, picked among the free ones (retried on a clash)."""
        spec = self._spec
        if spec is None:
            raise RuntimeError("create_object() runs only inside start(), after the container spec is built")
        host_options = spec.host_config(network=self.network_name, auto_remove=self.remove)
        if self.node_address:
            # The hub and proxy run on another machine: the server's port is published on its node's address.
            host_options["port_bindings"] = {self.port: (self.node_address,)}
        host_config = self.client.create_host_config(**host_options)
        arguments = dict(
            image=spec.image,
            name=spec.name,
            command=await self.get_command(),
            user=spec.user,
            environment=self.get_env(),
            labels=dict(spec.labels),
            volumes=[mount.path for mount in spec.mounts],
            ports={f"{self.port}/tcp": None},
            host_config=host_config,
        )
        if not spec.offline:
            return await self.docker("create_container", **arguments)
        for _attempt in range(OFFLINE_ADDRESS_ATTEMPTS):
            taken = await self.docker("inspect_network", self.network_name)
            address = pick_offline_address(
                self.offline_address_range, [c["IPv4Address"] for c in (taken.get("Containers") or {}).values()]
            )
            endpoint = self.client.create_endpoint_config(ipv4_address=address)
            networking = self.client.create_networking_config({self.network_name: endpoint})
            try:
                return await self.docker("create_container", networking_config=networking, **arguments)
            except docker.errors.APIError as exc:
                if "address" not in str(exc).lower():
                    raise
                self.log.info("offline address %s of %s was taken meanwhile; picking another", address, self._log_name)
                await self.docker("remove_container", spec.name, force=True)
        raise refusal(503, "No address was free for your server; please try again")

    async def get_ip_and_port(self):
        """On a node of a swarm: the node's address and the port published there; else DockerSpawner's answer."""
        if not self.node_address:
            return await super().get_ip_and_port()
        published = await self.docker("port", self.container_id, self.port)
        if not published:
            raise RuntimeError(f"the container of {self._log_name} on {self.node} publishes no port")
        return self.node_address, int(published[0]["HostPort"])

    def get_env(self) -> dict:
        env = super().get_env()
        if self._spec is not None:
            env.update(self._spec.environment)
        return env

    async def poll(self):
        if not self.object_name:
            return 0  # start() refused before naming a container: nothing runs
        try:
            status = await super().poll()
        except ENGINE_UNREACHABLE as exc:
            if not self.node:
                raise
            self.log.warning("node %s of %s does not answer: %s", self.node, self._log_name, exc)
            type(self)._prepared_nodes.pop(self.node, None)  # a node that comes back is prepared again
            type(self)._unreachable_nodes[self.node] = time.monotonic()
            status = f"its node {self.node} does not answer"
        if status is not None and not self._spawn_pending:
            await self._release_gpus("its container is gone")
            self._forget_node()  # nothing of it can run there any more: its reservation ends, and no call goes there
        elif status is None and not self._spawn_pending and self.course_slug:
            reason = await self._reason_to_stop()
            if reason:
                self.log.warning("stopping %s: %s", self._log_name, reason)
                NOTICES[(self.user.name, self.name)] = reason
                # JupyterHub stops only servers whose poll says they run, so the container is stopped here; the
                # status then tells the hub the server is gone, and it drops the route and the record.
                await self.stop(now=True)
                return f"stopped by the lab: {reason}"
        return status

    async def _reason_to_stop(self) -> str | None:
        """Why a running server must stop now: its owner lost access (after refreshing their sign-in when it is
        older than the authenticator's refresh age), or its GPU quota or maximum age ran out."""
        catalog = self.catalog_cache.catalog
        course = catalog.courses.get(self.course_slug)
        if course is None:
            return None  # a course taken out of the catalog keeps running servers until they stop
        signed_in = await self._refresh_sign_in()
        if not signed_in:
            return f"your sign-in could not be confirmed, so your {course.title} server was stopped; sign in again"
        access = course.access(self.user.name, user_group_names(self.user), self.today())
        if not access.allowed:
            return f"you no longer have access to {course.title} ({access.reason}), so its server was stopped"
        if course.gpu and self.gpu_devices:
            ledger = await run_blocking(LEDGER, ledger_for, self.gpu_ledger_url)
            return await run_blocking(
                LEDGER,
                ledger.running_server_verdict,
                username=self.user.name,
                server_name=self.name,
                course=course.slug,
                term_start=course.term.start,
                term_end=course.term.end,
                max_server_hours=course.gpu_max_server_hours,
            )
        return None

    async def _refresh_sign_in(self) -> bool:
        """Refresh the owner's groups from the provider when the last refresh is older than ``auth_refresh_age``
        (as JupyterHub does for requests); False when the provider says the sign-in is no longer valid."""
        authenticator = self.authenticator
        refresh_age = getattr(authenticator, "auth_refresh_age", 0)
        user = self.user
        if not refresh_age or not getattr(authenticator, "enable_auth_state", False):
            return True
        now = time.monotonic()
        if user._auth_refreshed and now - user._auth_refreshed < refresh_age:
            return True
        try:
            auth_info = await authenticator.refresh_user(user)
        except Exception as exc:  # noqa: BLE001 - a provider that is down must not stop anybody's work
            self.log.warning("could not refresh the sign-in of %s: %s", user.name, exc)
            return True
        if not auth_info:
            return False
        user._auth_refreshed = now
        if isinstance(auth_info, dict):
            if authenticator.manage_groups and auth_info.get("groups") is not None:
                user.sync_groups(auth_info["groups"])
            if "auth_state" in auth_info:
                await user.save_auth_state(auth_info["auth_state"])
        return True

    async def stop(self, now: bool = False):
        held = bool(self.gpu_devices)  # DockerSpawner.stop clears the state; release only once the container is gone
        if self.object_name:
            try:
                await super().stop(now=now)
            except ENGINE_UNREACHABLE as exc:
                if not self.node:
                    raise
                self.log.warning(
                    "node %s of %s does not answer; its server counts as stopped: %s", self.node, self._log_name, exc
                )
        await self._release_gpus("the server stopped", held=held)
        self.clear_state()


_GPU_PLACEMENT_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _gpu_placement_lock() -> asyncio.Lock:
    """GPU placements of one hub one at a time: each counts the CPUs and memory the others reserved (the ledger
    serializes the devices themselves)."""
    return _GPU_PLACEMENT_LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())


_NODE_PREPARATION_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _node_preparation_lock(node: str) -> asyncio.Lock:
    return _NODE_PREPARATION_LOCKS.setdefault(asyncio.get_running_loop(), {}).setdefault(node, asyncio.Lock())


def pick_offline_address(offline_range: str, taken: list[str]) -> str:
    """A random free address of ``offline_range`` (``taken`` as Docker reports them, ``a.b.c.d/nn``)."""
    network = ipaddress.ip_network(offline_range)
    used = {address.split("/")[0] for address in taken}
    free = [str(host) for host in network.hosts() if str(host) not in used]
    if not free:
        raise refusal(503, "Every address for servers without internet is in use; please try again later")
    return random.choice(free)


def refusal(status: int, message: str) -> web.HTTPError:
    """An error the person sees as it is: in the API's JSON, and on the hub's error page (which otherwise shows
    only "Failed to start your server")."""
    error = web.HTTPError(status, message)
    error.jupyterhub_message = message
    return error


def upgrade_state(state: dict, *, server_name: str, log: Any = None) -> dict:
    """A stored state as the current ``STATE_VERSION`` reads it.

    Version 0 (no ``teachlab_state_version``: plain DockerSpawner, or the lab's first release) knew no
    course or volume: the server name is the course, and the volume keeps the name it always had.
    A state from a newer release is read as it is, with a warning (its keys are a superset).
    """
    version = state.get("teachlab_state_version", 0)
    if not isinstance(version, int) or version > STATE_VERSION:
        if log is not None:
            log.warning(
                "server %s has state version %r, newer than %s: reading the keys this release knows",
                server_name,
                version,
                STATE_VERSION,
            )
        return state
    upgraded = dict(state)
    if version < 1 and naming.is_course_slug(server_name or ""):
        upgraded.setdefault("course_slug", server_name)
    upgraded["teachlab_state_version"] = STATE_VERSION
    return upgraded


def _single_values(form_data: dict) -> dict:
    """Form fields arrive as lists; one value each is all the course form sends."""
    return {key: values[0] if isinstance(values, list) and len(values) == 1 else values for key, values in form_data.items()}


_form_environments: dict[tuple[str, ...], jinja2.Environment] = {}


def _form_environment(paths: tuple[str, ...]) -> jinja2.Environment:
    if paths not in _form_environments:
        loader = jinja2.FileSystemLoader([*paths, str(TEMPLATES_DIR)])
        _form_environments[paths] = jinja2.Environment(loader=loader, autoescape=True)
    return _form_environments[paths]


async def _course_form(spawner: CourseSpawner) -> str:
    """The spawn form: only GPU courses have one, showing the student's remaining GPU-hours."""
    catalog = await spawner.catalog_cache.refresh()
    course = catalog.courses.get(spawner.name)
    if course is None or not course.gpu:
        return ""
    ledger = await run_blocking(LEDGER, ledger_for, spawner.gpu_ledger_url)
    remaining = await run_blocking(
        LEDGER,
        ledger.remaining_gpu_hours,
        username=spawner.user.name,
        course=course.slug,
        term_start=course.term.start,
        term_end=course.term.end,
    )
    template = _form_environment(tuple(spawner.form_template_paths)).get_template("course_form.html")
    return template.render(course=course, remaining_gpu_hours=remaining)
