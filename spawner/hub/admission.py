"""Admission, not timeouts: when many students press start at once, their servers boot a few at a time.

Booting a Jupyter server is CPU-bound (about a second of CPU each). Fifty boots at once on two cores all
finish near the end, together; with a few slots the first students are in at once and the rest follow in
the order they came, each told their place and an estimate ("12th in line, about 30 s"). Nobody's start
times out for being in a crowd: a waiting start is not failing.

Pure asyncio: the spawner enters before it creates the container and leaves once the server answers.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# What a boot is assumed to take before any has been measured (seconds, wall clock under load).
FIRST_ESTIMATE_SECONDS = 8.0
ESTIMATE_WEIGHT = 0.2  # exponential moving average of measured boots


def ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


@dataclass
class Ticket:
    """One start's place: ``position`` counts the starts ahead of it, 0 once it boots."""

    key: str
    course: str
    joined: float
    admitted: asyncio.Event = field(default_factory=asyncio.Event)
    started: float | None = None


class Admission:
    """``slots`` boots at a time; the others wait in arrival order."""

    def __init__(self, slots: int, clock: Callable[[], float] = time.monotonic):
        if slots < 1:
            raise ValueError("admission needs at least one slot")
        self.slots = slots
        self._clock = clock
        self._booting: list[Ticket] = []
        self._waiting: list[Ticket] = []
        self.boot_estimate = FIRST_ESTIMATE_SECONDS

    def waiting(self, course: str | None = None) -> int:
        return sum(1 for ticket in self._waiting if course is None or ticket.course == course)

    def booting(self) -> int:
        return len(self._booting)

    def position(self, ticket: Ticket) -> int:
        """How many starts are ahead of this one (0: it boots now)."""
        return self._waiting.index(ticket) + 1 if ticket in self._waiting else 0

    def estimate_seconds(self, position: int) -> float:
        """When a start this far back in the queue can expect to boot: the slots free in rounds."""
        return math.ceil(position / self.slots) * self.boot_estimate

    def describe(self, ticket: Ticket) -> str:
        position = self.position(ticket)
        return f"{ordinal(position)} in line, about {max(1, round(self.estimate_seconds(position)))} s"

    def join(self, key: str, course: str) -> Ticket:
        ticket = Ticket(key=key, course=course, joined=self._clock())
        self._waiting.append(ticket)
        self._admit()
        return ticket

    async def wait(self, ticket: Ticket, report: Callable[[str], None], every: float = 2.0) -> None:
        """Until the ticket may boot, reporting its place whenever it changed (at most every ``every`` s)."""
        said = None
        while not ticket.admitted.is_set():
            line = self.describe(ticket)
            if line != said:
                report(line)
                said = line
            try:
                await asyncio.wait_for(ticket.admitted.wait(), timeout=every)
            except asyncio.TimeoutError:
                continue

    def leave(self, ticket: Ticket, *, booted: bool) -> None:
        """The boot ended (``booted``: the server answered) or the start gave up (cancelled, failed)."""
        if ticket in self._waiting:
            self._waiting.remove(ticket)
        if ticket in self._booting:
            self._booting.remove(ticket)
            if booted and ticket.started is not None:
                took = self._clock() - ticket.started
                self.boot_estimate = (1 - ESTIMATE_WEIGHT) * self.boot_estimate + ESTIMATE_WEIGHT * took
        self._admit()

    def _admit(self) -> None:
        while self._waiting and len(self._booting) < self.slots:
            ticket = self._waiting.pop(0)
            ticket.started = self._clock()
            self._booting.append(ticket)
            ticket.admitted.set()


_admissions: dict[int, Admission] = {}


def admission_for(slots: int) -> Admission:
    """The hub process's queue of starts (one per slot count: every spawner of a hub shares it)."""
    if slots not in _admissions:
        _admissions[slots] = Admission(slots)
    return _admissions[slots]


def all_waiting(course: str | None = None) -> int:
    """Starts waiting in every queue of this process (for the metrics)."""
    return sum(admission.waiting(course) for admission in _admissions.values())
