"""Known vulnerabilities of Python packages, from advisory data a site keeps on disk.

Pure (no Docker, no network). The data is a folder of OSV records: the OSV export for PyPI (one JSON
file per advisory) or the PyPA advisory database (one YAML file per advisory under ``vulns/<package>/``);
both use the OSV schema. A package is affected when its version is listed in an advisory's
``versions`` or falls in one of its ``ECOSYSTEM`` ranges (``introduced`` / ``fixed`` /
``last_affected`` / ``limit`` events). Withdrawn advisories are ignored.

What could not be checked is said, never hidden: without data the result is "not scanned"; a version
that is not a PEP 440 version is listed as skipped. Advisory data is only as new as its newest record
(``AdvisoryDatabase.date``): a site keeps it current (docs/images.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import yaml
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..core.problems import TeachlabError

ECOSYSTEM = "PyPI"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: a whole database in seconds


@dataclass(frozen=True)
class Advisory:
    id: str
    aliases: tuple[str, ...]
    summary: str
    package: str  # canonical name
    versions: frozenset[str]
    ranges: tuple[tuple[tuple[str, str], ...], ...]  # each range: its (event, version) pairs in order

    def affects(self, version: Version) -> bool:
        if str(version) in self.versions:
            return True
        return any(_in_range(version, events) for events in self.ranges)

    @property
    def fixed_versions(self) -> tuple[str, ...]:
        return tuple(sorted({value for events in self.ranges for kind, value in events if kind == "fixed"}, key=_sort_key))


def _sort_key(text: str) -> tuple[int, Version | str]:
    try:
        return (0, Version(text))
    except InvalidVersion:
        return (1, text)


def _in_range(version: Version, events: tuple[tuple[str, str], ...]) -> bool:
    """OSV ECOSYSTEM range semantics: affected from an ``introduced`` up to the next ``fixed`` (exclusive)
    or ``last_affected`` (inclusive); ``limit`` caps the range."""
    affected = False
    for kind, value in sorted(events, key=lambda event: _sort_key(event[1]) if event[1] != "0" else (-1, "")):
        if value == "0" and kind == "introduced":
            affected = True
            continue
        try:
            bound = Version(value)
        except InvalidVersion:
            continue
        if kind == "introduced" and version >= bound:
            affected = True
        elif (kind == "fixed" and version >= bound) or (kind == "last_affected" and version > bound):
            affected = False
        elif kind == "limit" and version >= bound:
            return False
    return affected


@dataclass(frozen=True)
class AdvisoryDatabase:
    """PyPI advisories by canonical package name, with where they came from and how new they are."""

    source: str
    date: date | None
    records: int
    by_package: Mapping[str, tuple[Advisory, ...]] = field(default_factory=dict)

    def affecting(self, name: str, version: str) -> list[Advisory]:
        parsed = Version(version)
        return [advisory for advisory in self.by_package.get(canonicalize_name(name), ()) if advisory.affects(parsed)]


def _advisories(record: Mapping) -> Iterable[Advisory]:
    if record.get("withdrawn"):
        return
    for affected in record.get("affected") or ():
        package = affected.get("package") or {}
        if package.get("ecosystem") != ECOSYSTEM or not package.get("name"):
            continue
        ranges = tuple(
            tuple((kind, str(value)) for event in r.get("events", ()) for kind, value in event.items())
            for r in affected.get("ranges") or ()
            if r.get("type") in ("ECOSYSTEM", "SEMVER")
        )
        yield Advisory(
            id=str(record["id"]),
            aliases=tuple(str(alias) for alias in record.get("aliases") or ()),
            summary=str(record.get("summary") or record.get("details") or "").strip().splitlines()[0][:200]
            if (record.get("summary") or record.get("details"))
            else "",
            package=canonicalize_name(package["name"]),
            versions=frozenset(str(v) for v in affected.get("versions") or ()),
            ranges=ranges,
        )


def _record_date(record: Mapping) -> date | None:
    text = str(record.get("modified") or record.get("published") or "")
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def load_advisories(folder: Path) -> AdvisoryDatabase:
    """Read every ``*.json`` / ``*.yaml`` OSV record under ``folder``; TeachlabError when it holds none."""
    if not folder.is_dir():
        raise TeachlabError(
            f"advisory data folder {folder} does not exist (set TEACHLAB_ADVISORY_DB or --advisory-db to a folder of OSV records)"
        )
    by_package: dict[str, list[Advisory]] = {}
    newest: date | None = None
    records = 0
    for path in sorted(folder.rglob("*")):
        if path.suffix not in (".json", ".yaml", ".yml") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            record = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_YAML_LOADER)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise TeachlabError(
                f"{path}: not an OSV record ({str(exc).splitlines()[0][:160]}); remove or replace the file"
            ) from None
        if not isinstance(record, dict) or "id" not in record:
            continue
        records += 1
        stamp = _record_date(record)
        if stamp and (newest is None or stamp > newest):
            newest = stamp
        for advisory in _advisories(record):
            by_package.setdefault(advisory.package, []).append(advisory)
    if records == 0:
        raise TeachlabError(f"advisory data folder {folder} holds no OSV records (*.json or *.yaml with an 'id')")
    return AdvisoryDatabase(
        source=str(folder), date=newest, records=records, by_package={k: tuple(v) for k, v in by_package.items()}
    )


@dataclass(frozen=True)
class Finding:
    id: str
    aliases: tuple[str, ...]
    package: str
    installed: str
    fixed: tuple[str, ...]
    summary: str

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "aliases": list(self.aliases),
            "package": self.package,
            "installed": self.installed,
            "fixed": list(self.fixed),
            "summary": self.summary,
        }


def scan_packages(database: AdvisoryDatabase, packages: Mapping[str, str]) -> tuple[list[Finding], list[str]]:
    """Findings for ``packages`` ({name: version}) and the ``name==version`` it could not check."""
    findings, skipped = [], []
    for name, version in sorted(packages.items()):
        try:
            affecting = database.affecting(name, version)
        except InvalidVersion:
            skipped.append(f"{name}=={version}")
            continue
        findings += [Finding(a.id, a.aliases, canonicalize_name(name), version, a.fixed_versions, a.summary) for a in affecting]
    return findings, skipped
