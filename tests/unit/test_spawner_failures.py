"""CourseSpawner.start() when something fails half-way: nothing half-done stays (GPUs, volumes).

No Docker daemon, no root: ``StandInDocker`` answers the spawner's Docker calls from memory and fails where a
test says, and ``StandInVolumeStore`` stands in for the loop-mounted filesystems of ``spawner.node.disks``
(both name the fake; tests/hub and tests/node run the same paths on the real engine and kernel). The catalog,
the version registry and the GPU ledger (SQLite) are real.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from types import SimpleNamespace

import docker
import docker.errors
import pytest
from tornado import web
from traitlets.config import Config

from spawner.catalog import load_catalog
from spawner.core import naming
from spawner.core.contract import StateLayout
from spawner.gpu.cache import ledger_for
from spawner.hub.spawner import CourseSpawner
from spawner.hub.storage import ServerStorage
from spawner.images.registry import VersionRegistry
from support.catalogs import copy_course, register_stand_in_versions

GPUS = [{"uuid": f"GPU-{n}", "index": n, "model": "Fake GPU (tests)", "memory": "16G"} for n in range(2)]


class StandInDocker:
    """In-memory answers to ``spawner.docker(method, ...)``; ``fail_on`` makes one method raise."""

    def __init__(self, fail_on: str = ""):
        self.fail_on = fail_on
        self.volumes: set[str] = set()
        self.calls: list[str] = []
        self.created: list[dict] = []

    async def __call__(self, method: str, *args, **kwargs):
        self.calls.append(method)
        if method == self.fail_on:
            raise docker.errors.APIError(f"{method} failed (stand-in)")
        if method == "inspect_volume":
            if args[0] not in self.volumes:
                raise docker.errors.NotFound("no such volume")
            return {"Name": args[0]}
        if method == "create_volume":
            self.volumes.add(kwargs["name"])
            return {"Name": kwargs["name"]}
        if method == "remove_volume":
            self.volumes.discard(args[0])
            return None
        if method == "create_container":
            self.created.append(kwargs)
            return {"Id": "helper-1"}
        if method == "wait":
            return {"StatusCode": 0}
        return None


class StandInVolumeStore:
    """In-memory sized volumes: which exist and which are mounted."""

    made: set[str] = set()

    def __init__(self, root):
        self.root = root

    def exists(self, name):
        return name in self.made

    def create(self, name, size_bytes, *, uid, gid):
        self.made.add(name)

    def ensure_mounted(self, name):
        assert name in self.made

    def driver_options(self, name):
        return {"type": "none", "o": "bind", "device": f"/stand-in/{name}"}

    def remove(self, name):
        self.made.discard(name)


@pytest.fixture(autouse=True)
def stand_in_volumes(monkeypatch):
    StandInVolumeStore.made = set()
    monkeypatch.setattr("spawner.hub.spawner.VolumeStore", StandInVolumeStore)
    return StandInVolumeStore


@pytest.fixture
def lab_state(tmp_path, repo_root):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    copy_course(repo_root, "intro-python", catalog)
    copy_course(
        repo_root, "intro-python", catalog, new_slug="gpu-course", title="GPU Course", gpu=1, students={"users": ["alice"]}
    )
    state = tmp_path / "state"
    register_stand_in_versions(state, ("intro-python", "gpu-course"))
    return catalog, state


@pytest.fixture(autouse=True)
def offline_client(monkeypatch):
    """A docker-py client that never connects: create_host_config() is a pure computation."""
    monkeypatch.setattr(CourseSpawner, "_client", docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41"))


def make_spawner(lab_state, name: str, stand_in: StandInDocker) -> CourseSpawner:
    catalog, state = lab_state
    config = Config()
    config.CourseSpawner.catalog_path = str(catalog)
    config.CourseSpawner.state_dir = str(state)
    config.CourseSpawner.gpu_inventory = GPUS
    config.CourseSpawner.lab_id = "lab-1"
    config.CourseSpawner.today = lambda: __import__("datetime").date(2026, 11, 15)
    user = SimpleNamespace(
        name="alice",
        url="/user/alice/",
        groups=[SimpleNamespace(name="cs101-students")],
        server_url=lambda name: f"/user/alice/{name}/",
    )
    spawner = CourseSpawner(
        config=config,
        user=user,
        orm_spawner=SimpleNamespace(name=name, server=None, state=None),
        hub=SimpleNamespace(api_url="http://hub:8081/hub/api", public_host="", url="/hub/", base_url="/hub/"),
    )
    spawner.docker = stand_in
    spawner.api_token = "t"
    return spawner


def test_a_gpu_start_that_fails_after_the_reservation_releases_the_gpu(lab_state):
    stand_in = StandInDocker(fail_on="create_volume")
    spawner = make_spawner(lab_state, "gpu-course", stand_in)
    ledger = ledger_for(spawner.gpu_ledger_url)
    with pytest.raises(web.HTTPError) as failed:
        asyncio.run(spawner.start())
    assert failed.value.status_code == 503 and "Could not prepare your storage" in failed.value.log_message
    assert ledger.holdings() == []
    assert spawner.gpu_devices == []
    # The reservation did happen (and was closed): usage has an interval for alice that has ended.
    assert [row.username for row in ledger.usage_report(course="gpu-course")] == ["alice"]


def test_volumes_made_for_a_start_whose_storage_failed_are_removed(lab_state):
    stand_in = StandInDocker(fail_on="start")  # the helper that hands new volumes to the student uid fails
    spawner = make_spawner(lab_state, "intro-python", stand_in)
    with pytest.raises(web.HTTPError) as failed:
        asyncio.run(spawner.start())
    assert failed.value.status_code == 503
    assert stand_in.calls.count("create_volume") == 2  # the work volume and the course's data volume
    assert stand_in.volumes == set()
    assert stand_in.calls.count("remove_volume") == 2
    assert "remove_container" in stand_in.calls  # the helper container does not stay either
    assert StandInVolumeStore.made == set()  # nor the work volume's filesystem


def test_volumes_that_existed_before_are_kept_when_storage_fails(lab_state):
    stand_in = StandInDocker(fail_on="start")
    stand_in.volumes.add("teachlab-home-alice---intro-python")  # last week's work
    StandInVolumeStore.made.add("teachlab-home-alice---intro-python")
    spawner = make_spawner(lab_state, "intro-python", stand_in)
    with pytest.raises(web.HTTPError):
        asyncio.run(spawner.start())
    assert stand_in.volumes == {"teachlab-home-alice---intro-python"}
    assert StandInVolumeStore.made == {"teachlab-home-alice---intro-python"}


def test_a_start_refused_for_access_creates_nothing(lab_state):
    stand_in = StandInDocker()
    spawner = make_spawner(lab_state, "gpu-course", stand_in)
    spawner.user.name = "mallory"
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(spawner.start())
    assert refused.value.status_code == 400 and "not enrolled" in refused.value.log_message
    assert stand_in.calls == []
    assert json.dumps(ledger_for(spawner.gpu_ledger_url).holdings()) == "[]"


def test_the_helper_that_hands_data_volumes_over_runs_the_platforms_image_confined(lab_state):
    stand_in = StandInDocker(fail_on="start")
    spawner = make_spawner(lab_state, "intro-python", stand_in)
    with pytest.raises(web.HTTPError):
        asyncio.run(spawner.start())
    (helper,) = stand_in.created
    assert helper["image"] == "teachlab-test/debian-py39:v1.0.0"  # the base image, never the course author's
    host = helper["host_config"]
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["CHOWN"] and host["NetworkMode"] == "none"
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["ReadonlyRootfs"] is True


def test_a_gpu_course_needing_a_newer_driver_is_refused_before_a_gpu_is_held(lab_state):
    """The image of gpu-course v2 carries CUDA 12.4; the declared GPUs run driver 535.54.03."""
    _catalog, state = lab_state
    registry = VersionRegistry(StateLayout(state).courses)
    current = registry.current_image("gpu-course")
    registry.add_current("gpu-course", replace(current, version="v2", cuda_runtime="12.4"), "lock")
    stand_in = StandInDocker()
    spawner = make_spawner(lab_state, "gpu-course", stand_in)
    spawner.gpu_inventory = [{**device, "driver_version": "535.54.03"} for device in GPUS]
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(spawner.start())
    assert refused.value.status_code == 409
    assert "CUDA 12.4, which needs NVIDIA driver 550.54.14" in refused.value.log_message
    assert "run driver 535.54.03" in refused.value.log_message
    ledger = ledger_for(spawner.gpu_ledger_url)
    assert ledger.holdings() == [] and ledger.usage_report(course="gpu-course") == []  # never reserved
    assert stand_in.calls == [] and spawner.gpu_devices == []
    # On a host whose driver is new enough the same start passes the check and reserves its GPU
    # (then fails at the stand-in's storage step, which releases it again).
    newer = make_spawner(lab_state, "gpu-course", StandInDocker(fail_on="create_volume"))
    newer.gpu_inventory = [{**device, "driver_version": "550.54.14"} for device in GPUS]
    with pytest.raises(web.HTTPError) as later:
        asyncio.run(newer.start())
    assert later.value.status_code == 503
    assert [row.username for row in ledger.usage_report(course="gpu-course")] == ["alice"]


def test_a_crowd_of_first_starts_hands_a_new_data_volume_over_once(lab_state, tmp_path):
    """Twenty students start a course for the first time together: one helper container, not twenty, and
    nobody's start goes on before the data volume belongs to the student uid."""
    course = load_catalog(lab_state[0]).courses["intro-python"]
    handed_over: list[float] = []

    class SlowHelper(StandInDocker):
        async def __call__(self, method, *args, **kwargs):
            if method == "wait":
                await asyncio.sleep(0.2)
                handed_over.append(asyncio.get_running_loop().time())
            return await super().__call__(method, *args, **kwargs)

    stand_in = SlowHelper()
    storage = ServerStorage(
        docker=stand_in,
        client=CourseSpawner._client,
        store=StandInVolumeStore(tmp_path),
        names=naming.LabNames("teachlab"),
        extra_labels={},
        log=logging.getLogger("test"),
    )

    async def start(username: str) -> float:
        await storage.prepare(course=course, username=username, home_volume=f"home-{username}", helper_image="base:v1")
        return asyncio.get_running_loop().time()

    async def crowd():
        return await asyncio.gather(*(start(f"student{n}") for n in range(20)))

    ready = asyncio.run(crowd())
    assert stand_in.calls.count("create_container") == 1
    assert len(handed_over) == 1 and min(ready) >= handed_over[0]
    assert stand_in.volumes == {f"home-student{n}" for n in range(20)} | {storage.names.data_volume("intro-python", "datasets")}
