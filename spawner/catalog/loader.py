"""The course catalog: ``course_envs/<slug>/{course.yaml,environment.yml}`` as frozen dataclasses.

``spawner/catalog/schema/course.schema.json`` is the single source of truth for course.yaml; it rejects
unknown keys at every level. The CLI (``teachlab course validate``) and the hub (at start and on
reload) both call ``load_catalog``, so they report the same one-line problems.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.naming import is_course_slug, suggest_course_slug
from ..core.problems import Problem, ProblemsError
from ..core.schemacheck import schema_problems
from ..core.yamlfile import load_yaml_file
from .envfile import CondaEnvironment, load_environment
from .model import Catalog, Course, Members, Resources, Term
from .timetable import Session

COURSE_FILE = "course.yaml"
ENVIRONMENT_FILE = "environment.yml"


@lru_cache(maxsize=1)
def course_schema() -> dict:
    """The course.yaml JSON Schema shipped with the package."""
    return json.loads(resources.files("spawner.catalog").joinpath("schema/course.schema.json").read_text())


def schema_default(*path: str) -> object:
    """The ``default`` the course.yaml schema gives for a key (the schema is the one source of defaults)."""
    node = course_schema()
    for key in path:
        node = node["properties"][key]
    return node["default"]


def _members(data: Mapping[str, Any]) -> Members:
    return Members(groups=tuple(data.get("groups", ())), users=tuple(data.get("users", ())))


def load_course(folder: Path, shown_folder: Path | None = None) -> Course:
    """Load and check one course folder; ProblemsError lists every problem in both files.

    ``shown_folder`` names the folder in problems when ``folder`` is a copy (a candidate environment.yml
    checked beside the course's course.yaml before it replaces the catalog's)."""
    course_file = folder / COURSE_FILE
    env_file = folder / ENVIRONMENT_FILE
    shown = shown_folder or folder
    course_shown = str(shown / COURSE_FILE)
    problems: list[Problem] = []
    slug = folder.name
    if not is_course_slug(slug):
        problems.append(
            Problem(
                str(folder),
                "(folder name)",
                f"'{slug}' is not a valid course slug",
                f"rename the folder to 2-32 lowercase letters, digits and single dashes, e.g. '{suggest_course_slug(slug)}'",
            )
        )

    data: Any = None
    try:
        data = load_yaml_file(course_file, course_shown)
    except ProblemsError as exc:
        problems.extend(exc.problems)
    else:
        if data is None:
            data = {}
        schema_errors = schema_problems(data, course_schema(), course_shown)
        problems.extend(schema_errors)
        if not schema_errors:
            problems.extend(_semantic_problems(data, course_shown))

    environment: CondaEnvironment | None = None
    try:
        environment = load_environment(env_file, str(shown / ENVIRONMENT_FILE))
    except ProblemsError as exc:
        problems.extend(exc.problems)

    if problems:
        raise ProblemsError(problems)
    assert environment is not None
    term = data["term"]
    return Course(
        slug=slug,
        title=data["title"],
        description=data.get("description", ""),
        term=Term(date.fromisoformat(term["start"]), date.fromisoformat(term["end"])),
        students=_members(data["students"]),
        instructors=_members(data["instructors"]),
        resources=Resources(
            cpu=float(data["resources"]["cpu"]),
            memory=data["resources"]["memory"],
            disk=data["resources"].get("disk", schema_default("resources", "disk")),
        ),
        gpu=data.get("gpu", 0),
        idle_timeout_minutes=data.get("idle_timeout_minutes", 60),
        gpu_idle_timeout_minutes=data.get("gpu_idle_timeout_minutes", data.get("idle_timeout_minutes", 60)),
        gpu_max_server_hours=float(data.get("gpu_max_server_hours", schema_default("gpu_max_server_hours"))),
        image_flavor=data["image_flavor"],
        data_volumes=tuple(volume["name"] for volume in data.get("data_volumes", ())),
        network=data.get("network", schema_default("network")),
        sessions=tuple(Session.from_yaml(session) for session in data.get("sessions", ())),
        environment=environment,
        folder=folder,
    )


def _semantic_problems(data: Mapping[str, Any], shown_as: str) -> list[Problem]:
    """Rules a JSON Schema cannot state."""
    problems = []
    start, end = data["term"]["start"], data["term"]["end"]
    if date.fromisoformat(end) < date.fromisoformat(start):
        problems.append(
            Problem(shown_as, "term.end", f"{end} is before term.start {start}", "set term.end on or after term.start")
        )
    for who in ("students", "instructors"):
        if not (data[who].get("groups") or data[who].get("users")):
            problems.append(Problem(shown_as, who, "names nobody", f"add {who}.groups or {who}.users"))
    names = [volume["name"] for volume in data.get("data_volumes", ())]
    for index, name in enumerate(names):
        if name in names[:index]:
            problems.append(
                Problem(shown_as, f"data_volumes[{index}].name", f"'{name}' is used twice", "give each data volume its own name")
            )
    return problems


def is_course_folder(path: Path) -> bool:
    return (path / COURSE_FILE).is_file()


def load_catalog(root: Path) -> Catalog:
    """Load every course folder under ``root`` (or ``root`` itself when it is one course)."""
    if not root.is_dir():
        raise ProblemsError(
            [Problem(str(root), "(folder)", "is not a folder", "pass a catalog folder such as course_envs, or one course folder")]
        )
    folders = (
        [root]
        if is_course_folder(root)
        else sorted(child for child in root.iterdir() if child.is_dir() and not child.name.startswith((".", "_")))
    )
    problems: list[Problem] = []
    courses: dict[str, Course] = {}
    for folder in folders:
        if not is_course_folder(folder):
            problems.append(
                Problem(
                    str(folder),
                    "(folder)",
                    f"has no {COURSE_FILE}",
                    f"add {COURSE_FILE} and {ENVIRONMENT_FILE}, or move the folder out of the catalog",
                )
            )
            continue
        try:
            course = load_course(folder)
        except ProblemsError as exc:
            problems.extend(exc.problems)
        else:
            courses[course.slug] = course
    if problems:
        raise ProblemsError(problems)
    return Catalog(root=root, courses=courses)
