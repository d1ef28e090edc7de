import sqlite3
import tempfile
from datetime import date, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import create_engine, event

from spawner.gpu import (
    Allocation,
    AllocationRefused,
    EffectiveQuota,
    GpuLedger,
    QuotaError,
    UsageRow,
)
from spawner.gpu.ledger import VERSION_TABLE, metadata
from support.ledger_races import (
    COURSE,
    DEVICES,
    IN_USE,
    a_course_cap_holds_under_a_race,
    fifty_threads_never_share_a_device,
    two_processes_never_share_a_device,
)

TERM = (date(2025, 9, 1), date(2025, 12, 20))
NEXT_TERM = (date(2026, 1, 15), date(2026, 5, 31))
START = datetime(2025, 10, 1, 9, 0, tzinfo=timezone.utc)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "gpu-ledger.sqlite"


@pytest.fixture
def ledger(ledger_path, clock):
    with GpuLedger.open(f"sqlite:///{ledger_path}", clock) as ledger:
        yield ledger


def allocate(
    ledger: GpuLedger, username: str, course: str = COURSE, count: int = 1, term: tuple[date, date] = TERM
) -> Allocation:
    return ledger.allocate(
        username=username,
        course=course,
        server_name=course,
        count=count,
        devices=DEVICES,
        term_start=term[0],
        term_end=term[1],
        container_name=f"teachlab-{username}---{course}",
    )


# Schema and migrations


def test_open_migrates_an_empty_database_to_head(ledger_path, clock):
    GpuLedger.open(f"sqlite:///{ledger_path}", clock).close()
    tables = {row[0] for row in sqlite3.connect(ledger_path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {
        VERSION_TABLE,
        "gpu_holdings",
        "gpu_usage_intervals",
        "gpu_course_quotas",
        "gpu_user_overrides",
        "gpu_audit_log",
    }
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert sqlite3.connect(ledger_path).execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [(head,)]


def test_open_twice_keeps_the_data(ledger_path, clock):
    with GpuLedger.open(f"sqlite:///{ledger_path}", clock) as first:
        allocate(first, "alice")
    with GpuLedger.open(f"sqlite:///{ledger_path}", clock) as second:
        assert [h.username for h in second.holdings()] == ["alice"]
    assert sqlite3.connect(ledger_path).execute(f"SELECT count(*) FROM {VERSION_TABLE}").fetchone() == (1,)


def test_the_migrations_create_exactly_the_tables_the_ledger_uses(ledger, ledger_path):
    with create_engine(f"sqlite:///{ledger_path}").connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []


def test_a_database_file_is_required():
    with pytest.raises(ValueError, match="needs a database file"):
        GpuLedger.open("sqlite://")


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "spawner.gpu:migrations")
    return config


# Allocation


def test_lowest_index_first_and_times_are_utc(ledger):
    allocation = allocate(ledger, "alice", count=2)
    assert allocation.device_uuids == ("GPU-0", "GPU-1")
    assert allocation.since == START and not allocation.already_held
    holding = ledger.holdings()[0]
    assert (holding.username, holding.course, holding.server_name) == ("alice", COURSE, COURSE)
    assert holding.container_name == "teachlab-alice---deep-learning"
    assert holding.since.tzinfo == timezone.utc


def test_allocate_is_idempotent_per_server(ledger, clock):
    first = allocate(ledger, "alice")
    clock.advance(minutes=5)
    again = allocate(ledger, "alice")
    assert again.device_uuids == first.device_uuids and again.since == first.since and again.already_held
    assert allocate(ledger, "alice", course="vision").device_uuids == ("GPU-1",)
    assert len(ledger.holdings()) == 2


def test_a_naive_clock_is_refused(ledger_path):
    with GpuLedger.open(f"sqlite:///{ledger_path}", clock=lambda: datetime(2025, 10, 1)) as ledger:
        with pytest.raises(ValueError, match="timezone-aware"):
            allocate(ledger, "alice")


@pytest.mark.parametrize(
    "steps, requested, expected",
    [
        pytest.param(
            [("course quota", 2, None), ("holds", "bob", COURSE), ("holds", "carol", COURSE)],
            1,
            (429, "deep-learning may hold at most 2 GPUs at once and all 2 are in use; try again later"),
            id="course-cap-reached",
        ),
        pytest.param(
            [("course quota", 2, None), ("holds", "bob", "vision"), ("holds", "carol", "vision")],
            1,
            None,
            id="course-cap-counts-only-its-course",
        ),
        pytest.param(
            [("override", None, 1)],
            2,
            (403, "you may use at most 1 GPU at once in deep-learning and its server needs 2; ask your instructor"),
            id="user-override-max-gpus",
        ),
        pytest.param(
            [("override", None, 0)],
            1,
            (403, "GPUs are switched off for you in deep-learning; ask your instructor"),
            id="user-override-switched-off",
        ),
        pytest.param(
            [("course quota", None, 1), ("override", 10, None), ("uses", "alice", 2)], 1, None, id="user-override-more-hours"
        ),
        pytest.param(
            [("course quota", None, 10), ("override", 1, None), ("uses", "alice", 2)],
            1,
            (403, "you have used 2 of 1 GPU-hours this term in deep-learning; ask your instructor for more"),
            id="user-override-fewer-hours",
        ),
        pytest.param([("course quota", None, 20), ("uses", "alice", 19.5)], 1, None, id="hours-left-mid-term"),
        pytest.param(
            [("course quota", None, 20), ("uses", "alice", 19.5), ("uses", "alice", 1)],
            1,
            (403, "you have used 20.5 of 20 GPU-hours this term in deep-learning; ask your instructor for more"),
            id="hours-exhausted-mid-term",
        ),
        pytest.param([("course quota", None, 1), ("uses", "bob", 5)], 1, None, id="classmates-hours-not-counted"),
        pytest.param([("course quota", None, 20), ("uses", "alice", 25), ("new term",)], 1, None, id="term-rollover"),
        pytest.param([("holds", user, "vision") for user in ("bob", "carol", "dan", "erin")], 1, (503, IN_USE), id="host-full"),
    ],
)
def test_quotas(ledger, clock, steps, requested, expected):
    term = TERM
    for step in steps:
        if step[0] == "course quota":
            ledger.set_course_quota(COURSE, max_concurrent_gpus=step[1], gpu_hours_per_student=step[2], actor="admin")
        elif step[0] == "override":
            ledger.set_user_override("alice", COURSE, gpu_hours=step[1], max_gpus=step[2], actor="admin")
        elif step[0] == "holds":
            allocate(ledger, step[1], course=step[2])
        elif step[0] == "uses":
            allocate(ledger, step[1])
            clock.advance(hours=step[2])
            ledger.release(username=step[1], server_name=COURSE, reason="stopped")
        elif step[0] == "new term":
            clock.now = datetime(2026, 2, 1, 9, 0, tzinfo=timezone.utc)
            term = NEXT_TERM
    if expected is None:
        assert len(allocate(ledger, "alice", count=requested, term=term).device_uuids) == requested
    else:
        with pytest.raises(AllocationRefused) as refused:
            allocate(ledger, "alice", count=requested, term=term)
        assert (refused.value.status, refused.value.reason) == expected
        assert str(refused.value) == expected[1]


def test_open_usage_counts_up_to_now_and_only_inside_the_term(ledger, clock):
    ledger.set_course_quota(COURSE, max_concurrent_gpus=None, gpu_hours_per_student=10, actor="admin")
    clock.now = datetime(2026, 1, 14, 20, 0, tzinfo=timezone.utc)
    allocate(ledger, "alice", count=2)
    clock.now = datetime(2026, 1, 15, 2, 0, tzinfo=timezone.utc)
    assert ledger.remaining_gpu_hours(
        username="alice", course=COURSE, term_start=NEXT_TERM[0], term_end=NEXT_TERM[1]
    ) == pytest.approx(10 - 2 * 2)
    assert ledger.usage_seconds(
        username="alice", course=COURSE, since=datetime(2026, 1, 14, tzinfo=timezone.utc), until=clock.now
    ) == pytest.approx(2 * 6 * 3600)
    assert ledger.remaining_gpu_hours(username="bob", course="vision", term_start=NEXT_TERM[0], term_end=NEXT_TERM[1]) is None


def test_usage_report_sums_per_course_and_student(ledger, clock):
    for username, course, hours in [("alice", COURSE, 2), ("bob", COURSE, 1), ("alice", "vision", 0.5)]:
        allocate(ledger, username, course=course)
        clock.advance(hours=hours)
        ledger.release(username=username, server_name=course, reason="stopped")
    allocate(ledger, "carol")
    clock.advance(hours=1)
    assert [(row.course, row.username, row.gpu_seconds) for row in ledger.usage_report()] == [
        (COURSE, "alice", 7200.0),
        (COURSE, "bob", 3600.0),
        (COURSE, "carol", 3600.0),
        ("vision", "alice", 1800.0),
    ]
    assert [row.username for row in ledger.usage_report(course="vision")] == ["alice"]
    assert ledger.usage_report(since=clock.now - timedelta(minutes=30)) == [UsageRow(COURSE, "carol", 1800.0)]


def test_a_clock_going_back_never_makes_usage_negative(ledger, clock):
    allocate(ledger, "alice")
    clock.advance(hours=-1)
    ledger.release(username="alice", server_name=COURSE, reason="stopped")
    assert [row.gpu_seconds for row in ledger.usage_report(until=START + timedelta(days=1))] == [0.0]


def test_the_unique_device_constraint_stops_a_writer_that_skips_the_lock(ledger):
    """Simulate a writer outside the ledger taking GPU-0 between allocate's read and its write."""

    def sneak_in(connection, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO gpu_holdings"):
            cursor.execute(
                "INSERT INTO gpu_holdings (device_uuid, username, course, server_name, since) "
                "VALUES ('GPU-0', 'intruder', 'vision', 'vision', '2025-10-01 09:00:00')"
            )

    event.listen(ledger._engine, "before_cursor_execute", sneak_in)
    with pytest.raises(AllocationRefused) as refused:
        allocate(ledger, "alice")
    event.remove(ledger._engine, "before_cursor_execute", sneak_in)
    assert refused.value.status == 503
    assert ledger.holdings() == []


# Release


def test_release_is_idempotent_and_closes_usage(ledger, clock):
    allocate(ledger, "alice", count=2)
    clock.advance(hours=1)
    assert ledger.release(username="alice", server_name=COURSE, reason="stopped") == ["GPU-0", "GPU-1"]
    assert ledger.release(username="alice", server_name=COURSE, reason="stopped") == []
    assert ledger.holdings() == []
    assert ledger.usage_seconds(username="alice", course=COURSE, since=START, until=START + timedelta(days=30)) == 7200.0
    assert ledger.audit_log() == []
    assert allocate(ledger, "bob").device_uuids == ("GPU-0",)


def test_a_manual_release_is_audited_once(ledger, clock):
    allocate(ledger, "alice")
    clock.advance(minutes=10)
    for _ in range(2):
        ledger.release(username="alice", server_name=COURSE, reason="kernel hung on the GPU", actor="admin-ann")
    [entry] = ledger.audit_log()
    assert (entry.at, entry.actor, entry.action, entry.target) == (
        START + timedelta(minutes=10),
        "admin-ann",
        "release",
        "alice/deep-learning",
    )
    assert (entry.old_value, entry.new_value, entry.reason) == (["GPU-0"], None, "kernel hung on the GPU")


# Reconcile


def test_reconcile_releases_holdings_no_container_confirms(ledger, clock):
    allocate(ledger, "alice")  # GPU-0: container gone
    allocate(ledger, "bob")  # GPU-1: container now has GPU-3 instead
    allocate(ledger, "carol")  # GPU-2: confirmed
    clock.advance(hours=1)
    allocate(ledger, "dan", course="vision")  # GPU-3: just allocated, container not created yet
    report = ledger.reconcile({("bob", COURSE): ["GPU-3"], ("carol", COURSE): ["GPU-2"]})
    assert [(h.username, h.device_uuid) for h in report.released] == [("alice", "GPU-0"), ("bob", "GPU-1")]
    assert [(h.username, h.device_uuid) for h in report.pending] == [("dan", "GPU-3")]
    assert [(c.device_uuid, c.servers) for c in report.conflicts] == [("GPU-3", (("bob", COURSE), ("dan", "vision")))]
    assert report.added == () and report.changed
    assert sorted((h.username, h.device_uuid) for h in ledger.holdings()) == [("carol", "GPU-2"), ("dan", "GPU-3")]
    assert ledger.usage_seconds(username="alice", course=COURSE, since=START, until=clock.now + timedelta(hours=5)) == 3600


def test_reconcile_adds_what_containers_hold(ledger, clock):
    allocate(ledger, "alice")
    clock.advance(hours=1)
    running = {
        ("alice", COURSE): ["GPU-0"],
        ("bob", "vision"): ["GPU-2", "GPU-3"],
        ("carol", COURSE): ["GPU-1"],
        ("dan", COURSE): ["GPU-1"],
    }
    report = ledger.reconcile(running)
    assert [(h.username, h.course, h.device_uuid, h.since) for h in report.added] == [
        ("bob", "vision", "GPU-2", clock.now),
        ("bob", "vision", "GPU-3", clock.now),
    ]
    assert [(c.device_uuid, c.servers) for c in report.conflicts] == [("GPU-1", (("carol", COURSE), ("dan", COURSE)))]
    assert report.released == () and report.pending == ()
    assert sorted(h.device_uuid for h in ledger.holdings()) == ["GPU-0", "GPU-2", "GPU-3"]
    clock.advance(hours=2)
    assert ledger.usage_seconds(username="bob", course="vision", since=START, until=clock.now) == 2 * 2 * 3600
    assert not ledger.reconcile(running).changed


def test_reconcile_releases_an_old_holding_without_a_container(ledger, clock):
    allocate(ledger, "alice")
    clock.advance(minutes=9)
    assert ledger.reconcile({}).pending and ledger.holdings()
    clock.advance(minutes=2)
    assert [h.username for h in ledger.reconcile({}).released] == ["alice"]


# Quotas and audit


def test_quota_for_combines_course_and_override(ledger, clock):
    assert ledger.quota_for("alice", COURSE) == EffectiveQuota()
    ledger.set_course_quota(COURSE, max_concurrent_gpus=4, gpu_hours_per_student=20, actor="ann")
    clock.advance(minutes=1)
    ledger.set_user_override("alice", COURSE, gpu_hours=None, max_gpus=1, actor="ann")
    assert ledger.quota_for("alice", COURSE) == EffectiveQuota(max_concurrent_gpus=4, gpu_hours=20, max_gpus=1)
    clock.advance(minutes=1)
    ledger.set_user_override("alice", COURSE, gpu_hours=50, max_gpus=None, actor="ben")
    assert ledger.quota_for("alice", COURSE) == EffectiveQuota(max_concurrent_gpus=4, gpu_hours=50)
    assert ledger.quota_for("bob", COURSE) == EffectiveQuota(max_concurrent_gpus=4, gpu_hours=20)
    clock.advance(minutes=1)
    ledger.set_user_override("alice", COURSE, gpu_hours=None, max_gpus=None, actor="ben")
    ledger.set_course_quota(COURSE, max_concurrent_gpus=None, gpu_hours_per_student=30, actor="ann")
    assert ledger.quota_for("alice", COURSE) == EffectiveQuota(gpu_hours=30)
    assert [(e.actor, e.action, e.target, e.old_value, e.new_value) for e in ledger.audit_log()] == [
        (
            "ann",
            "set course quota",
            "course deep-learning",
            {"max_concurrent_gpus": 4, "gpu_hours_per_student": 20},
            {"max_concurrent_gpus": None, "gpu_hours_per_student": 30},
        ),
        ("ben", "set user override", "alice in deep-learning", {"gpu_hours": 50, "max_gpus": None}, None),
        (
            "ben",
            "set user override",
            "alice in deep-learning",
            {"gpu_hours": None, "max_gpus": 1},
            {"gpu_hours": 50, "max_gpus": None},
        ),
        ("ann", "set user override", "alice in deep-learning", None, {"gpu_hours": None, "max_gpus": 1}),
        ("ann", "set course quota", "course deep-learning", None, {"max_concurrent_gpus": 4, "gpu_hours_per_student": 20}),
    ]
    assert len(ledger.audit_log(limit=2)) == 2


def test_stored_quotas_are_listed_as_rows(ledger):
    ledger.set_course_quota("vision", max_concurrent_gpus=2, gpu_hours_per_student=None, actor="ann")
    ledger.set_course_quota(COURSE, max_concurrent_gpus=None, gpu_hours_per_student=12.5, actor="ann")
    ledger.set_user_override("bob", COURSE, gpu_hours=40, max_gpus=None, actor="ann")
    ledger.set_user_override("alice", COURSE, gpu_hours=None, max_gpus=1, actor="ann")
    assert ledger.course_quotas() == [
        {"course": COURSE, "max_concurrent_gpus": None, "gpu_hours_per_student": 12.5},
        {"course": "vision", "max_concurrent_gpus": 2, "gpu_hours_per_student": None},
    ]
    assert ledger.user_overrides() == [
        {"username": "alice", "course": COURSE, "gpu_hours": None, "max_gpus": 1},
        {"username": "bob", "course": COURSE, "gpu_hours": 40.0, "max_gpus": None},
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        pytest.param(
            lambda ledger: ledger.set_course_quota(COURSE, max_concurrent_gpus=-1, gpu_hours_per_student=None, actor="a"),
            "max_concurrent_gpus for deep-learning must be a whole number >= 0, or empty for no limit, not -1",
            id="negative-cap",
        ),
        pytest.param(
            lambda ledger: ledger.set_course_quota(COURSE, max_concurrent_gpus=1.5, gpu_hours_per_student=None, actor="a"),
            "max_concurrent_gpus for deep-learning must be a whole number",
            id="fractional-cap",
        ),
        pytest.param(
            lambda ledger: ledger.set_course_quota(
                COURSE, max_concurrent_gpus=None, gpu_hours_per_student=float("inf"), actor="a"
            ),
            "gpu_hours_per_student for deep-learning must be a number of hours >= 0",
            id="infinite-hours",
        ),
        pytest.param(
            lambda ledger: ledger.set_user_override("alice", COURSE, gpu_hours="10", max_gpus=None, actor="a"),
            "gpu_hours for deep-learning must be a number of hours",
            id="hours-text",
        ),
        pytest.param(
            lambda ledger: ledger.set_user_override("alice", "Deep Learning", gpu_hours=1, max_gpus=None, actor="a"),
            "'Deep Learning' is not a course slug",
            id="not-a-slug",
        ),
    ],
)
def test_invalid_quotas_are_refused_with_the_fix(ledger, change, message):
    with pytest.raises(QuotaError) as caught:
        change(ledger)
    assert str(caught.value).startswith(message)
    assert ledger.audit_log() == []


# Concurrency (the same races run on PostgreSQL in tests/db)


@pytest.mark.parametrize(
    "one_ledger_per_thread", [pytest.param(False, id="shared-ledger"), pytest.param(True, id="ledger-per-thread")]
)
def test_fifty_threads_never_share_a_device(ledger_path, one_ledger_per_thread):
    fifty_threads_never_share_a_device(f"sqlite:///{ledger_path}", one_ledger_per_thread=one_ledger_per_thread)


def test_two_processes_never_share_a_device(ledger_path):
    two_processes_never_share_a_device(f"sqlite:///{ledger_path}")


def test_a_course_cap_holds_under_a_race(ledger_path):
    a_course_cap_holds_under_a_race(f"sqlite:///{ledger_path}")


# Random sequences

USERS = ["alice", "bob", "carol"]
COURSES = [COURSE, "vision"]


class LedgerMachine(RuleBasedStateMachine):
    """Random allocate / release / reconcile / clock moves against a model of who holds how many GPUs."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.TemporaryDirectory()
        self.clock = Clock(START)
        self.ledger = GpuLedger.open(f"sqlite:///{self.folder.name}/ledger.sqlite", self.clock)
        self.held: dict[tuple[str, str], tuple[str, ...]] = {}

    @rule(username=st.sampled_from(USERS), course=st.sampled_from(COURSES), count=st.integers(1, 3))
    def allocate(self, username: str, course: str, count: int) -> None:
        free = len(DEVICES) - sum(len(uuids) for uuids in self.held.values())
        outcome: Allocation | None = None
        try:
            outcome = allocate(self.ledger, username, course=course, count=count)
        except AllocationRefused as refused:
            assert refused.status == 503 and (username, course) not in self.held and count > free
            return
        if (username, course) in self.held:
            assert outcome.already_held and outcome.device_uuids == self.held[(username, course)]
        else:
            assert count <= free and len(outcome.device_uuids) == count
            self.held[(username, course)] = outcome.device_uuids

    @rule(username=st.sampled_from(USERS), course=st.sampled_from(COURSES))
    def release(self, username: str, course: str) -> None:
        released = self.ledger.release(username=username, server_name=course, reason="stopped")
        assert tuple(released) == self.held.pop((username, course), ())

    @rule(minutes=st.integers(-60, 600))
    def move_clock(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)

    @rule()
    def reconcile_with_the_truth(self) -> None:
        assert not self.ledger.reconcile(self.held).changed

    @invariant()
    def ledger_matches_the_model_and_no_device_is_held_twice(self) -> None:
        holdings = self.ledger.holdings()
        uuids = [h.device_uuid for h in holdings]
        assert len(uuids) == len(set(uuids))
        assert sorted(uuids) == sorted(uuid for held in self.held.values() for uuid in held)

    @invariant()
    def usage_is_never_negative(self) -> None:
        assert all(row.gpu_seconds >= 0 for row in self.ledger.usage_report())

    def teardown(self) -> None:
        self.ledger.close()
        self.folder.cleanup()


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)


# Quotas while a server runs


def test_a_running_server_is_stopped_when_its_gpu_hours_run_out(ledger, clock):
    ledger.set_course_quota(COURSE, max_concurrent_gpus=None, gpu_hours_per_student=2, actor="admin")
    allocate(ledger, "alice")

    def verdict():
        return ledger.running_server_verdict(
            username="alice", server_name=COURSE, course=COURSE, term_start=TERM[0], term_end=TERM[1], max_server_hours=12
        )

    clock.advance(hours=1, minutes=59)
    assert verdict() is None
    clock.advance(minutes=1)
    assert verdict() == (
        "your 2 GPU-hours for this term in deep-learning are used up, so your server was stopped; ask your instructor for more"
    )
    ledger.set_user_override("alice", COURSE, gpu_hours=10, max_gpus=None, actor="admin")
    assert verdict() is None  # an instructor's extra hours take effect at once


def test_a_gpu_server_has_a_maximum_age(ledger, clock):
    allocate(ledger, "bob")

    def verdict():
        return ledger.running_server_verdict(
            username="bob", server_name=COURSE, course=COURSE, term_start=TERM[0], term_end=TERM[1], max_server_hours=8
        )

    clock.advance(hours=7, minutes=59)
    assert verdict() is None
    clock.advance(minutes=1)
    assert "run at most 8 hours at a time" in verdict()


def test_a_server_without_gpus_has_no_verdict(ledger, clock):
    assert (
        ledger.running_server_verdict(
            username="carol", server_name=COURSE, course=COURSE, term_start=TERM[0], term_end=TERM[1], max_server_hours=1
        )
        is None
    )
