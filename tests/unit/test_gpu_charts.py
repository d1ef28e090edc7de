"""The admins' GPU charts: series from the ledger's intervals (spawner/gpu/charts.py, a given clock), the
ledger's intervals themselves, and the chart library served from the repository, unchanged."""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta, timezone

from spawner.gpu import GpuLedger
from spawner.gpu.charts import Span, held_over_time, term_usage
from spawner.services.gpu import VENDORED
from spawner.services.hubpage import STATIC_DIR

UTC = timezone.utc


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def test_gpu_hours_add_up_day_by_day_from_the_start_of_each_courses_term():
    spans = [
        Span("dl", at(2, 10), at(2, 12)),  # 2 h on day 2
        Span("dl", at(3, 23), at(4, 1)),  # 1 h on day 3, 1 h on day 4
        Span("dl", at(4, 20), None),  # still held: counts up to now
        Span("dl", at(1, 0) - timedelta(hours=5), at(1, 1)),  # before the term: only its last hour counts
        Span("cv", at(3, 0), at(3, 3)),
    ]
    chart = term_usage(
        spans, terms={"dl": (date(2026, 11, 1), date(2027, 2, 28)), "cv": (date(2026, 11, 3), date(2026, 11, 3))}, now=at(4, 22)
    )
    assert chart["days"] == [int(at(day).timestamp()) for day in (1, 2, 3, 4)]
    assert chart["series"]["dl"] == [1.0, 3.0, 4.0, 7.0]  # day 4: 1 h after midnight, 2 h held until now
    assert chart["series"]["cv"] == [0.0, 0.0, 3.0, 3.0]  # its one-day term ended: it stays at 3


def test_no_gpu_course_means_an_empty_chart():
    assert term_usage([], terms={}, now=at(4)) == {"days": [], "series": {}}


def test_gpus_held_over_the_last_day_per_course_and_in_total():
    now = at(10, 12)
    spans = [Span("dl", at(10, 11), None), Span("dl", at(10, 11, 30), at(10, 11, 45)), Span("cv", at(9, 0), at(9, 13))]
    chart = held_over_time(spans, courses=["dl", "cv", "idle-course"], now=now, step=timedelta(minutes=15))
    times = [datetime.fromtimestamp(t, UTC) for t in chart["times"]]
    assert times[0] == now - timedelta(days=1) and times[-1] == now and len(times) == 97
    value = {moment: index for index, moment in enumerate(times)}
    assert chart["series"]["cv"][value[at(9, 12, 45)]] == 1 and chart["series"]["cv"][value[at(9, 13)]] == 0
    assert chart["series"]["dl"][value[at(10, 11, 30)]] == 2 and chart["series"]["dl"][value[at(10, 11, 45)]] == 1
    assert chart["series"]["idle-course"] == [0] * 97
    assert chart["total"][value[at(10, 11, 30)]] == 2 and max(chart["total"]) == 2


def test_the_ledger_hands_out_the_intervals_that_overlap_a_window(tmp_path):
    clock = {"now": at(5, 9)}
    ledger = GpuLedger.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}", clock=lambda: clock["now"])
    from spawner.gpu import GpuDevice

    devices = [GpuDevice(uuid="GPU-a", index=0, model="m", memory_bytes=1)]
    ledger.allocate(
        username="ann",
        course="dl",
        server_name="dl",
        count=1,
        devices=devices,
        term_start=date(2026, 11, 1),
        term_end=date(2027, 1, 1),
    )
    clock["now"] = at(5, 11)
    ledger.release(username="ann", server_name="dl", reason="stopped")
    clock["now"] = at(6, 8)
    ledger.allocate(
        username="bo",
        course="dl",
        server_name="dl",
        count=1,
        devices=devices,
        term_start=date(2026, 11, 1),
        term_end=date(2027, 1, 1),
    )
    found = ledger.usage_intervals(since=at(5, 10))
    assert [(i.username, i.started_at, i.ended_at) for i in found] == [("ann", at(5, 9), at(5, 11)), ("bo", at(6, 8), None)]
    assert [i.username for i in ledger.usage_intervals(since=at(5, 12))] == ["bo"]
    assert ledger.usage_intervals(since=at(5, 0), until=at(5, 8)) == []
    ledger.close()


def test_the_chart_library_is_the_vendored_release_unchanged():
    for name, digest in VENDORED.items():
        assert hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest() == digest, (
            f"{name} changed: see static/uplot/README.md"
        )
    assert "MIT" in (STATIC_DIR / "uplot" / "LICENSE").read_text()
