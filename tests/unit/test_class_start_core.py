"""The parts of a class start that are plain logic: the admission queue, the timetable, the warm plan, the
warm records (real SQLite), the warmer's decisions and the metrics' exposition.

The warmer talks to a ``StandInHub`` here (named: an in-memory answer to the four REST calls it makes);
tests/hub runs the same warmer as the lab's service against the real hub.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from spawner.catalog import load_catalog
from spawner.catalog.cache import CatalogCache
from spawner.catalog.timetable import Session, due_for_warming, occurrences
from spawner.core.problems import ProblemsError
from spawner.hub.admission import Admission, ordinal
from spawner.hub.metrics import SPAWN_SECONDS, LabCollector
from spawner.hubclient import HubRefused
from spawner.prewarm.planner import plan_warm
from spawner.prewarm.records import WarmRecords
from spawner.services.warmer import Warmer, WarmSettings, was_opened
from support.catalogs import copy_course

VIENNA = ZoneInfo("Europe/Vienna")
GIB = 2**30


# -- admission ----------------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ordinals():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th",
    ]  # fmt: skip


def test_admission_boots_a_few_at_a_time_in_arrival_order():
    clock = Clock()
    admission = Admission(2, clock=clock)
    tickets = [admission.join(f"student{n}/intro-python", "intro-python") for n in range(5)]
    assert [ticket.admitted.is_set() for ticket in tickets] == [True, True, False, False, False]
    assert [admission.position(ticket) for ticket in tickets] == [0, 0, 1, 2, 3]
    assert admission.waiting("intro-python") == 3 and admission.waiting("other") == 0 and admission.booting() == 2
    # Rounds of two slots at the first estimate (8 s): the 3rd waiting start boots in the second round.
    assert admission.describe(tickets[4]) == "3rd in line, about 16 s"
    clock.now = 4.0
    admission.leave(tickets[1], booted=True)  # a boot that took 4 s pulls the estimate down
    assert tickets[2].admitted.is_set() and not tickets[3].admitted.is_set()
    assert admission.boot_estimate == pytest.approx(0.8 * 8 + 0.2 * 4)
    admission.leave(tickets[3], booted=False)  # gave up while waiting: out of the line, estimate unchanged
    assert admission.position(tickets[4]) == 1 and admission.boot_estimate == pytest.approx(7.2)
    admission.leave(tickets[0], booted=False)  # a failed boot frees its slot without teaching the estimate
    assert tickets[4].admitted.is_set() and admission.boot_estimate == pytest.approx(7.2)


def test_a_waiting_start_is_told_its_place_as_it_moves_up():
    async def scenario():
        admission = Admission(1)
        first = admission.join("a/c", "c")
        second = admission.join("b/c", "c")
        third = admission.join("d/c", "c")
        told: list[str] = []
        waiting = asyncio.ensure_future(admission.wait(third, told.append, every=0.01))
        await asyncio.sleep(0.05)
        admission.leave(first, booted=True)
        await asyncio.sleep(0.05)
        admission.leave(second, booted=True)
        await asyncio.wait_for(waiting, 1)
        return told

    told = asyncio.run(scenario())
    assert [line.split(",")[0] for line in told] == ["2nd in line", "1st in line"]


def test_admission_needs_a_slot():
    with pytest.raises(ValueError):
        Admission(0)


# -- timetable ----------------------------------------------------------------------------------------
TUESDAY_LECTURE = Session(weekday="tuesday", start=time(10, 15), minutes=90)


def test_occurrences_are_in_the_labs_time_zone():
    # 2026-11-17 is a Tuesday; 09:00 UTC is 10:00 in Vienna (CET, UTC+1).
    now = datetime(2026, 11, 17, 9, 0, tzinfo=timezone.utc)
    (lecture,) = occurrences("intro-python", [TUESDAY_LECTURE], now, VIENNA)
    assert lecture.starts == datetime(2026, 11, 17, 10, 15, tzinfo=VIENNA)
    assert lecture.ends - lecture.starts == timedelta(minutes=90)
    assert due_for_warming(lecture, now, timedelta(minutes=20))  # 15 minutes before
    assert not due_for_warming(lecture, now, timedelta(minutes=10))
    assert due_for_warming(lecture, lecture.ends - timedelta(seconds=1), timedelta(minutes=10))
    assert not due_for_warming(lecture, lecture.ends, timedelta(minutes=10))


def test_a_session_just_after_midnight_is_found_the_evening_before():
    late = Session(weekday="wednesday", start=time(0, 10), minutes=60)
    now = datetime(2026, 11, 17, 23, 55, tzinfo=VIENNA)  # Tuesday, just before midnight
    (session,) = occurrences("night-lab", [late], now, VIENNA)
    assert session.starts == datetime(2026, 11, 18, 0, 10, tzinfo=VIENNA)
    assert due_for_warming(session, now, timedelta(minutes=20))


def test_no_occurrence_on_other_days():
    assert occurrences("intro-python", [TUESDAY_LECTURE], datetime(2026, 11, 20, 9, tzinfo=timezone.utc), VIENNA) == []


# -- plan ---------------------------------------------------------------------------------------------
def test_the_warm_plan_skips_running_and_warmed_and_stays_in_budget():
    plan = plan_warm(
        enrolled=["eve", "bob", "alice", "carol", "dave"],
        running=["bob"],
        already_warmed=["carol"],
        memory_per_server=GIB,
        budget_bytes=4 * GIB,
        warm_memory_in_use=2 * GIB,
    )
    assert plan.start == ("alice", "dave") and plan.over_budget == ("eve",)
    nothing = plan_warm(
        enrolled=["a"], running=[], already_warmed=[], memory_per_server=GIB, budget_bytes=GIB, warm_memory_in_use=3 * GIB
    )
    assert nothing.start == () and nothing.over_budget == ("a",)


# -- records ------------------------------------------------------------------------------------------
def test_a_server_is_warmed_once_per_session_and_its_outcome_counted(tmp_path):
    records = WarmRecords.open(f"sqlite:///{tmp_path / 'records.sqlite'}")
    session = datetime(2026, 11, 17, 9, 15, tzinfo=timezone.utc)
    now = session - timedelta(minutes=10)
    assert records.claim(username="alice", course="intro-python", session_start=session, memory_bytes=GIB, now=now)
    assert not records.claim(username="alice", course="intro-python", session_start=session, memory_bytes=GIB, now=now)
    assert records.claim(username="bob", course="intro-python", session_start=session, memory_bytes=GIB, now=now)
    assert records.warmed("intro-python", session.astimezone(VIENNA)) == {"alice", "bob"}  # the same instant
    alice, bob = records.undecided()
    assert (alice.username, alice.session_start, alice.memory_bytes) == ("alice", session, GIB)
    records.decide(alice.id, "used")
    assert records.outcome_counts() == {("intro-python", "used"): 1.0, ("intro-python", "waiting"): 1.0}
    with pytest.raises(ValueError, match="outcome must be one of"):
        records.decide(bob.id, "forgotten")
    records.close()
    # The migrations are idempotent: the lab's services open the same database again.
    assert [record.username for record in WarmRecords.open(f"sqlite:///{tmp_path / 'records.sqlite'}").undecided()] == ["bob"]


def test_a_warm_server_counts_as_opened_after_activity_past_its_start():
    started = "2026-11-17T09:05:00.000000Z"
    assert not was_opened({"started": started, "last_activity": "2026-11-17T09:05:10.000000Z"})  # its own boot
    assert was_opened({"started": started, "last_activity": "2026-11-17T09:16:00.000000Z"})
    assert not was_opened({"started": started, "last_activity": None})
    assert not was_opened({})


# -- the warmer's decisions ---------------------------------------------------------------------------
class StandInHub:
    """In-memory answers to the warmer's REST calls (``HubApi``): users, groups, starts and stops."""

    def __init__(self, users: dict[str, dict], groups: dict[str, list[str]], refuse: dict[str, str] | None = None):
        self.users = users
        self.groups = groups
        self.refuse = refuse or {}
        self.started: list[tuple[str, str]] = []
        self.stopped: list[tuple[str, str]] = []

    async def user(self, name):
        return self.users.get(name)

    async def group_members(self, group):
        return list(self.groups.get(group, []))

    async def start_server(self, user, server):
        if user in self.refuse:
            raise HubRefused(403, self.refuse[user])
        self.started.append((user, server))
        self.users[user].setdefault("servers", {})[server] = {"started": "2026-11-17T09:05:00Z", "last_activity": None}

    async def stop_server(self, user, server):
        self.stopped.append((user, server))
        self.users[user]["servers"].pop(server)


@pytest.fixture
def warm_catalog(tmp_path, repo_root):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    copy_course(
        repo_root,
        "intro-python",
        catalog,
        students={"groups": ["cs101-students"], "users": ["listed", "never-seen"]},
        instructors={"users": ["prof-lee"], "groups": []},
        resources={"cpu": 1, "memory": "1G"},
        sessions=[{"weekday": "tuesday", "start": "10:15", "minutes": 90}],
    )
    return catalog


def make_warmer(warm_catalog, tmp_path, hub, now, *, budget=3 * GIB):
    return Warmer(
        hub=hub,
        records=WarmRecords.open(f"sqlite:///{tmp_path / 'records.sqlite'}"),
        catalog_cache=CatalogCache.for_root(warm_catalog),
        settings=WarmSettings(
            lead=timedelta(minutes=10), grace=timedelta(minutes=15), budget_bytes=budget, stagger_seconds=0, zone=VIENNA
        ),
        today=lambda: date(2026, 11, 17),
        clock=lambda: now[0],
    )


def test_the_warmer_starts_the_known_students_before_the_session_and_stops_the_unused_after_it(warm_catalog, tmp_path):
    hub = StandInHub(
        users={name: {"name": name} for name in ("listed", "alice", "bob", "carol", "prof-lee")},
        groups={"cs101-students": ["alice", "bob", "carol", "prof-lee"]},
        refuse={"carol": "carol's access to Introduction to Python was revoked"},
    )
    hub.users["bob"]["servers"] = {"intro-python": {"started": "2026-11-17T08:00:00Z", "last_activity": None}}
    session = datetime(2026, 11, 17, 10, 15, tzinfo=VIENNA)
    now = [session - timedelta(minutes=30)]
    warmer = make_warmer(warm_catalog, tmp_path, hub, now)
    asyncio.run(warmer.tick())
    assert hub.started == []  # 30 minutes before: too early
    now[0] = session - timedelta(minutes=9)
    asyncio.run(warmer.tick())
    # Known students only (never-seen has no hub user), not the instructor, not bob (already running),
    # carol refused by the hub (her start would be refused for her too).
    assert sorted(hub.started) == [("alice", "intro-python"), ("listed", "intro-python")]
    asyncio.run(warmer.tick())
    assert len(hub.started) == 2  # once per session
    assert warmer.records.outcome_counts() == {("intro-python", "waiting"): 2.0, ("intro-python", "refused"): 1.0}
    # alice opens hers during class; listed never comes.
    hub.users["alice"]["servers"]["intro-python"]["last_activity"] = "2026-11-17T09:20:00Z"
    now[0] = session + timedelta(minutes=14)
    asyncio.run(warmer.tick())
    assert hub.stopped == []  # the grace has not passed
    now[0] = session + timedelta(minutes=16)
    asyncio.run(warmer.tick())
    assert hub.stopped == [("listed", "intro-python")]
    assert warmer.records.outcome_counts() == {
        ("intro-python", "used"): 1.0,
        ("intro-python", "wasted"): 1.0,
        ("intro-python", "refused"): 1.0,
    }


def test_a_server_warmed_during_the_session_gets_its_whole_grace(warm_catalog, tmp_path):
    """The lab came up twenty minutes into class: the servers it warms then are not stopped at the next tick."""
    hub = StandInHub(users={"alice": {"name": "alice"}}, groups={"cs101-students": ["alice"]})
    session = datetime(2026, 11, 17, 10, 15, tzinfo=VIENNA)
    now = [session + timedelta(minutes=20)]
    warmer = make_warmer(warm_catalog, tmp_path, hub, now)
    asyncio.run(warmer.tick())
    assert hub.started == [("alice", "intro-python")]
    now[0] += timedelta(minutes=14)
    asyncio.run(warmer.tick())
    assert hub.stopped == []
    now[0] += timedelta(minutes=2)
    asyncio.run(warmer.tick())
    assert hub.stopped == [("alice", "intro-python")]


def test_the_warmer_stays_within_the_memory_budget(warm_catalog, tmp_path):
    names = [f"student{n:02d}" for n in range(5)]
    hub = StandInHub(users={name: {"name": name} for name in names}, groups={"cs101-students": names})
    session = datetime(2026, 11, 17, 10, 15, tzinfo=VIENNA)
    warmer = make_warmer(warm_catalog, tmp_path, hub, [session - timedelta(minutes=5)], budget=3 * GIB)
    asyncio.run(warmer.tick())
    assert [name for name, _ in hub.started] == names[:3]  # 1G each within 3G


def test_the_warmer_leaves_a_course_outside_its_term_alone(warm_catalog, tmp_path):
    hub = StandInHub(users={"alice": {"name": "alice"}}, groups={"cs101-students": ["alice"]})
    session = datetime(2026, 11, 17, 10, 15, tzinfo=VIENNA)
    warmer = make_warmer(warm_catalog, tmp_path, hub, [session - timedelta(minutes=5)])
    warmer.today = lambda: date(2027, 9, 1)
    asyncio.run(warmer.tick())
    assert hub.started == []


def test_sessions_in_course_yaml_are_checked_by_the_schema(warm_catalog):
    course = load_catalog(warm_catalog).courses["intro-python"]
    assert course.sessions == (Session("tuesday", time(10, 15), 90),)
    path = warm_catalog / "intro-python" / "course.yaml"
    path.write_text(path.read_text().replace("start: '10:15'", "start: '25:00'"))
    with pytest.raises(ProblemsError) as problems:
        load_catalog(warm_catalog)
    assert "sessions" in str(problems.value.problems[0])


# -- metrics ------------------------------------------------------------------------------------------
def test_the_lab_gauges_are_exposed_in_prometheus_format():
    registry = CollectorRegistry()
    values = {
        "teachlab_spawn_queue_length": {("intro-python",): 12.0},
        "teachlab_servers_running": {("intro-python",): 38.0, ("data-analysis",): 0.0},
        "teachlab_gpus_held": {(): 3.0},
        "teachlab_gpus_free": {(): 5.0},
        "teachlab_gpu_hours_used": {("deep-learning",): 41.5},
        "teachlab_warm_servers": {("intro-python", "used"): 40.0, ("intro-python", "wasted"): 6.0},
    }
    registry.register(LabCollector(lambda: values))
    text = generate_latest(registry).decode()
    assert 'teachlab_spawn_queue_length{course="intro-python"} 12.0' in text
    assert 'teachlab_servers_running{course="data-analysis"} 0.0' in text
    assert "teachlab_gpus_free 5.0" in text and "teachlab_gpus_held 3.0" in text
    assert 'teachlab_gpu_hours_used{course="deep-learning"} 41.5' in text
    assert 'teachlab_warm_servers{course="intro-python",outcome="wasted"} 6.0' in text
    empty = CollectorRegistry()
    empty.register(LabCollector(dict))
    assert "# TYPE teachlab_gpus_free gauge" in generate_latest(empty).decode()  # declared before any value


def test_the_grafana_dashboard_shows_only_metrics_the_lab_serves(repo_root):
    dashboard = json.loads((repo_root / "deploy" / "grafana" / "teachlab-class-start.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expression in expressions for name in re.findall(r"teachlab_[a-z_]+", expression)}
    histogram = SPAWN_SECONDS._name
    served = set(LabCollector.DESCRIPTIONS) | {f"{histogram}_{suffix}" for suffix in ("bucket", "count", "sum")}
    assert used and used <= served, used - served
    assert set(LabCollector.DESCRIPTIONS) <= used  # every gauge has a panel
