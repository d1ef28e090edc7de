"""The course catalog: ``course_envs/<slug>/{course.yaml,environment.yml}`` as frozen dataclasses.

``spawner/schema/course.schema.json`` is the single source of truth for course.yaml; it rejects
unknown keys at every level. The CLI (``teachlab course validate``) and the hub (at start and on
reload) both call ``load_catalog``, so they report the same one-line problems.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import jsonschema

from .envfile import CondaEnvironment, load_environment
from .naming import is_course_slug, suggest_course_slug
from .problems import Problem, ProblemsError, format_yaml_path
from .units import parse_memory
from .yamlfile import load_yaml_file

COURSE_FILE = "course.yaml"
ENVIRONMENT_FILE = "environment.yml"

_TYPE_WORDS = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "object": "a mapping (key: value lines)",
    "array": "a list",
    "boolean": "true or false",
}


@lru_cache(maxsize=1)
def course_schema() -> dict:
    """The course.yaml JSON Schema shipped with the package."""
    return json.loads(resources.files("spawner").joinpath("schema/course.schema.json").read_text())


@dataclass(frozen=True)
class Members:
    """People named by hub group or username."""

    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()

    def include(self, username: str, user_groups: Iterable[str]) -> bool:
        return username in self.users or not set(self.groups).isdisjoint(user_groups)


@dataclass(frozen=True)
class Term:
    """Students may start the course from ``start`` through ``end`` (both inclusive)."""

    start: date
    end: date


@dataclass(frozen=True)
class Resources:
    cpu: float
    memory: str

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)


@dataclass(frozen=True)
class Access:
    """Whether a person may use a course now, as what, and if not, why (shown to them)."""

    role: Optional[str]  # "instructor", "student" or None
    reason: str

    @property
    def allowed(self) -> bool:
        return self.role is not None


@dataclass(frozen=True)
class Course:
    slug: str
    title: str
    description: str
    term: Term
    students: Members
    instructors: Members
    resources: Resources
    gpu: int
    idle_timeout_minutes: int
    gpu_idle_timeout_minutes: int
    image_flavor: str
    data_volumes: tuple[str, ...]
    environment: CondaEnvironment
    folder: Path

    def access(self, username: str, user_groups: Iterable[str], today: date) -> Access:
        """Instructors always; students only during the term."""
        groups = tuple(user_groups)
        if self.instructors.include(username, groups):
            return Access("instructor", "you teach this course")
        if not self.students.include(username, groups):
            return Access(None, f"you are not enrolled in '{self.slug}'")
        if today < self.term.start:
            return Access(None, f"the term of '{self.slug}' starts on {self.term.start.isoformat()}")
        if today > self.term.end:
            return Access(None, f"the term of '{self.slug}' ended on {self.term.end.isoformat()}")
        return Access("student", "you are enrolled")

    @property
    def idle_timeout_seconds(self) -> int:
        minutes = self.gpu_idle_timeout_minutes if self.gpu else self.idle_timeout_minutes
        return minutes * 60


@dataclass(frozen=True)
class Catalog:
    root: Path
    courses: Mapping[str, Course]

    def available_to(self, username: str, user_groups: Iterable[str], today: date) -> list[tuple[Course, Access]]:
        """Courses this person may start now, sorted by slug."""
        groups = tuple(user_groups)
        pairs = [(course, course.access(username, groups, today)) for course in self.courses.values()]
        return sorted(((c, a) for c, a in pairs if a.allowed), key=lambda pair: pair[0].slug)


def _example_fix(schema: Mapping[str, Any], key: object) -> str:
    example = (schema.get("examples") or [None])[0]
    description = schema.get("description", "").rstrip(".")
    shown_key = key if isinstance(key, str) else "-"
    parts = []
    if example is not None:
        parts.append(f"write e.g. {shown_key}: {json.dumps(example)}")
    if description:
        parts.append(description)
    return "; ".join(parts) or "see docs/course-yaml.md"


def _describe(value: Any) -> str:
    kind = {str: "text", bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "a mapping"}
    if value is None:
        return "empty"
    return f"{kind.get(type(value), type(value).__name__)} {json.dumps(value)[:60]}"


def _schema_problems(error: jsonschema.ValidationError, shown_as: str) -> list[Problem]:
    path = list(error.absolute_path)
    key = path[-1] if path else None
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    kind = error.validator

    def problem(message: str, fix: str, where: Optional[list[object]] = None) -> Problem:
        return Problem(shown_as, format_yaml_path(path if where is None else where), message, fix)

    if kind == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        found = []
        for extra in sorted(set(instance) - set(allowed), key=str):
            close = difflib.get_close_matches(str(extra), allowed, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            found.append(problem("unknown key", f"{hint}allowed here: {', '.join(allowed)}", path + [extra]))
        return found
    if kind == "required":
        missing = error.message.split("'")[1]
        subschema = schema.get("properties", {}).get(missing, {})
        return [problem("missing key", _example_fix(subschema, missing), path + [missing])]
    if kind == "type":
        wanted = " or ".join(_TYPE_WORDS.get(t, t) for t in ([error.validator_value] if isinstance(error.validator_value, str) else error.validator_value))
        return [problem(f"must be {wanted}, not {_describe(instance)}", _example_fix(schema, key))]
    if kind == "enum":
        return [problem(f"{json.dumps(instance)} is not a known value", f"use one of: {', '.join(map(str, error.validator_value))}")]
    if kind == "format":
        return [problem(f"{json.dumps(instance)} is not a valid {error.validator_value}", _example_fix(schema, key))]
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        relation = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
        return [problem(f"{instance} is out of range: it must be {relation} {error.validator_value}", _example_fix(schema, key))]
    if kind == "uniqueItems":
        return [problem("lists the same entry twice", "remove the duplicate")]
    if kind == "pattern":
        return [problem(f"{json.dumps(instance)} does not have the expected form", _example_fix(schema, key))]
    if kind in ("minLength", "maxLength", "maxItems", "minItems"):
        limit = {"minLength": "at least {} characters", "maxLength": "at most {} characters", "maxItems": "at most {} entries", "minItems": "at least {} entries"}[kind]
        return [problem(f"must have {limit.format(error.validator_value)}", _example_fix(schema, key))]
    return [problem(error.message, _example_fix(schema, key))]


def _members(data: Mapping[str, Any]) -> Members:
    return Members(groups=tuple(data.get("groups", ())), users=tuple(data.get("users", ())))


def load_course(folder: Path) -> Course:
    """Load and check one course folder; ProblemsError lists every problem in both files."""
    course_file = folder / COURSE_FILE
    env_file = folder / ENVIRONMENT_FILE
    course_shown = str(course_file)
    problems: list[Problem] = []
    slug = folder.name
    if not is_course_slug(slug):
        problems.append(Problem(str(folder), "(folder name)", f"'{slug}' is not a valid course slug",
                                f"rename the folder to 2-32 lowercase letters, digits and single dashes, e.g. '{suggest_course_slug(slug)}'"))

    data: Any = None
    try:
        data = load_yaml_file(course_file, course_shown)
    except ProblemsError as exc:
        problems.extend(exc.problems)
    else:
        if data is None:
            data = {}
        validator = jsonschema.Draft202012Validator(course_schema(), format_checker=jsonschema.FormatChecker())
        schema_errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
        for error in schema_errors:
            problems.extend(_schema_problems(error, course_shown))
        if not schema_errors:
            problems.extend(_semantic_problems(data, course_shown))

    environment: Optional[CondaEnvironment] = None
    try:
        environment = load_environment(env_file, str(env_file))
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
        resources=Resources(cpu=float(data["resources"]["cpu"]), memory=data["resources"]["memory"]),
        gpu=data.get("gpu", 0),
        idle_timeout_minutes=data.get("idle_timeout_minutes", 60),
        gpu_idle_timeout_minutes=data.get("gpu_idle_timeout_minutes", data.get("idle_timeout_minutes", 60)),
        image_flavor=data["image_flavor"],
        data_volumes=tuple(volume["name"] for volume in data.get("data_volumes", ())),
        environment=environment,
        folder=folder,
    )


def _semantic_problems(data: Mapping[str, Any], shown_as: str) -> list[Problem]:
    """Rules a JSON Schema cannot state."""
    problems = []
    start, end = data["term"]["start"], data["term"]["end"]
    if date.fromisoformat(end) < date.fromisoformat(start):
        problems.append(Problem(shown_as, "term.end", f"{end} is before term.start {start}", "set term.end on or after term.start"))
    for who in ("students", "instructors"):
        if not (data[who].get("groups") or data[who].get("users")):
            problems.append(Problem(shown_as, who, "names nobody", f"add {who}.groups or {who}.users"))
    names = [volume["name"] for volume in data.get("data_volumes", ())]
    for index, name in enumerate(names):
        if name in names[:index]:
            problems.append(Problem(shown_as, f"data_volumes[{index}].name", f"'{name}' is used twice", "give each data volume its own name"))
    return problems


def is_course_folder(path: Path) -> bool:
    return (path / COURSE_FILE).is_file()


def load_catalog(root: Path) -> Catalog:
    """Load every course folder under ``root`` (or ``root`` itself when it is one course)."""
    if not root.is_dir():
        raise ProblemsError([Problem(str(root), "(folder)", "is not a folder", "pass a catalog folder such as course_envs, or one course folder")])
    folders = [root] if is_course_folder(root) else sorted(
        child for child in root.iterdir() if child.is_dir() and not child.name.startswith((".", "_"))
    )
    problems: list[Problem] = []
    courses: dict[str, Course] = {}
    for folder in folders:
        if not is_course_folder(folder):
            problems.append(Problem(str(folder), "(folder)", f"has no {COURSE_FILE}", f"add {COURSE_FILE} and {ENVIRONMENT_FILE}, or move the folder out of the catalog"))
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
