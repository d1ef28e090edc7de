"""The GPU ledger across nodes: node and devices chosen in one transaction, no (node, device) handed out twice,
an old single-server ledger file upgraded in place (migration 0002)."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone
from typing import Union

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine

from spawner.cluster import Node, PlacedServer, ServerRequest
from spawner.gpu import LOCAL_NODE, Allocation, AllocationRefused, GpuLedger
from spawner.gpu.ledger import VERSION_TABLE
from support.ledger_races import DEVICES

GIB = 1 << 30
TERM = (date.today() - timedelta(days=30), date.today() + timedelta(days=30))
DEEP = ServerRequest("deep-learning", cpus=1, memory_bytes=2 * GIB, gpus=1)
# Two GPU nodes whose devices have the same ids (a stand-in: fake GPUs numbered 0 and 1 on each), one CPU node.
NODES = [
    Node("gpu-1", "gpu", 8, 32 * GIB, ("0", "1")),
    Node("gpu-2", "gpu", 8, 32 * GIB, ("0", "1")),
    Node("worker-1", "cpu", 64, 256 * GIB),
]
NO_GPU_LEFT = "no gpu node has 1 GPU free for deep-learning: most free is 0 GPUs on gpu-1"


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'gpu-ledger.sqlite'}"


@pytest.fixture
def ledger(url):
    with GpuLedger.open(url) as ledger:
        yield ledger


def place(ledger: GpuLedger, username: str, placed=(), request: ServerRequest = DEEP) -> Union[Allocation, AllocationRefused]:
    try:
        return ledger.place_and_allocate(
            username=username,
            server_name=request.course,
            request=request,
            nodes=NODES,
            placed=list(placed),
            term_start=TERM[0],
            term_end=TERM[1],
            container_name=f"teachlab-{username}---{request.course}",
        )
    except AllocationRefused as refused:
        return refused


def test_node_and_devices_are_chosen_together_spread_over_the_gpu_nodes(ledger):
    alice, bob, carol = (place(ledger, name) for name in ("alice", "bob", "carol"))
    assert [(a.node, a.device_uuids) for a in (alice, bob, carol)] == [("gpu-1", ("0",)), ("gpu-2", ("0",)), ("gpu-1", ("1",))]
    assert {(h.node, h.device_uuid, h.username) for h in ledger.holdings()} == {
        ("gpu-1", "0", "alice"),
        ("gpu-2", "0", "bob"),
        ("gpu-1", "1", "carol"),
    }
    again = place(ledger, "alice")
    assert (again.node, again.device_uuids, again.already_held) == ("gpu-1", ("0",), True)


def test_when_every_device_is_held_the_student_is_told_at_once(ledger):
    for name in ("a", "b", "c", "d"):
        assert isinstance(place(ledger, name), Allocation)
    refused = place(ledger, "e")
    assert (refused.status, refused.reason) == (503, NO_GPU_LEFT)
    ledger.release(username="b", server_name="deep-learning", reason="stopped")
    assert (place(ledger, "e").node, place(ledger, "e").device_uuids) == ("gpu-2", ("0",))


def test_cpu_and_memory_reserved_on_a_gpu_node_count(ledger):
    busy = [PlacedServer("gpu-1", "x", "vision", 7.5, GIB), PlacedServer("gpu-2", "y", "vision", 1, 31 * GIB)]
    refused = place(ledger, "alice", busy)
    # gpu-1 has 0.5 CPUs left, gpu-2 has CPUs but 1 GiB memory left.
    assert refused.reason == (
        "no gpu node with 1 GPU and 1 CPU free also has 2 GiB memory free for deep-learning: most free is 1 GiB memory on gpu-2"
    )
    assert ledger.holdings() == []


def test_gpus_the_caller_lists_on_placed_servers_are_ignored_the_ledger_decides(ledger):
    claimed = [PlacedServer("gpu-1", "x", "vision", 1, GIB, ("0", "1")), PlacedServer("gpu-2", "y", "vision", 1, GIB, ("0", "1"))]
    allocation = place(ledger, "alice", claimed)
    assert (allocation.node, allocation.device_uuids) == ("gpu-1", ("0",))


def test_quotas_come_before_placement_and_the_course_cap_counts_every_node(ledger):
    ledger.set_course_quota("deep-learning", max_concurrent_gpus=2, gpu_hours_per_student=None, actor="admin")
    assert isinstance(place(ledger, "a"), Allocation) and isinstance(place(ledger, "b"), Allocation)
    refused = place(ledger, "c")
    assert (refused.status, refused.reason) == (
        429,
        "deep-learning may hold at most 2 GPUs at once and all 2 are in use; try again later",
    )


def test_a_cpu_request_is_not_the_ledgers(ledger):
    with pytest.raises(ValueError, match="for GPU servers"):
        place(ledger, "alice", request=ServerRequest("data-analysis", 1, GIB))


def test_the_single_server_path_and_the_nodes_share_device_ids_without_sharing_devices(ledger):
    local = ledger.allocate(
        username="zoe",
        course="deep-learning",
        server_name="deep-learning",
        count=1,
        devices=[d for d in DEVICES if d.uuid == "GPU-0"],
        term_start=TERM[0],
        term_end=TERM[1],
    )
    assert (local.node, local.device_uuids) == (LOCAL_NODE, ("GPU-0",))
    remote = ledger.allocate(
        username="yan",
        course="deep-learning",
        server_name="deep-learning",
        count=1,
        devices=[d for d in DEVICES if d.uuid == "GPU-0"],
        term_start=TERM[0],
        term_end=TERM[1],
        node="gpu-9",
    )
    assert (remote.node, remote.device_uuids) == ("gpu-9", ("GPU-0",))
    assert [h.username for h in ledger.holdings(node=LOCAL_NODE)] == ["zoe"]
    assert ledger.release(username="yan", server_name="deep-learning", reason="stopped") == ["GPU-0"]
    assert [(h.node, h.username) for h in ledger.holdings()] == [(LOCAL_NODE, "zoe")]
    [zoe_interval, yan_interval] = sorted(
        ledger.usage_intervals(since=datetime(2000, 1, 1, tzinfo=timezone.utc)), key=lambda i: i.username, reverse=True
    )
    assert zoe_interval.ended_at is None and yan_interval.ended_at is not None


def test_reconcile_touches_only_its_own_node(ledger):
    place(ledger, "alice")  # gpu-1 / 0
    report = ledger.reconcile({}, node=LOCAL_NODE, spawn_grace=timedelta(0))
    assert report.released == () and len(ledger.holdings()) == 1
    report = ledger.reconcile({("bob", "deep-learning"): ["0"]}, node="gpu-2")
    assert [(h.node, h.device_uuid, h.username) for h in report.added] == [("gpu-2", "0", "bob")]
    report = ledger.reconcile({}, node="gpu-1", spawn_grace=timedelta(0))
    assert [(h.node, h.username) for h in report.released] == [("gpu-1", "alice")]
    assert [(h.node, h.username) for h in ledger.holdings()] == [("gpu-2", "bob")]


@pytest.mark.parametrize("one_ledger_per_thread", [False, True], ids=["shared-ledger", "ledger-per-thread"])
def test_thirty_threads_racing_never_get_one_device_twice(url, one_ledger_per_thread):
    """30 students ask at one moment (a barrier) for 1 GPU among 2 nodes x 2 devices with equal ids: exactly 4
    get one, no (node, device) twice, the rest hear why at once. With a ledger per thread, only SQLite's
    BEGIN IMMEDIATE on the shared file serializes them."""
    shared = GpuLedger.open(url)
    opened: list[GpuLedger] = []
    lock = threading.Lock()
    barrier = threading.Barrier(30)

    def one(username: str) -> Union[Allocation, AllocationRefused]:
        ledger = shared
        if one_ledger_per_thread:
            try:
                ledger = GpuLedger.open(url)
            except BaseException:
                barrier.abort()
                raise
            with lock:
                opened.append(ledger)
        barrier.wait()
        return place(ledger, username)

    with ThreadPoolExecutor(max_workers=30) as pool:
        outcomes = list(pool.map(one, [f"student-{n}" for n in range(30)]))
    granted = [o for o in outcomes if isinstance(o, Allocation)]
    refused = [o for o in outcomes if isinstance(o, AllocationRefused)]
    given = sorted((a.node, d) for a in granted for d in a.device_uuids)
    assert given == [("gpu-1", "0"), ("gpu-1", "1"), ("gpu-2", "0"), ("gpu-2", "1")]
    assert sorted((h.node, h.device_uuid) for h in shared.holdings()) == given
    assert len(refused) == 26 and {(r.status, r.reason) for r in refused} == {(503, NO_GPU_LEFT)}
    for ledger in [shared, *opened]:
        ledger.close()


# Migration 0002: a ledger file of a single-server lab, written at revision 0001


def test_an_old_ledger_file_is_upgraded_and_keeps_its_holdings_on_the_local_node(tmp_path):
    path = tmp_path / "old-ledger.sqlite"
    config = Config()
    config.set_main_option("script_location", "spawner.gpu:migrations")
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    engine.dispose()
    old = sqlite3.connect(path)
    old.execute(
        "INSERT INTO gpu_holdings (device_uuid, username, course, server_name, container_name, since) "
        "VALUES ('GPU-0', 'alice', 'deep-learning', 'deep-learning', 'teachlab-alice---deep-learning', '2025-10-01 09:00:00')"
    )
    old.execute(
        "INSERT INTO gpu_usage_intervals (username, course, device_uuid, started_at) "
        "VALUES ('alice', 'deep-learning', 'GPU-0', '2025-10-01 09:00:00')"
    )
    old.commit()
    old.close()

    with GpuLedger.open(f"sqlite:///{path}") as ledger:
        [holding] = ledger.holdings()
        assert (holding.node, holding.device_uuid, holding.username) == (LOCAL_NODE, "GPU-0", "alice")
        assert holding.since == datetime(2025, 10, 1, 9, 0, tzinfo=timezone.utc)
        again = ledger.allocate(
            username="alice",
            course="deep-learning",
            server_name="deep-learning",
            count=1,
            devices=DEVICES,
            term_start=date(2025, 9, 1),
            term_end=date(2025, 12, 20),
        )
        assert (again.already_held, again.node, again.device_uuids) == (True, LOCAL_NODE, ("GPU-0",))
        assert ledger.release(username="alice", server_name="deep-learning", reason="stopped") == ["GPU-0"]
        [interval] = ledger.usage_intervals(since=datetime(2025, 1, 1, tzinfo=timezone.utc))
        assert interval.ended_at is not None
    database = sqlite3.connect(path)
    assert database.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [("0002",)]
    database.execute(
        "INSERT INTO gpu_holdings (node, device_uuid, username, course, server_name, since) VALUES ('gpu-1', 'GPU-0', 'a', 'c', 'c', '2025-10-01')"
    )
    database.execute(
        "INSERT INTO gpu_holdings (node, device_uuid, username, course, server_name, since) VALUES ('gpu-2', 'GPU-0', 'b', 'c', 'c', '2025-10-01')"
    )
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        database.execute(
            "INSERT INTO gpu_holdings (node, device_uuid, username, course, server_name, since) VALUES ('gpu-1', 'GPU-0', 'c', 'c', 'c', '2025-10-01')"
        )
    database.close()
