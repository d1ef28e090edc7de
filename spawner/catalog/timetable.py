"""When to warm a course's servers: the course's weekly sessions, as moments in the lab's time zone.

Pure: times in, times out; the clock is the caller's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class Session:
    """One weekly meeting of a class."""

    weekday: str
    start: time
    minutes: int

    @classmethod
    def from_yaml(cls, data: dict) -> Session:
        hours, minutes = (int(part) for part in data["start"].split(":"))
        return cls(weekday=data["weekday"], start=time(hours, minutes), minutes=int(data["minutes"]))

    def occurrence_on(self, day: date, zone: tzinfo) -> datetime | None:
        """This session's start on ``day``, if it meets that weekday."""
        if WEEKDAYS[day.weekday()] != self.weekday:
            return None
        return datetime.combine(day, self.start, tzinfo=zone)


@dataclass(frozen=True)
class Occurrence:
    course: str
    starts: datetime
    ends: datetime


def occurrences(course: str, sessions: Iterable[Session], around: datetime, zone: tzinfo) -> list[Occurrence]:
    """The course's session starts from the day before ``around`` to the day after (in ``zone``)."""
    local = around.astimezone(zone).date()
    found = []
    for offset in (-1, 0, 1):
        day = local + timedelta(days=offset)
        for session in sessions:
            starts = session.occurrence_on(day, zone)
            if starts is not None:
                found.append(Occurrence(course, starts, starts + timedelta(minutes=session.minutes)))
    return sorted(found, key=lambda occurrence: occurrence.starts)


def due_for_warming(occurrence: Occurrence, now: datetime, lead: timedelta) -> bool:
    """Between ``lead`` before the start and the session's end: the servers should be up."""
    return occurrence.starts - lead <= now < occurrence.ends
