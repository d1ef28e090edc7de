"""One-line problem reports shared by the catalog, the image builder and the CLI.

Every error a person sees has the shape ``WHERE: what is wrong (how to fix)`` so it can be read
in a terminal, grepped in a log, and compared verbatim in tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """What is wrong, where (file and YAML path) and how to fix it."""

    file: str
    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}:{self.path}: {self.message} ({self.fix})"


class TeachlabError(Exception):
    """An expected failure whose message is meant for a person: printed, never a traceback."""


class ProblemsError(TeachlabError):
    """Raised when input has one or more problems; ``str()`` gives one line per problem."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def format_yaml_path(parts: Iterable[object]) -> str:
    """``["students", "users", 2]`` -> ``students.users[2]``; the empty path is ``(root)``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(root)"
