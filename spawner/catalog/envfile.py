"""environment.yml (conda format): parse and check, without conda.

Checked: the keys ``name``, ``channels`` and ``dependencies`` (nothing else); each dependency is a
conda match spec or the one ``pip:`` list of PEP 508 requirements; exactly one ``python`` pin.
The parsed form keeps every spec as written so that image builds use exactly what the instructor
wrote; ``to_pep440`` translates a conda version spec where a flavor needs pip to install it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from ..core.problems import Problem, ProblemsError, format_yaml_path
from ..core.yamlfile import load_yaml_file

ENVIRONMENT_KEYS = ("name", "channels", "dependencies")

_MATCH_SPEC = re.compile(
    r"^(?:(?P<channel>[A-Za-z0-9_.\-/:]+)::)?"
    r"(?P<name>[A-Za-z0-9_][A-Za-z0-9_.\-]*)"
    r"(?:\s*(?P<version>(?:[<>!=~]=?|)[0-9A-Za-z.*+!_,<>=|~\-]*?))?"
    r"(?:(?:=|\s+)(?P<build>[A-Za-z0-9_.*\-]+))?\s*$"
)
_CONDA_VERSION = re.compile(r"^(?:[<>!=~]=?)?[0-9*][0-9A-Za-z.*+!_\-]*$")


@dataclass(frozen=True)
class MatchSpec:
    """One conda dependency, e.g. ``numpy>=1.21`` or ``conda-forge::pytorch=2.1``."""

    raw: str
    name: str
    version: str | None
    build: str | None
    channel: str | None

    def to_pep440(self) -> SpecifierSet:
        """The pip specifier meaning the same versions; ValueError where conda syntax has no equivalent."""
        if not self.version:
            return SpecifierSet()
        if "|" in self.version:
            raise ValueError(f"'{self.raw}' uses '|' (either-or), which pip cannot express")
        clauses = []
        for clause in self.version.split(","):
            if clause.startswith(("==", ">=", "<=", "!=", "~=", ">", "<")):
                clauses.append(clause)
            elif clause.startswith("="):
                fuzzy = clause[1:]
                clauses.append(f"=={fuzzy}" if fuzzy.endswith("*") else f"=={fuzzy}.*")
            else:
                clauses.append(f"=={clause}")
        try:
            return SpecifierSet(",".join(clauses))
        except InvalidSpecifier:
            raise ValueError(f"'{self.raw}' has a version pip cannot read")


@dataclass(frozen=True)
class CondaEnvironment:
    """A checked environment.yml."""

    name: str
    channels: tuple[str, ...]
    conda_dependencies: tuple[MatchSpec, ...]
    pip_requirements: tuple[str, ...]
    python: MatchSpec

    @property
    def python_specifier(self) -> SpecifierSet:
        return self.python.to_pep440()


def parse_match_spec(raw: str) -> MatchSpec:
    """Parse the match-spec forms instructors write; ValueError says what is not understood."""
    text = raw.strip()
    if "[" in text:
        raise ValueError("uses a bracket match spec, which Teachlab does not read")
    match = _MATCH_SPEC.match(text)
    if not match:
        raise ValueError("is not a conda match spec")
    version = match.group("version") or None
    if version and not all(_CONDA_VERSION.match(part) for part in version.replace("|", ",").split(",")):
        raise ValueError("has an unreadable version")
    return MatchSpec(
        raw=text,
        name=match.group("name").lower(),
        version=version,
        build=match.group("build"),
        channel=match.group("channel"),
    )


def load_environment(path: Path, shown_as: str) -> CondaEnvironment:
    """Read and check environment.yml; raise ProblemsError listing every problem found."""
    data = load_yaml_file(path, shown_as)
    problems: list[Problem] = []

    def report(where: list[Any], message: str, fix: str) -> None:
        problems.append(Problem(shown_as, format_yaml_path(where), message, fix))

    if not isinstance(data, dict):
        report([], "must be a mapping with name, channels and dependencies", "start the file with 'name: <env-name>'")
        raise ProblemsError(problems)

    for key in data:
        if key not in ENVIRONMENT_KEYS:
            report([key], "unknown key", f"remove it; environment.yml may have only {', '.join(ENVIRONMENT_KEYS)}")
    for key in ENVIRONMENT_KEYS:
        if key not in data:
            report([key], "missing key", f"add '{key}:'")

    name = data.get("name")
    if "name" in data and not (isinstance(name, str) and re.match(r"^[A-Za-z0-9_.\-]+$", name)):
        report(["name"], f"'{name}' is not an environment name", "use letters, digits, '.', '_' or '-'")

    channels = data.get("channels")
    if "channels" in data and not (isinstance(channels, list) and channels and all(isinstance(c, str) and c for c in channels)):
        report(["channels"], "must be a non-empty list of channel names", "write e.g. 'channels: [conda-forge]'")

    conda_deps: list[MatchSpec] = []
    pip_requirements: list[str] = []
    python_pins: list[tuple[int, MatchSpec]] = []
    dependencies = data.get("dependencies")
    if "dependencies" in data and not isinstance(dependencies, list):
        report(["dependencies"], "must be a list", "write one '- package' entry per line")
        dependencies = []
    pip_lists_seen = 0
    for index, entry in enumerate(dependencies or []):
        where = ["dependencies", index]
        if isinstance(entry, dict):
            if list(entry) != ["pip"]:
                report(where, f"unexpected mapping {sorted(map(str, entry))}", "only a 'pip:' list may appear among dependencies")
                continue
            pip_lists_seen += 1
            if pip_lists_seen > 1:
                report(where, "second 'pip:' list", "merge all pip requirements into one 'pip:' list")
                continue
            pip_entries = entry["pip"]
            if not isinstance(pip_entries, list):
                report(
                    where + ["pip"], "must be a list of requirements", "write one '- package' line per requirement under 'pip:'"
                )
                continue
            for pip_index, requirement in enumerate(pip_entries):
                pip_where = where + ["pip", pip_index]
                if not isinstance(requirement, str):
                    report(pip_where, f"'{requirement}' is not a requirement string", "write e.g. 'requests>=2.31'")
                    continue
                try:
                    Requirement(requirement)
                except InvalidRequirement as exc:
                    report(
                        pip_where,
                        f"'{requirement}' is not a pip requirement: {str(exc).splitlines()[0]}",
                        "write e.g. 'requests>=2.31'",
                    )
                    continue
                pip_requirements.append(requirement.strip())
        elif isinstance(entry, str):
            try:
                spec = parse_match_spec(entry)
            except ValueError as exc:
                report(where, f"'{entry}' {exc}", "write 'name', 'name=1.21' or 'name>=1.21,<2'")
                continue
            if spec.name == "python":
                python_pins.append((index, spec))
            else:
                conda_deps.append(spec)
        else:
            report(where, f"'{entry}' is neither a package nor a 'pip:' list", "write '- name=version' or '- pip: [...]'")

    if "dependencies" in data and isinstance(data.get("dependencies"), list):
        if not python_pins:
            report(["dependencies"], "no python pin", "add '- python=3.9'")
        for index, spec in python_pins[1:]:
            report(["dependencies", index], f"second python pin '{spec.raw}'", "keep exactly one python pin")
        if python_pins and not python_pins[0][1].version:
            report(["dependencies", python_pins[0][0]], "python is not pinned to a version", "write '- python=3.9'")
        elif python_pins:
            try:
                python_pins[0][1].to_pep440()
            except ValueError as exc:
                report(["dependencies", python_pins[0][0]], str(exc), "write '- python=3.9'")

    if problems:
        raise ProblemsError(problems)
    return CondaEnvironment(
        name=name,
        channels=tuple(channels),
        conda_dependencies=tuple(conda_deps),
        pip_requirements=tuple(pip_requirements),
        python=python_pins[0][1],
    )
