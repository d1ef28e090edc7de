"""CourseSpawner on a swarm: which node a server goes to, what its state keeps, how a node that stops answering ends
its servers, and that a single server stays as it was.

No Docker daemon: ``StandInManager`` answers the manager's node listing with recorded shapes of docker-py's
``Node.attrs``, and ``NodeEngines`` answers each node's engine from memory (a node can be made to stop
answering, as a machine that is switched off does). The catalog, the version registry, the placement core and the
GPU ledger (SQLite) are real. tests/cluster runs the same paths on Docker-in-Docker nodes. A hub restart is a fresh
``fresh_book`` state: a test that begins with holdings in the ledger begins in a restarted hub.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import date
from types import SimpleNamespace

import docker
import docker.errors
import pytest
import requests.exceptions
from jupyterhub import orm
from tornado import web
from traitlets.config import Config

from spawner.cluster.book import PlacementBook
from spawner.cluster.facts import node_address, node_from_swarm
from spawner.cluster.placement import GIB, Node, NoRoom, ServerRequest
from spawner.core.contract import Labels
from spawner.gpu import GpuDevice
from spawner.gpu.cache import ledger_for
from spawner.hub.spawner import CourseSpawner
from support.catalogs import copy_course, register_stand_in_versions


def swarm_node(hostname, address, *, role="cpu", gpus="", cpus=2, memory=4 * GIB, state="ready"):
    """The shape of docker-py's ``APIClient.nodes()`` entries, trimmed to what is read."""
    labels = {Labels.NODE_ROLE: role, **({Labels.NODE_GPUS: gpus} if gpus else {})}
    return {
        "ID": f"id-{hostname}",
        "Spec": {"Labels": labels, "Role": "worker", "Availability": "active"},
        "Description": {"Hostname": hostname, "Resources": {"NanoCPUs": cpus * 10**9, "MemoryBytes": memory}},
        "Status": {"State": state, "Addr": address},
    }


SWARM = [
    swarm_node("manager", "10.0.0.1", cpus=1, memory=1 * GIB, state="down"),
    swarm_node("worker-1", "10.0.0.11"),
    swarm_node("worker-2", "10.0.0.12"),
    swarm_node("gpu-1", "10.0.0.21", role="gpu", gpus="0,1", cpus=8, memory=16 * GIB),
]


class StandInManager(docker.APIClient):
    """The swarm manager's engine: lists ``swarm`` and never connects (create_host_config is pure)."""

    def __init__(self, swarm=SWARM):
        super().__init__(base_url="unix:///nonexistent.sock", version="1.41")
        self.swarm = swarm

    def nodes(self, filters=None):
        return self.swarm


class StandInEngineApi:
    """A node engine's API client (built, never connected) whose volume lookups ``NodeEngines`` answers."""

    def __init__(self, api, engines, address):
        self._api, self._engines, self._address = api, engines, address

    def __getattr__(self, name):
        return getattr(self._api, name)

    def inspect_volume(self, name):
        return self._engines.inspect_volume(self._address, name)


class NodeEngines:
    """``spawner.docker(method, ...)`` answered per node (the spawner's ``node_address`` says which), and each node's
    running containers listed through ``_node_engine(address).containers`` (the engine's own API client is built,
    never connected); a node in ``off`` does not answer, as a switched-off machine's engine does not."""

    def __init__(self):
        self.off: set[str] = set()
        self.containers: dict[tuple[str, str], dict] = {}  # (address, name) -> created arguments
        self.volumes: set[tuple[str, str]] = set()  # (address, name) of work volumes on the nodes
        self.apis: dict[str, StandInEngineApi] = {}
        self.calls: list[tuple[str, str]] = []
        self.listing_seconds = 0.0  # how long an engine takes to list its containers

    def bind(self, spawner: CourseSpawner):
        async def call(method, *args, **kwargs):
            address = spawner.node_address or "manager"
            self.calls.append((address, method))
            self.check_answers(address)
            return self.answer(address, method, *args, **kwargs)

        async def call_on(address, method, *args, **kwargs):
            self.calls.append((address, method))
            self.check_answers(address)
            return self.answer(address, method, *args, **kwargs)

        built = spawner._node_engine
        spawner.docker = call
        spawner._node_docker = call_on
        spawner._node_engine = lambda address: SimpleNamespace(
            api=self.api(built(address).api, address),
            containers=SimpleNamespace(list=lambda filters: self.running(address, filters)),
        )

    def api(self, built, address):
        """One stand-in API client per engine, as the spawner keeps one client per engine."""
        if address not in self.apis:
            self.apis[address] = StandInEngineApi(built, self, address)
        return self.apis[address]

    def inspect_volume(self, address, name):
        """A node's engine asked for a volume by name (the hub looking for work an admin moved)."""
        self.calls.append((address, "inspect_volume"))
        self.check_answers(address)
        if (address, name) not in self.volumes:
            raise docker.errors.NotFound("no such volume (stand-in)", response=SimpleNamespace(status_code=404))
        return {"Name": name}

    def check_answers(self, address):
        if address in self.off:
            raise requests.exceptions.ConnectionError(f"[Errno 113] No route to host: {address} (stand-in)")

    def running(self, address, filters):
        """docker-py's ``containers.list(filters={"label": key, "status": "running"})``: every container here runs."""
        self.calls.append((address, "containers.list"))
        self.check_answers(address)
        time.sleep(self.listing_seconds)
        return [
            SimpleNamespace(labels=created["labels"])
            for (where, _), created in self.containers.items()
            if where == address and filters["label"] in created["labels"]
        ]

    def run_gpu_container(self, address, *, username, server_name, devices, lab="lab-1"):
        """A server's container running on that node, with the labels a start gives it."""
        labels = {Labels.LAB: lab, Labels.USER: username, Labels.SERVER: server_name, Labels.GPUS: devices}
        self.containers[(address, f"teachlab-{username}---{server_name}")] = {"labels": labels}

    def answer(self, address, method, *args, **kwargs):
        not_found = docker.errors.NotFound("no such object (stand-in)", response=SimpleNamespace(status_code=404))
        if method in ("inspect_volume", "inspect_container") and (address, args[0]) not in self.containers:
            raise not_found
        if method == "inspect_container":
            return {"Id": args[0], "State": {"Running": True}, "Config": {"Env": []}}
        if method == "create_container":
            self.containers[(address, kwargs["name"])] = kwargs
            return {"Id": kwargs["name"]}
        if method == "port":
            return [{"HostIp": address, "HostPort": "32768"}]
        if method in ("stop", "remove_container"):
            self.containers.pop((address, args[0]), None)
        return None


@pytest.fixture(autouse=True)
def fresh_book(monkeypatch):
    monkeypatch.setattr(CourseSpawner, "placement_book", PlacementBook())
    monkeypatch.setattr(CourseSpawner, "_client", StandInManager())
    monkeypatch.setattr(CourseSpawner, "_node_clients", {})
    monkeypatch.setattr(CourseSpawner, "_unreachable_nodes", {})
    monkeypatch.setattr(CourseSpawner, "_gpu_nodes_reconciled", False)
    monkeypatch.setattr(CourseSpawner, "_data_refreshes", {})
    monkeypatch.setattr(CourseSpawner, "_image_spreads", {})


@pytest.fixture
def lab_state(tmp_path, repo_root):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    copy_course(repo_root, "intro-python", catalog)  # 1 CPU, 1 GiB
    copy_course(
        repo_root,
        "intro-python",
        catalog,
        new_slug="gpu-course",
        title="GPU Course",
        gpu=1,
        students={"users": ["alice", "bob", "carol"]},
    )
    state = tmp_path / "state"
    register_stand_in_versions(state, ("intro-python", "gpu-course"))
    return catalog, state


def make_spawner(lab_state, username: str, course: str, engines: NodeEngines, *, swarm: bool = True) -> CourseSpawner:
    catalog, state = lab_state
    tls = state.parent / "engine-tls"
    tls.mkdir(exist_ok=True)
    for name in ("ca.crt", "hub.crt", "hub.key"):
        (tls / name).write_text("stand-in")  # docker-py only checks that the files exist until it connects
    config = Config()
    config.CourseSpawner.catalog_path = str(catalog)
    config.CourseSpawner.state_dir = str(state)
    config.CourseSpawner.lab_id = "lab-1"
    config.CourseSpawner.today = lambda: __import__("datetime").date(2026, 11, 15)
    config.CourseSpawner.swarm_placement = swarm
    config.CourseSpawner.hub_address = "10.0.0.1"
    config.CourseSpawner.course_data_node = "worker-1"  # intro-python has a data volume
    config.CourseSpawner.node_engine_tls = {
        "ca_cert": str(tls / "ca.crt"),
        "client_cert": [str(tls / "hub.crt"), str(tls / "hub.key")],
        "verify": True,
    }
    user = SimpleNamespace(
        name=username,
        url=f"/user/{username}/",
        groups=[SimpleNamespace(name="cs101-students")],
        server_url=lambda name: f"/user/{username}/{name}/",
    )
    spawner = CourseSpawner(
        config=config,
        user=user,
        orm_spawner=SimpleNamespace(
            name=course,
            server=orm.Server(proto="http", ip="", port=0, base_url=f"/user/{username}/{course}/", cookie_name="c"),
            state=None,
        ),
        hub=SimpleNamespace(api_url="http://hub:8081/hub/api", public_host="", url="/hub/", base_url="/hub/", port=8081),
    )
    engines.bind(spawner)
    spawner.api_token = "t"
    return spawner


REAL_PREPARE_NODE = CourseSpawner._prepare_node  # the stand-in below replaces it for the start tests


async def _prepared(self):
    """The node's network and rules are made through its node agent (tests/cluster); here there is none."""


async def _answering(self, url):
    """The server's boot (tests/cluster waits on a real one)."""


class DataCopies:
    """``refresh_copy`` answered from memory (tests/docker and tests/cluster copy real volumes): which node's copy
    of which volume was refreshed from which node; ``failing`` makes it fail as an engine's error does."""

    def __init__(self):
        self.refreshed: list[tuple[str, str, str]] = []
        self.failing = False

    def __call__(self, source, target, volume, *, image, labels):
        time.sleep(0.2)  # a crowd's starts overlap it
        if self.failing:
            raise docker.errors.APIError("the data node's engine failed (stand-in)")
        self.refreshed.append((source.api.base_url, target.api.base_url, volume))
        return True


@pytest.fixture(autouse=True)
def data_copies(monkeypatch):
    copies = DataCopies()
    monkeypatch.setattr("spawner.hub.spawner.refresh_copy", copies)
    return copies


@pytest.fixture(autouse=True)
def without_node_side(monkeypatch):
    monkeypatch.setattr(CourseSpawner, "_prepare_node", _prepared)
    monkeypatch.setattr(CourseSpawner, "_wait_until_answering", _answering)
    monkeypatch.setattr(CourseSpawner, "_prepare_storage", lambda self, course, version: _prepared(self))


def test_servers_spread_over_the_cpu_nodes_within_their_reservations_then_the_next_is_refused_at_once(lab_state):
    engines = NodeEngines()
    started = []
    for n in range(4):  # two 1-CPU servers fit on each 2-CPU worker
        spawner = make_spawner(lab_state, f"student{n}", "intro-python", engines)
        ip, port = asyncio.run(spawner.start())
        started.append((spawner.node, ip, port))
    assert sorted(node for node, _, _ in started) == ["worker-1", "worker-1", "worker-2", "worker-2"]
    assert [node for node, _, _ in started[:2]] in (["worker-1", "worker-2"], ["worker-2", "worker-1"])  # spread first
    assert all(ip == {"worker-1": "10.0.0.11", "worker-2": "10.0.0.12"}[node] for node, ip, _ in started)
    # Each container was made on its node's engine, its port published on that node's address only.
    for (address, _name), created in engines.containers.items():
        assert created["host_config"]["PortBindings"] == {"8888/tcp": [{"HostIp": address, "HostPort": ""}]}
        assert created["host_config"]["SecurityOpt"] == ["no-new-privileges"]  # the single server's spec
    fifth = make_spawner(lab_state, "student4", "intro-python", engines)
    calls = len(engines.calls)
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(fifth.start())
    assert refused.value.status_code == 503
    assert refused.value.log_message == "no cpu node has 1 CPU free for intro-python: most free is 0 CPUs on worker-1"
    assert len(engines.calls) == calls  # refused before any engine was asked for anything
    assert fifth.node is None and len(CourseSpawner.placement_book.placed()) == 4


def test_a_gpu_server_gets_its_node_and_devices_from_the_ledger_and_the_third_is_refused(lab_state):
    engines = NodeEngines()
    alice, bob, carol = (make_spawner(lab_state, name, "gpu-course", engines) for name in ("alice", "bob", "carol"))
    for spawner in (alice, bob):
        asyncio.run(spawner.start())
    assert [(s.node, s.gpu_devices) for s in (alice, bob)] == [("gpu-1", ["0"]), ("gpu-1", ["1"])]
    created = engines.containers[("10.0.0.21", alice.object_name)]
    assert created["host_config"]["DeviceRequests"][0]["DeviceIDs"] == ["0"]
    assert created["environment"]["NVIDIA_VISIBLE_DEVICES"] == "0"
    ledger = ledger_for(alice.gpu_ledger_url)
    assert [(h.node, h.device_uuid, h.username) for h in ledger.holdings()] == [("gpu-1", "0", "alice"), ("gpu-1", "1", "bob")]
    calls = len(engines.calls)
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(carol.start())
    assert refused.value.status_code == 503
    assert refused.value.log_message == "no gpu node has 1 GPU free for gpu-course: most free is 0 GPUs on gpu-1"
    assert len(engines.calls) == calls and carol.node is None and carol.gpu_devices == []
    assert len(ledger.holdings()) == 2


def test_a_node_that_stops_answering_ends_its_servers_at_the_next_poll_and_frees_their_gpus(lab_state):
    engines = NodeEngines()
    spawner = make_spawner(lab_state, "alice", "gpu-course", engines)
    asyncio.run(spawner.start())
    ledger = ledger_for(spawner.gpu_ledger_url)
    assert asyncio.run(spawner.poll()) is None
    engines.off.add("10.0.0.21")  # the GPU node is switched off
    status = asyncio.run(spawner.poll())
    assert status == "its node gpu-1 does not answer"
    assert ledger.holdings() == [] and spawner.gpu_devices == []
    assert CourseSpawner.placement_book.placed() == []  # its CPUs and memory are free for new placements
    # JupyterHub then stops the server: its poll answers at once (no call to the dead node) and stop() does not fail.
    calls = len(engines.calls)
    assert asyncio.run(spawner.poll()) is not None
    asyncio.run(spawner.stop())
    assert all(address != "10.0.0.21" for address, _ in engines.calls[calls:])
    assert spawner.work_node == "gpu-1"  # where the work is stays known


def test_a_cpu_server_whose_node_is_gone_starts_again_on_another_node(lab_state):
    engines = NodeEngines()
    spawner = make_spawner(lab_state, "alice", "intro-python", engines)
    asyncio.run(spawner.start())
    first = spawner.node
    engines.off.add(spawner.node_address)
    assert asyncio.run(spawner.poll()) is not None
    spawner.clear_state()  # what JupyterHub does when it records the server as stopped
    # The swarm still lists the node as ready (its heartbeat has not timed out yet): the hub does not place there.
    asyncio.run(spawner.start())
    assert spawner.node not in (None, first) and spawner.work_node == spawner.node
    assert (
        spawner._progress_events[2]["message"]
        == f"Your earlier work for Introduction to Python is on {first}, which cannot take it now: this server starts "
        f"with an empty work folder, and that work stays on {first} (ask the lab's admins to bring it back)"
    )


def test_the_next_start_follows_work_an_admin_moved_to_another_node(lab_state):
    engines = NodeEngines()
    spawner = make_spawner(lab_state, "alice", "intro-python", engines)
    asyncio.run(spawner.start())
    first, volume = spawner.node, spawner.home_volume
    other = {"worker-1": "worker-2", "worker-2": "worker-1"}[first]
    asyncio.run(spawner.stop())
    # `teachlab work move alice intro-python --to <other>`: the volume is on the other worker now, not on the first.
    engines.volumes.add(({"worker-1": "10.0.0.11", "worker-2": "10.0.0.12"}[other], volume))
    asyncio.run(spawner.start())
    assert (spawner.node, spawner.work_node) == (other, other)
    assert not any("earlier work" in event["message"] for event in spawner._progress_events)


def _nodes_and_addresses():
    nodes = [node_from_swarm(attrs) for attrs in SWARM]
    return nodes, {node.name: attrs["Status"]["Addr"] for node, attrs in zip(nodes, SWARM, strict=True)}


@pytest.mark.parametrize(
    ("work_on", "off", "expected"),
    [
        pytest.param({"worker-1"}, set(), "worker-1", id="still-there"),
        pytest.param({"worker-2"}, set(), "worker-2", id="moved"),
        pytest.param(set(), set(), "worker-1", id="nowhere-keeps-the-record"),
        pytest.param({"worker-2"}, {"10.0.0.11"}, "worker-1", id="work-node-silent-keeps-its-place"),
        pytest.param({"worker-1", "worker-2"}, set(), "worker-1", id="a-copy-elsewhere-does-not-pull"),
    ],
)
def test_the_work_node_changes_only_when_its_engine_says_the_work_is_gone_and_another_node_has_it(
    lab_state, work_on, off, expected
):
    engines = NodeEngines()
    spawner = make_spawner(lab_state, "alice", "intro-python", engines)
    spawner.home_volume, spawner.work_node = "teachlab-home-alice---intro-python", "worker-1"
    addresses = {"worker-1": "10.0.0.11", "worker-2": "10.0.0.12"}
    engines.volumes = {(addresses[node], spawner.home_volume) for node in work_on}
    engines.off = off
    asyncio.run(spawner._follow_moved_work(*_nodes_and_addresses()))
    assert spawner.work_node == expected


def test_a_work_node_that_is_down_gives_way_to_the_ready_node_that_has_the_moved_work(lab_state):
    engines = NodeEngines()
    spawner = make_spawner(lab_state, "alice", "intro-python", engines)
    spawner.home_volume, spawner.work_node = "teachlab-home-alice---intro-python", "worker-1"
    engines.volumes = {("10.0.0.12", spawner.home_volume)}
    nodes, addresses = _nodes_and_addresses()
    nodes = [replace(node, ready=False) if node.name == "worker-1" else node for node in nodes]
    asyncio.run(spawner._follow_moved_work(nodes, addresses))
    assert spawner.work_node == "worker-2"
    assert ("10.0.0.11", "inspect_volume") not in engines.calls  # a node that is down is not asked


def test_the_state_keeps_the_node_and_a_restarted_hub_counts_its_reservation(lab_state):
    engines = NodeEngines()
    spawner = make_spawner(lab_state, "alice", "intro-python", engines)
    asyncio.run(spawner.start())
    state = spawner.get_state()
    assert state["node"] == spawner.node and state["node_address"] == spawner.node_address
    assert state["work_node"] == spawner.node
    assert state["node_reservation"] == {"cpus": 1.0, "memory_bytes": 1 * GIB}
    CourseSpawner.placement_book = PlacementBook()  # the hub restarts: its book is empty until states load
    again = make_spawner(lab_state, "alice", "intro-python", engines)
    again.load_state(state)
    assert again.node == spawner.node and again.client.base_url == f"https://{spawner.node_address}:2376"
    (held,) = CourseSpawner.placement_book.placed()
    assert (held.node, held.cpus, held.memory_bytes) == (spawner.node, 1.0, 1 * GIB)
    again.clear_state()
    assert again.node is None and again.work_node == spawner.node and CourseSpawner.placement_book.placed() == []


def test_a_single_server_asks_no_swarm_and_keeps_no_node(lab_state):
    engines = NodeEngines()
    spawner = make_spawner(lab_state, "alice", "intro-python", engines, swarm=False)
    spawner.use_internal_ip = False  # the stand-in has no network to read an address from
    asyncio.run(spawner.start())
    assert {address for address, _ in engines.calls} == {"manager"}  # the hub's own engine only
    state = spawner.get_state()
    assert not {"node", "node_address", "work_node", "node_reservation"} & set(state)
    assert spawner.client is CourseSpawner._client


DIGEST = "sha256:" + "ab" * 32
PUSHED = f"10.0.0.1:5000/teachlab-test/course-intro-python@{DIGEST}"


class PullingEngines(NodeEngines):
    """Each node's engine holds only the images put or pulled into it; a pull of a reference in ``failing`` answers
    the engine's error in its stream, as a registry without that manifest makes it do."""

    def __init__(self, *, failing=()):
        super().__init__()
        self.images: set[tuple[str, str]] = set()
        self.pulls: list[tuple[str, str, str]] = []
        self.failing = set(failing)

    def answer(self, address, method, *args, **kwargs):
        if method == "inspect_image":
            if (address, args[0]) not in self.images:
                raise docker.errors.NotFound("no such image (stand-in)", response=SimpleNamespace(status_code=404))
            return {"Id": "sha256:" + "cd" * 32}
        if method == "pull":
            self.pulls.append((address, args[0], kwargs["tag"]))
            reference = f"{args[0]}@{kwargs['tag']}"
            if reference in self.failing:
                return '{"status":"Pulling from teachlab-test/course-intro-python"}\n{"errorDetail":{"message":"manifest unknown"},"error":"manifest unknown"}\n'
            self.images.add((address, reference))
            return f'{{"status":"Digest: {DIGEST}"}}\n'
        return super().answer(address, method, *args, **kwargs)


def pushed_version(lab_state, registry_image=PUSHED):
    from spawner.core.contract import StateLayout
    from spawner.images.registry import VersionRegistry

    VersionRegistry(StateLayout(lab_state[1]).courses).record_registry_image("intro-python", "v1", registry_image)


def test_a_version_in_the_registry_is_pulled_by_digest_on_each_nodes_first_server_and_run_by_digest(lab_state):
    pushed_version(lab_state)
    engines = PullingEngines()
    spawners = [make_spawner(lab_state, name, "intro-python", engines) for name in ("alice", "bob", "carol")]
    for spawner in spawners:
        asyncio.run(spawner.start())
    # Three servers on two nodes: each node's engine pulled the digest once (DockerSpawner's own pull would have asked
    # for the repository "...@sha256" with the tag "abab...").
    pulls = sorted(engines.pulls)
    assert pulls == sorted(
        (address, "10.0.0.1:5000/teachlab-test/course-intro-python", DIGEST) for address in ("10.0.0.11", "10.0.0.12")
    )
    assert {created["image"] for created in engines.containers.values()} == {PUSHED}
    first = spawners[0]
    assert first.image == PUSHED and first.image_version == "v1"
    assert any(event["message"].startswith("Fetching the course's environment onto") for event in first._progress_events)


def test_a_versions_first_start_pulls_it_onto_the_other_nodes_so_their_first_servers_find_it_there(lab_state):
    pushed_version(lab_state)
    engines = PullingEngines()
    alice, bob, carol = (make_spawner(lab_state, name, "intro-python", engines) for name in ("alice", "bob", "carol"))

    async def class_starts():
        await alice.start()
        await asyncio.gather(*CourseSpawner._image_spreads.values())
        pulled_ahead = list(engines.pulls)
        await bob.start()
        await carol.start()
        return pulled_ahead

    pulled_ahead = asyncio.run(class_starts())
    other = {"10.0.0.11": "10.0.0.12", "10.0.0.12": "10.0.0.11"}[alice.node_address]
    repository = "10.0.0.1:5000/teachlab-test/course-intro-python"
    assert sorted(pulled_ahead) == sorted([(alice.node_address, repository, DIGEST), (other, repository, DIGEST)])
    assert bob.node_address == other and sorted(engines.pulls) == sorted(pulled_ahead)  # found there: no pull at its start
    assert not any(event["message"].startswith("Fetching") for event in bob._progress_events)


def test_a_new_version_reaches_a_node_at_its_next_start_with_nothing_done_on_the_node(lab_state):
    from dataclasses import replace

    from spawner.core.contract import StateLayout
    from spawner.images.registry import VersionRegistry

    pushed_version(lab_state)
    engines = PullingEngines()
    first = make_spawner(lab_state, "alice", "intro-python", engines)
    asyncio.run(first.start())
    registry = VersionRegistry(StateLayout(lab_state[1]).courses)
    newer = f"10.0.0.1:5000/teachlab-test/course-intro-python@sha256:{'ef' * 32}"
    v1 = registry.read("intro-python").version("v1")
    registry.add_current("intro-python", replace(v1, version="v2", image_id="sha256:2", registry_image=newer), "lock")
    second = make_spawner(lab_state, "bob", "intro-python", engines)
    asyncio.run(second.start())
    assert (second.image, second.image_version) == (newer, "v2")
    assert engines.pulls[-1] == (second.node_address, "10.0.0.1:5000/teachlab-test/course-intro-python", f"sha256:{'ef' * 32}")


def test_a_failed_pull_is_one_line_for_the_student_and_the_engines_reason_in_the_log(lab_state, caplog):
    pushed_version(lab_state)
    engines = PullingEngines(failing=[PUSHED])
    spawner = make_spawner(lab_state, "alice", "intro-python", engines)
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(spawner.start())
    assert refused.value.status_code == 503
    assert refused.value.log_message.startswith("The course's environment could not be fetched onto worker-")
    assert "manifest unknown" in caplog.text and PUSHED in caplog.text
    assert engines.containers == {} and spawner.node is None and CourseSpawner.placement_book.placed() == []


def test_without_a_registry_image_a_node_runs_the_tag_and_a_single_server_always_does(lab_state):
    engines = PullingEngines()
    engines.images |= {(address, "teachlab-test/course-intro-python:v1") for address in ("10.0.0.11", "manager")}
    swarm = make_spawner(lab_state, "alice", "intro-python", engines)
    asyncio.run(swarm.start())
    assert swarm.image == "teachlab-test/course-intro-python:v1" and engines.pulls == []  # pull_policy never: no pull
    pushed_version(lab_state)
    single = make_spawner(lab_state, "bob", "intro-python", engines, swarm=False)
    single.use_internal_ip = False
    asyncio.run(single.start())
    assert single.image == "teachlab-test/course-intro-python:v1" and engines.pulls == []


def test_node_engines_use_mutual_tls_and_a_short_timeout(lab_state):
    spawner = make_spawner(lab_state, "alice", "intro-python", NodeEngines())
    tls = lab_state[1].parent / "engine-tls"
    spawner.node_engine_timeout = 4
    spawner.node_address = "10.0.0.12"
    api = spawner.client
    assert api.base_url == "https://10.0.0.12:2376" and api.timeout == 4
    assert api.cert == (str(tls / "hub.crt"), str(tls / "hub.key")) and api.verify == str(tls / "ca.crt")
    assert api.trust_env is False  # REQUESTS_CA_BUNDLE in the hub's environment must not replace the lab's CA
    spawner.node_address = "10.0.0.11"
    assert spawner.client is not api and spawner.client is spawner.client  # one client per engine


def test_a_swarm_without_tls_to_the_nodes_engines_is_refused_before_placement(lab_state):
    engines = NodeEngines()
    spawner = make_spawner(lab_state, "alice", "intro-python", engines)
    spawner.node_engine_tls = {}
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(spawner.start())
    assert refused.value.status_code == 503 and "tell the lab's admins" in refused.value.log_message
    assert engines.calls == [] and CourseSpawner.placement_book.placed() == []


def test_the_book_prefers_the_node_with_the_work_and_falls_back_when_it_cannot_take_it():
    nodes = [Node("a", "cpu", cpus=2, memory_bytes=4 * GIB), Node("b", "cpu", cpus=4, memory_bytes=4 * GIB)]
    book = PlacementBook()
    request = ServerRequest("intro-python", cpus=2, memory_bytes=GIB)
    assert book.choose(request, nodes, username="u1", server_name="c", preferred="a").node == "a"
    assert book.choose(request, nodes, username="u2", server_name="c", preferred="a").node == "b"  # a is full
    assert book.choose(request, nodes, username="u1", server_name="c").node == "a"  # its own record does not count
    assert book.choose(request, nodes, username="u3", server_name="c", preferred="a").node == "b"
    with pytest.raises(NoRoom):
        book.choose(request, nodes, username="u4", server_name="c", preferred="b")
    assert {(s.username, s.node) for s in book.placed()} == {("u1", "a"), ("u2", "b"), ("u3", "b")}


@pytest.mark.parametrize(
    ("status", "manager", "expected"),
    [
        pytest.param({"Addr": "10.0.0.11"}, None, "10.0.0.11", id="worker"),
        pytest.param({"Addr": "0.0.0.0"}, {"Addr": "10.0.0.1:2377"}, "10.0.0.1", id="manager-reporting-0.0.0.0"),
    ],
)
def test_a_nodes_address(status, manager, expected):
    attrs = {"Description": {"Hostname": "n"}, "Status": status, **({"ManagerStatus": manager} if manager else {})}
    assert node_address(attrs) == expected


def test_a_node_without_an_address_is_one_line_for_the_admin():
    with pytest.raises(Exception, match="swarm node n reports no address; check that it joined with --advertise-addr"):
        node_address({"Description": {"Hostname": "n"}, "Status": {}})


def test_a_node_is_prepared_once_for_a_crowd_with_the_hub_forward_where_the_hub_is_elsewhere_and_again_after_a_reboot(
    lab_state, monkeypatch
):
    """The node's students' network and rules are made once, however many first starts arrive together; the
    forward to the hub is installed on every node but the hub's own; a node whose agent started again since (a reboot)
    is prepared again."""
    import time as clock

    from spawner.hub import nodeagent

    made: list[tuple[str, str]] = []
    installed: list[str] = []

    def network(engine, name, labels, hub_port, *, subnet=None, hub_address=""):
        clock.sleep(0.2)  # the engine's time to make it: long enough for the others to arrive
        made.append((engine.api.base_url, hub_address))
        return SimpleNamespace(network_id=f"net-{len(made)}", hub_address=hub_address)

    class Agent:
        def __init__(self, api, **kwargs):
            self.api = api

        def ensure(self):
            pass

        def install_firewall(self, net):
            installed.append(net.network_id)

        def started_at(self):
            return agents_started[self.api.base_url.removeprefix("https://").removesuffix(":2376")]

    class AgentEngines(NodeEngines):
        """Each node's engine also answers for its node agent: when it last started."""

        def answer(self, address, method, *args, **kwargs):
            if method == "inspect_container" and args[0].endswith("agent"):
                return {"State": {"Running": True, "StartedAt": agents_started[address]}}
            return super().answer(address, method, *args, **kwargs)

    agents_started = {"10.0.0.11": "2026-11-29T08:00:00Z", "10.0.0.1": "2026-11-29T07:00:00Z"}
    monkeypatch.setattr("spawner.hub.spawner.ensure_student_network", network)
    monkeypatch.setattr(nodeagent, "NodeAgent", Agent)
    monkeypatch.setattr(CourseSpawner, "_prepared_nodes", {})
    engines = AgentEngines()

    def crowd():
        spawners = [make_spawner(lab_state, f"student{n}", "intro-python", engines) for n in range(3)]
        for spawner, (node, address) in zip(
            spawners, [("worker-1", "10.0.0.11"), ("worker-1", "10.0.0.11"), ("manager", "10.0.0.1")], strict=True
        ):
            spawner.node, spawner.node_address, spawner.node_agent_image = node, address, "teachlab/hub:1"
        return spawners

    async def prepare_all():
        await asyncio.gather(*(REAL_PREPARE_NODE(spawner) for spawner in crowd()))

    asyncio.run(prepare_all())
    assert sorted(made) == sorted([("https://10.0.0.1:2376", ""), ("https://10.0.0.11:2376", "10.0.0.1")])
    assert len(installed) == 2 and CourseSpawner._prepared_nodes.keys() == {"worker-1", "manager"}
    asyncio.run(prepare_all())  # the next starts find both nodes as they were prepared
    assert len(installed) == 2
    # worker-1 rebooted: its agent started again (restart policy), and the iptables rules may be gone with the boot.
    agents_started["10.0.0.11"] = "2026-11-29T12:00:00Z"
    asyncio.run(prepare_all())
    assert len(installed) == 3 and made[-1] == ("https://10.0.0.11:2376", "10.0.0.1")


# -- GPU reconciliation per node (the first GPU placement of a hub process) ---------------------------------------
GPU_NODE_ADDRESS = "10.0.0.21"  # gpu-1 in SWARM


def hold_gpu(ledger, username, node, device):
    """A holding as a start of the previous hub process made it (place_and_allocate writes the same rows)."""
    ledger.allocate(
        username=username,
        course="gpu-course",
        server_name="gpu-course",
        count=1,
        devices=[GpuDevice(uuid=device, index=int(device), model="stand-in GPU", memory_bytes=16 * GIB)],
        term_start=date(2026, 9, 1),
        term_end=date(2027, 8, 31),
        node=node,
    )


def held(ledger):
    return sorted((h.node, h.device_uuid, h.username) for h in ledger.holdings())


def test_a_holding_whose_spawn_died_with_the_hub_is_freed_at_the_first_start_which_then_gets_that_device(lab_state, caplog):
    engines = NodeEngines()
    alice = make_spawner(lab_state, "alice", "gpu-course", engines)
    ledger = ledger_for(alice.gpu_ledger_url)
    hold_gpu(ledger, "zed", "gpu-1", "0")  # the hub died before zed's container was created: gpu-1 lists none
    asyncio.run(alice.start())
    assert (alice.node, alice.gpu_devices) == ("gpu-1", ["0"])  # without reconciliation "0" is taken and she gets "1"
    assert held(ledger) == [("gpu-1", "0", "alice")]
    assert "teachlab: GPU 0 on gpu-1 released from zed/gpu-course: its container is gone" in caplog.messages


def test_a_running_gpu_container_the_ledger_lacks_gets_its_holding_so_the_next_start_does_not_get_its_device(lab_state, caplog):
    engines = NodeEngines()
    engines.run_gpu_container(GPU_NODE_ADDRESS, username="dave", server_name="gpu-course", devices="0")
    alice, bob = (make_spawner(lab_state, name, "gpu-course", engines) for name in ("alice", "bob"))
    ledger = ledger_for(alice.gpu_ledger_url)
    assert ledger.holdings() == []  # a ledger restored from a backup older than dave's start
    asyncio.run(alice.start())
    assert (alice.node, alice.gpu_devices) == ("gpu-1", ["1"])
    assert held(ledger) == [("gpu-1", "0", "dave"), ("gpu-1", "1", "alice")]
    assert "teachlab: GPU 0 on gpu-1 recorded for dave/gpu-course from its container" in caplog.messages
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(bob.start())
    assert refused.value.log_message == "no gpu node has 1 GPU free for gpu-course: most free is 0 GPUs on gpu-1"


def test_a_gpu_node_whose_engine_does_not_answer_keeps_its_holdings(lab_state, caplog, monkeypatch):
    gpu_2 = swarm_node("gpu-2", "10.0.0.22", role="gpu", gpus="0,1", cpus=8, memory=16 * GIB)
    monkeypatch.setattr(CourseSpawner, "_client", StandInManager([*SWARM, gpu_2]))
    engines = NodeEngines()
    engines.off.add("10.0.0.22")
    alice = make_spawner(lab_state, "alice", "gpu-course", engines)
    ledger = ledger_for(alice.gpu_ledger_url)
    hold_gpu(ledger, "zed", "gpu-1", "0")
    hold_gpu(ledger, "yan", "gpu-2", "0")  # yan's container may run there: nobody can tell
    asyncio.run(alice.start())
    assert held(ledger) == [("gpu-1", "0", "alice"), ("gpu-2", "0", "yan")]
    (line,) = [message for message in caplog.messages if "gpu-2" in message]
    assert line.startswith("GPU holdings on node gpu-2 were not checked against its containers (its engine: ")
    assert line.endswith("); they stay as they are")
    assert "gpu-2" in CourseSpawner._unreachable_nodes  # and no server is placed there meanwhile


def test_the_gpu_nodes_are_reconciled_once_per_hub_process_before_any_gpu_placement(lab_state):
    engines = NodeEngines()
    engines.listing_seconds = 0.3  # the engine's time to answer: long enough for the whole crowd to arrive
    alice, bob, carol = (make_spawner(lab_state, name, "gpu-course", engines) for name in ("alice", "bob", "carol"))
    ledger = ledger_for(alice.gpu_ledger_url)
    for username, device in (("zed", "0"), ("yan", "1")):
        hold_gpu(ledger, username, "gpu-1", device)  # both spawns died with the hub: until reconciled, gpu-1 is full

    async def crowd():
        await asyncio.gather(alice.start(), bob.start())

    asyncio.run(crowd())  # a placement before the reconciliation ended would have been refused: no GPU free
    assert sorted(alice.gpu_devices + bob.gpu_devices) == ["0", "1"]
    assert {(h.node, h.username) for h in ledger.holdings()} == {("gpu-1", "alice"), ("gpu-1", "bob")}
    freed = alice.gpu_devices
    asyncio.run(alice.stop())
    asyncio.run(carol.start())  # a later start of the same hub process
    assert carol.gpu_devices == freed
    assert [call for call in engines.calls if call[1] == "containers.list"] == [(GPU_NODE_ADDRESS, "containers.list")]


def test_a_crowd_on_another_node_shares_one_refresh_of_the_course_data_and_the_data_node_needs_none(lab_state, data_copies):
    engines = NodeEngines()
    crowd = [make_spawner(lab_state, f"student{n}", "intro-python", engines) for n in range(4)]

    async def start_all():
        await asyncio.gather(*(spawner.start() for spawner in crowd))

    asyncio.run(start_all())
    assert sorted(spawner.node for spawner in crowd) == ["worker-1", "worker-1", "worker-2", "worker-2"]
    volume = crowd[0].names.data_volume("intro-python", "datasets")
    assert data_copies.refreshed == [("https://10.0.0.11:2376", "https://10.0.0.12:2376", volume)]


def test_an_instructors_server_goes_to_the_data_node_and_waits_for_it_when_it_is_down(lab_state):
    engines = NodeEngines()
    for n in range(2):  # worker-1 is equally free after the first two students, and first by name
        asyncio.run(make_spawner(lab_state, f"student{n}", "intro-python", engines).start())
    teacher = make_spawner(lab_state, "prof-lee", "intro-python", engines)
    asyncio.run(teacher.start())
    assert teacher.node == "worker-1"
    CourseSpawner.placement_book = PlacementBook()
    CourseSpawner._unreachable_nodes["worker-1"] = time.monotonic()  # its engine stopped answering just now
    again = make_spawner(lab_state, "prof-lee", "intro-python", NodeEngines())
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(again.start())
    assert refused.value.status_code == 503
    assert refused.value.log_message == (
        "Introduction to Python's data is kept on worker-1, which is down: instructors' servers run there; try again later"
    )
    student = make_spawner(lab_state, "student9", "intro-python", NodeEngines())
    asyncio.run(student.start())  # students start elsewhere, with that node's last copy
    assert student.node == "worker-2"


def test_a_copy_that_cannot_be_refreshed_is_said_and_the_start_goes_on(lab_state, data_copies):
    engines = NodeEngines()
    data_copies.failing = True
    asyncio.run(make_spawner(lab_state, "student0", "intro-python", engines).start())
    second = make_spawner(lab_state, "student1", "intro-python", engines)
    asyncio.run(second.start())
    assert second.node == "worker-2" and second.server is not None
    assert {
        "progress": 22,
        "message": "The course data (datasets) could not be brought up to date from worker-1: you see this machine's "
        "last copy of it",
    } in second._progress_events


def test_a_swarm_without_a_course_data_node_refuses_courses_with_data(lab_state, caplog):
    spawner = make_spawner(lab_state, "student0", "intro-python", NodeEngines())
    spawner.course_data_node = ""
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(spawner.start())
    assert refused.value.log_message == "The lab's machines are not set up right now; tell the lab's admins"
    assert "set c.CourseSpawner.course_data_node; intro-python has data volumes" in caplog.text
