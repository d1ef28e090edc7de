"""Who gets a warm server for a session: the enrolled students the hub knows, not already running or warmed,
as long as the warm servers' memory stays within the admin's budget. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmPlan:
    start: tuple[str, ...]
    over_budget: tuple[str, ...]


def plan_warm(
    *,
    enrolled: Iterable[str],
    running: Iterable[str],
    already_warmed: Iterable[str],
    memory_per_server: int,
    budget_bytes: int,
    warm_memory_in_use: int,
) -> WarmPlan:
    """Students to start now, in name order, within ``budget_bytes`` of memory for warm servers (those that are
    still waiting for their student count against it: ``warm_memory_in_use``); the rest over budget."""
    skip = set(running) | set(already_warmed)
    candidates = sorted(set(enrolled) - skip)
    room = max(0, budget_bytes - warm_memory_in_use) // max(1, memory_per_server)
    return WarmPlan(start=tuple(candidates[:room]), over_budget=tuple(candidates[room:]))
