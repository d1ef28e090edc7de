"""Whether a student may have GPUs now: the pure decision the ledger takes inside its transaction.

Refusal statuses (HTTP codes the spawner passes on):

* 403: a limit that waiting does not lift, so an admin has to act: the student's ``max_gpus`` override
  (0 switches GPUs off for them) is below what the course's server needs, their GPU-hours for this
  term are spent, or the course's ``max_concurrent_gpus`` is 0 or below what one server needs.
* 429: the course's cap on GPUs held at once (``max_concurrent_gpus``) is reached by classmates;
  it lifts when one of them stops.
* 503: the host has no free device (or too few); it lifts when anyone stops. Also when the host has
  fewer devices than one server needs, a configuration mistake the student can only report.

Checks run in that order, so a student first hears what only an admin can change. GPU-hours count only
usage inside the current term (``term_window``), so a new term starts from zero; a student is refused
only once the allowance is spent, and a running server is never stopped by the ledger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from ..core.problems import TeachlabError

SECONDS_PER_HOUR = 3600.0


class QuotaError(TeachlabError):
    """An admin gave a quota value that cannot be stored."""


@dataclass(frozen=True)
class EffectiveQuota:
    """The limits that apply to one student in one course; ``None`` means unlimited.

    ``max_concurrent_gpus`` is the course's cap on GPUs held by all its servers at once;
    ``gpu_hours`` is the student's allowance this term (their override, else the course's
    ``gpu_hours_per_student``); ``max_gpus`` is a per-student cap from an override.
    """

    max_concurrent_gpus: int | None = None
    gpu_hours: float | None = None
    max_gpus: int | None = None


@dataclass(frozen=True)
class Refusal:
    """Why no GPU is given: one sentence for the student, and the HTTP status (see module docstring)."""

    reason: str
    status: int


def term_window(term_start: date, term_end: date) -> tuple[datetime, datetime]:
    """The UTC instants ``[term_start 00:00, day after term_end 00:00)`` inside which usage counts."""
    start = datetime.combine(term_start, time(0), tzinfo=timezone.utc)
    end = datetime.combine(term_end + timedelta(days=1), time(0), tzinfo=timezone.utc)
    return start, end


def remaining_gpu_hours(quota: EffectiveQuota, used_seconds: float) -> float | None:
    """GPU-hours left this term (never below zero), or ``None`` when unlimited; for the spawn form."""
    if quota.gpu_hours is None:
        return None
    return max(0.0, quota.gpu_hours - used_seconds / SECONDS_PER_HOUR)


def check_allocation(
    *,
    course: str,
    requested: int,
    quota: EffectiveQuota,
    used_seconds: float,
    course_held: int,
    free_devices: int,
    total_devices: int,
) -> Refusal | None:
    """``None`` when ``requested`` GPUs may be given now, else the first reason why not.

    ``used_seconds`` is the student's GPU-seconds in this course this term, ``course_held`` the GPUs
    all servers of the course hold now, ``free_devices``/``total_devices`` the host's inventory.
    """
    return check_quota(
        course=course, requested=requested, quota=quota, used_seconds=used_seconds, course_held=course_held
    ) or check_devices(course=course, requested=requested, free_devices=free_devices, total_devices=total_devices)


def check_quota(*, course: str, requested: int, quota: EffectiveQuota, used_seconds: float, course_held: int) -> Refusal | None:
    """The 403 and 429 checks of ``check_allocation``: the limits, whatever devices are free (on any node)."""
    if quota.max_gpus == 0:
        return Refusal(f"GPUs are switched off for you in {course}; ask your instructor", 403)
    if quota.max_gpus is not None and requested > quota.max_gpus:
        return Refusal(
            f"you may use at most {_gpus(quota.max_gpus)} at once in {course} and its server needs "
            f"{requested}; ask your instructor",
            403,
        )
    if quota.gpu_hours is not None and used_seconds / SECONDS_PER_HOUR >= quota.gpu_hours:
        return Refusal(
            f"you have used {_used_hours(used_seconds)} of {quota.gpu_hours:g} GPU-hours this term "
            f"in {course}; ask your instructor for more",
            403,
        )
    cap = quota.max_concurrent_gpus
    if cap == 0:
        return Refusal(f"GPUs are switched off for {course}; ask your instructor", 403)
    if cap is not None and requested > cap:
        return Refusal(
            f"{course} may hold at most {_gpus(cap)} at once and its server needs {requested}; ask your instructor", 403
        )
    if cap is not None and course_held + requested > cap:
        if course_held >= cap:
            in_use = "it is in use" if cap == 1 else f"all {cap} are in use"
        else:
            in_use = f"{course_held} {'is' if course_held == 1 else 'are'} in use and its server needs {requested}"
        return Refusal(f"{course} may hold at most {_gpus(cap)} at once and {in_use}; try again later", 429)
    return None


def check_devices(*, course: str, requested: int, free_devices: int, total_devices: int) -> Refusal | None:
    """The 503 checks of ``check_allocation``: one host's devices (across nodes, ``cluster.placement`` decides)."""
    if requested > total_devices:
        return Refusal(f"this hub has {_gpus(total_devices)} and {course} servers need {requested}; tell your instructor", 503)
    if requested > free_devices:
        if free_devices == 0:
            every = "the only GPU is" if total_devices == 1 else f"all {total_devices} GPUs are"
            return Refusal(f"{every} in use; try again later", 503)
        verb = "is" if free_devices == 1 else "are"
        return Refusal(
            f"only {free_devices} of {_gpus(total_devices)} {verb} free and {course} servers need {requested}; try again later",
            503,
        )
    return None


def running_server_verdict(
    *, course: str, quota: EffectiveQuota, used_seconds: float, held_since: datetime, now: datetime, max_server_hours: float
) -> str | None:
    """Why a running GPU server must stop now, or ``None``: quotas hold while a server runs, not only at its start.

    ``used_seconds`` counts this term's usage including the running server's own; ``held_since`` is when it
    got its GPUs. A student is told what ran out and what to do, in one sentence.
    """
    if quota.gpu_hours is not None and used_seconds / SECONDS_PER_HOUR >= quota.gpu_hours:
        return (
            f"your {quota.gpu_hours:g} GPU-hours for this term in {course} are used up, so your server was stopped; "
            f"ask your instructor for more"
        )
    if now - held_since >= timedelta(hours=max_server_hours):
        return (
            f"GPU servers of {course} run at most {max_server_hours:g} hours at a time, so yours was stopped; "
            f"start it again to go on"
        )
    return None


def _gpus(count: int) -> str:
    return f"{count} GPU" if count == 1 else f"{count} GPUs"


def _used_hours(seconds: float) -> str:
    """One decimal, rounded down so a student is never told they used more than they did; no ``.0``."""
    shown = math.floor(seconds / SECONDS_PER_HOUR * 10) / 10
    return f"{shown:.1f}".removesuffix(".0")
