"""GPU ledger races, run on SQLite (tests/unit) and on a real PostgreSQL (tests/db) alike.

Each race makes many requests at one moment (a barrier), from threads with one shared ledger, from threads
with a ledger (and so a database connection and an in-process lock) each, or from two processes: only the
database's own serialization (SQLite's BEGIN IMMEDIATE, PostgreSQL's advisory lock) keeps the last two right.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from typing import Union

from spawner.gpu import Allocation, AllocationRefused, GpuLedger, declared_inventory

COURSE = "deep-learning"
DEVICES = declared_inventory(
    [
        {"uuid": f"GPU-{index}", "index": index, "model": "NVIDIA H100 80GB HBM3", "memory": "80G"}
        for index in (3, 1, 0, 2)  # listed out of order: allocation still takes the lowest index first
    ]
)
IN_USE = "all 4 GPUs are in use; try again later"
THIS_TERM = (date.today() - timedelta(days=30), date.today() + timedelta(days=30))


def attempt(
    ledger: GpuLedger, username: str, term: tuple[date, date], course: str = COURSE
) -> Union[Allocation, AllocationRefused]:
    try:
        return ledger.allocate(
            username=username,
            course=course,
            server_name=course,
            count=1,
            devices=DEVICES,
            term_start=term[0],
            term_end=term[1],
            container_name=f"teachlab-{username}---{course}",
        )
    except AllocationRefused as refused:
        return refused


def _race(ledger_for: Callable[[], GpuLedger], usernames: list[str]) -> list[Union[Allocation, AllocationRefused]]:
    """Every user asks for one GPU at the same moment, each from its own thread."""
    barrier = threading.Barrier(len(usernames))

    def one(username: str) -> Union[Allocation, AllocationRefused]:
        try:
            ledger = ledger_for()
        except BaseException:
            barrier.abort()  # the others would otherwise wait for this thread forever
            raise
        barrier.wait()
        return attempt(ledger, username, THIS_TERM)

    with ThreadPoolExecutor(max_workers=len(usernames)) as pool:
        return list(pool.map(one, usernames))


def _assert_four_granted(outcomes: list, holdings_uuids: list[str]) -> None:
    granted = [o for o in outcomes if isinstance(o, Allocation)]
    refused = [o for o in outcomes if isinstance(o, AllocationRefused)]
    assert len(granted) == 4 and len(refused) == len(outcomes) - 4
    assert {(r.status, r.reason) for r in refused} == {(503, IN_USE)}
    given = sorted(uuid for allocation in granted for uuid in allocation.device_uuids)
    assert given == sorted(holdings_uuids) == ["GPU-0", "GPU-1", "GPU-2", "GPU-3"]


def fifty_threads_never_share_a_device(url: str, *, one_ledger_per_thread: bool) -> None:
    shared = GpuLedger.open(url)
    opened: list[GpuLedger] = []

    def ledger_for() -> GpuLedger:
        if not one_ledger_per_thread:
            return shared
        ledger = GpuLedger.open(url)
        opened.append(ledger)
        return ledger

    outcomes = _race(ledger_for, [f"student-{n}" for n in range(50)])
    _assert_four_granted(outcomes, [h.device_uuid for h in shared.holdings()])
    for ledger in [shared, *opened]:
        ledger.close()


def _race_in_process(
    url: str, usernames: list[str], start: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue
) -> None:
    """Runs in a child process: open the ledger, wait for the other process, race from threads.
    Puts the outcomes on ``results``, or the error, so the parent fails at once instead of timing out."""
    try:
        with GpuLedger.open(url) as ledger:
            start.wait(timeout=60)
            outcomes = _race(lambda: ledger, usernames)
    except Exception as exc:
        start.abort()
        results.put(repr(exc))
        raise
    results.put([o.device_uuids if isinstance(o, Allocation) else (o.status, o.reason) for o in outcomes])


def two_processes_never_share_a_device(url: str) -> None:
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=_race_in_process, args=(url, [f"p{p}-student-{n}" for n in range(25)], start, results))
        for p in range(2)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=120) for _ in processes]
    assert all(isinstance(report, list) for report in reports), reports
    outcomes = [outcome for report in reports for outcome in report]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    granted = [o for o in outcomes if isinstance(o, tuple) and isinstance(o[0], str)]
    refused = [o for o in outcomes if o not in granted]
    assert len(granted) == 4 and set(refused) == {(503, IN_USE)} and len(refused) == 46
    with GpuLedger.open(url) as ledger:
        held = [h.device_uuid for h in ledger.holdings()]
    assert sorted(held) == sorted(uuid for uuids in granted for uuid in uuids) == ["GPU-0", "GPU-1", "GPU-2", "GPU-3"]


def a_course_cap_holds_under_a_race(url: str) -> None:
    """The course may hold 2 GPUs at once: 10 students racing, each through a ledger of their own, get 2."""
    with GpuLedger.open(url) as admin:
        admin.set_course_quota(COURSE, max_concurrent_gpus=2, gpu_hours_per_student=None, actor="tests")
        opened: list[GpuLedger] = []
        lock = threading.Lock()

        def own_ledger() -> GpuLedger:
            ledger = GpuLedger.open(url)
            with lock:
                opened.append(ledger)
            return ledger

        outcomes = _race(own_ledger, [f"capped-{n}" for n in range(10)])
        for ledger in opened:
            ledger.close()
        granted = [o for o in outcomes if isinstance(o, Allocation)]
        assert len(granted) == 2, outcomes
        assert {o.status for o in outcomes if isinstance(o, AllocationRefused)} == {429}
        assert len(admin.holdings()) == 2
