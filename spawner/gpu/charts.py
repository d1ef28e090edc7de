"""Series for the admins' GPU charts, from the ledger's usage intervals (pure: no database, a given clock).

* ``term_usage``: GPU-hours used per course, summed day by day from the start of the term: one value per
  day up to today, so the chart shows how fast each course spends its hours.
* ``held_over_time``: how many GPUs each course held at each step of the last day (a sample every few
  minutes), and in total; the inventory's size is the ceiling.

Times go out as Unix seconds (what the chart library plots); hours are rounded to 0.001.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from .quotas import term_window

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class Span:
    """Who held a device from when to when (``end`` None: still held)."""

    course: str
    start: datetime
    end: datetime | None


def _overlap(span: Span, since: datetime, until: datetime) -> float:
    start = max(span.start, since)
    end = until if span.end is None else min(span.end, until)
    return max(0.0, (end - start).total_seconds())


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def term_usage(spans: Iterable[Span], *, terms: Mapping[str, tuple[date, date]], now: datetime) -> dict:
    """Cumulative GPU-hours per course at the end of each day of the term, up to ``now``.

    ``terms`` gives each course's term; days run from the earliest term start to the end of today (or of
    the latest term, if earlier). Usage outside a course's own term does not count, as for quotas."""
    spans = list(spans)
    if not terms:
        return {"days": [], "series": {}}
    windows = {course: term_window(start, end) for course, (start, end) in terms.items()}
    first = min(start for start, _ in windows.values())
    now = now.astimezone(timezone.utc)
    end_of_today = datetime.combine(now.date() + timedelta(days=1), time(0), tzinfo=timezone.utc)
    last = min(max(end for _, end in windows.values()), end_of_today)
    day_ends = []
    moment = first + timedelta(days=1)
    while moment <= last:
        day_ends.append(moment)
        moment += timedelta(days=1)
    series: dict[str, list[float]] = {}
    for course in sorted(windows):
        start, end = windows[course]
        own = [span for span in spans if span.course == course]
        values = []
        for day_end in day_ends:
            until = min(day_end, end, now)
            seconds = sum(_overlap(span, start, until) for span in own) if until > start else 0.0
            values.append(round(seconds / SECONDS_PER_HOUR, 3))
        series[course] = values
    return {"days": [_epoch(day_end - timedelta(days=1)) for day_end in day_ends], "series": series}


def held_over_time(
    spans: Iterable[Span],
    *,
    courses: Sequence[str],
    now: datetime,
    window: timedelta = timedelta(days=1),
    step: timedelta = timedelta(minutes=5),
) -> dict:
    """GPUs held per course (and in total) at each step of the last ``window``, ending at ``now``."""
    spans = list(spans)
    count = int(window / step)
    times = [now - window + step * index for index in range(count + 1)]
    series: dict[str, list[int]] = {}
    for course in sorted(set(courses) | {span.course for span in spans}):
        own = [span for span in spans if span.course == course]
        series[course] = [
            sum(1 for span in own if span.start <= moment and (span.end is None or span.end > moment)) for moment in times
        ]
    total = [sum(values[index] for values in series.values()) for index in range(len(times))]
    return {"times": [_epoch(moment) for moment in times], "series": series, "total": total}
