"""Moving a student's work to another node (``teachlab work move``): the decisions, without Docker.

A work volume is local to the node that made it (docs/scale-out.md, "Work that follows the student"). Moving it is
refused outright when it cannot be done safely: the student's server runs somewhere, no node or several nodes hold
the work and the admin did not say which, the work is on the target already, or it does not fit. When the target
already holds a work volume (the student started there with an empty folder while the old node was down), the
earlier work goes into a folder of its own beside the new work (``merge_folder``), so nothing of either is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from ..core.problems import TeachlabError
from .placement import GIB

MERGE_FOLDER_PREFIX = "earlier-work-from-"


class MoveRefused(TeachlabError):
    """The move was not started, or was undone: one line that says why and what to do."""


@dataclass(frozen=True)
class HeldWork:
    """A work volume of the student for the course, as found on a node's engine by its labels."""

    node: str
    volume: str


def refuse_while_running(running: Mapping[str, Sequence[str]], *, user: str, course: str) -> None:
    """Refuse while a container of the student's server for the course runs on any node (its files are changing)."""
    where = [f"{node} ({', '.join(names)})" for node, names in sorted(running.items()) if names]
    if where:
        raise MoveRefused(
            f"{user}'s server for {course} runs on {'; '.join(where)}: stop it first (the student, or an admin on the hub)"
        )


def choose_source(held: Sequence[HeldWork], *, user: str, course: str, target: str, source: str | None = None) -> HeldWork:
    """The work volume to move to ``target``: the one on ``source`` when given, else the only one on another node."""
    if source is not None:
        if source == target:
            raise MoveRefused(f"--from and --to both name {target}: move the work from one node to another")
        found = [work for work in held if work.node == source]
        if not found:
            elsewhere = ", ".join(sorted({work.node for work in held})) or "no node given"
            raise MoveRefused(f"{source} holds no work of {user} for {course} (it is on: {elsewhere})")
        if len(found) > 1:
            raise MoveRefused(f"{source} holds several work volumes of {user} for {course}: {_listed(found)}; move it by hand")
        return found[0]
    others = [work for work in held if work.node != target]
    if not others:
        if held:
            raise MoveRefused(f"{user}'s work for {course} is on {target} already; nothing to move")
        raise MoveRefused(f"no node given holds work of {user} for {course}; check the names, and give every node's --engine")
    if len(others) > 1:
        raise MoveRefused(f"{user}'s work for {course} is on several nodes ({_listed(others)}); say which with --from NODE")
    return others[0]


def _listed(held: Sequence[HeldWork]) -> str:
    return ", ".join(f"{work.node}: {work.volume}" for work in sorted(held, key=lambda work: (work.node, work.volume)))


def merge_folder(source_node: str, exists: Callable[[str], bool], today: date) -> str:
    """The folder of the target's work volume that takes the earlier work from ``source_node``:
    ``earlier-work-from-<node>``, with the date (then a number) added when that name is taken."""
    plain = f"{MERGE_FOLDER_PREFIX}{source_node}"
    candidates = [plain, f"{plain}-{today.isoformat()}"]
    candidates += (f"{plain}-{today.isoformat()}-{number}" for number in range(2, 100))
    for name in candidates:
        if not exists(name):
            return name
    raise MoveRefused(f"the work volume on the target already has {plain} and 99 dated copies of it; tidy it first")


def refuse_unless_fits(used_bytes: int, free_bytes: int, *, source: str, target: str) -> None:
    """The earlier work must fit in what is free in the target's work volume (its size is the course's limit)."""
    if used_bytes > free_bytes:
        raise MoveRefused(
            f"the work on {source} uses {size_text(used_bytes)}, more than the {size_text(free_bytes)} free in the work "
            f"volume on {target}; the student must make room there first"
        )


def size_text(size_bytes: int) -> str:
    if size_bytes >= GIB:
        return f"{size_bytes / GIB:.1f} GiB"
    return f"{size_bytes / (1 << 20):.1f} MiB"


@dataclass(frozen=True)
class MoveDone:
    user: str
    course: str
    source: str
    target: str
    files_bytes: int
    folder: str  # "" when the work became the target's whole work folder
    seconds: float
    source_kept: str = ""  # why the source volume stays, when it does

    def summary(self) -> str:
        where = f"into {self.folder}/ of the work folder" if self.folder else "as the work folder"
        line = (
            f"moved {self.user}'s work for {self.course}: {size_text(self.files_bytes)} from {self.source} to "
            f"{self.target}, {where}, checked, in {self.seconds:.1f} s"
        )
        return f"{line}; the source stays on {self.source} ({self.source_kept})" if self.source_kept else line
