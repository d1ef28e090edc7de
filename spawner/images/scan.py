"""The vulnerability scan of a course image at publish time and in later audits.

Pure (no Docker): given what an image contains and the advisory data, say what is known about each
part, in words that never overstate: "not scanned" without data, "no known vulnerabilities" only when
every package was checked against data of a stated date, and what was skipped otherwise.

The Jupyter server environment is the platform's: a known vulnerability there blocks a publish unless
an admin accepted that advisory, by id, with a reason and an expiry date (``Acceptance``); an expired
acceptance counts for nothing. In the course environment findings are reported to the instructor and
never block.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

from ..core.problems import TeachlabError
from .advisories import AdvisoryDatabase, scan_packages
from .contents import ImageContents

NOT_SCANNED = "not scanned"
NO_KNOWN = "no known vulnerabilities"
FINDINGS = "findings"
SERVER, COURSE, DEBIAN = "server", "course", "debian"
SHORT_TITLES = {SERVER: "server", COURSE: "course", DEBIAN: "Debian packages"}


@dataclass(frozen=True)
class Acceptance:
    """An admin's decision to publish despite one advisory in the server environment, until ``expires``."""

    id: str
    reason: str
    expires: str  # ISO date; the acceptance is void after it
    accepted_by: str
    accepted_on: str

    def active(self, today: date) -> bool:
        return today <= date.fromisoformat(self.expires)

    def covers(self, finding: Mapping) -> bool:
        return self.id == finding["id"] or self.id in finding.get("aliases", ())


def new_acceptance(advisory_id: str, *, reason: str, expires: str, accepted_by: str, today: date) -> Acceptance:
    """Check an admin's acceptance: an id, a reason, an expiry date in the future."""
    if not advisory_id.strip():
        raise TeachlabError("--accept needs the advisory id the scan printed, e.g. --accept GHSA-fcw5-x6j4-ccmp")
    if not reason or not reason.strip():
        raise TeachlabError(f"accepting {advisory_id} needs a reason: add --reason 'why it cannot be exploited here'")
    try:
        until = date.fromisoformat(expires or "")
    except ValueError:
        raise TeachlabError(f"accepting {advisory_id} needs an expiry date: add --expires YYYY-MM-DD (not {expires!r})") from None
    if until < today:
        raise TeachlabError(f"the expiry date {until} of the acceptance of {advisory_id} has passed; choose a later date")
    return Acceptance(advisory_id.strip(), reason.strip(), until.isoformat(), accepted_by, today.isoformat())


class AcceptanceStore:
    """Acceptances of the lab (``<state>/advisories/accepted.json``), kept with expired ones for the record."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[Acceptance]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        return [Acceptance(**entry) for entry in data["acceptances"]]

    def add(self, acceptances: Iterable[Acceptance]) -> list[Acceptance]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self.read() + list(acceptances)
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".accepted.", suffix=".json")
            with os.fdopen(handle, "w") as stream:
                json.dump({"acceptances": [asdict(a) for a in entries]}, stream, indent=2)
            os.replace(temporary, self.path)
        return entries


def _environment_result(database: AdvisoryDatabase | None, packages: Mapping[str, str]) -> dict:
    if database is None:
        return {"status": NOT_SCANNED, "reason": "no advisory data", "findings": [], "skipped": []}
    findings, skipped = scan_packages(database, packages)
    return {
        "status": FINDINGS if findings else NO_KNOWN,
        "findings": [finding.as_dict() for finding in findings],
        "skipped": skipped,
        "packages": len(packages),
    }


def scan_image(
    contents: ImageContents,
    database: AdvisoryDatabase | None,
    *,
    acceptances: Sequence[Acceptance],
    today: date,
    debian: dict | None = None,
) -> dict:
    """The scan record of one image: per environment its status, findings and what was skipped; which
    server findings are accepted (and by what), and which block."""
    server = _environment_result(database, contents.server_packages)
    course = _environment_result(database, contents.course_packages)
    if contents.conda_packages:
        python_names = set(contents.course_packages)
        others = sorted(name for name in contents.conda_packages if name not in python_names)
        if others:
            course["not_scanned_conda"] = others  # no PyPI metadata: only Trivy can see them
    active = [a for a in acceptances if a.active(today)]
    for finding in server["findings"]:
        accepted = next((a for a in active if a.covers(finding)), None)
        if accepted is not None:
            finding["accepted"] = {"reason": accepted.reason, "expires": accepted.expires, "by": accepted.accepted_by}
    data = (
        {"source": database.source, "date": database.date.isoformat() if database.date else None, "records": database.records}
        if database is not None
        else None
    )
    return {
        "advisory_data": data,
        "scanned_on": today.isoformat(),
        SERVER: server,
        COURSE: course,
        DEBIAN: debian or {"status": NOT_SCANNED, "reason": "no Trivy database", "findings": []},
    }


def blocking_findings(scan: Mapping) -> list[dict]:
    """Server-environment findings that no active acceptance covers: these stop a publish."""
    return [finding for finding in scan[SERVER]["findings"] if "accepted" not in finding]


def environment_summary(result: Mapping) -> str:
    """One phrase for a table cell: never "clean" when something was not checked."""
    if result["status"] == NOT_SCANNED:
        return f"{NOT_SCANNED} ({result.get('reason', 'no data')})"
    parts = []
    findings = result["findings"]
    if findings:
        accepted = sum(1 for finding in findings if "accepted" in finding)
        ids = ", ".join(sorted({finding["id"] for finding in findings}))
        parts.append(f"{len(findings)} finding(s): {ids}" + (f" ({accepted} accepted)" if accepted else ""))
    else:
        parts.append(NO_KNOWN)
    skipped = list(result.get("skipped", ())) + list(result.get("not_scanned_conda", ()))
    if skipped:
        parts.append(f"{NOT_SCANNED}: {', '.join(skipped[:5])}" + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""))
    return "; ".join(parts)


def environment_cell(result: Mapping | None) -> str:
    """A few words for a table cell: "not scanned", "none known", "2 findings (1 accepted)", "+3 skipped"."""
    if not result or result["status"] == NOT_SCANNED:
        return NOT_SCANNED
    findings = result["findings"]
    accepted = sum(1 for finding in findings if "accepted" in finding)
    words = f"{len(findings)} finding(s)" + (f" ({accepted} accepted)" if accepted else "") if findings else "none known"
    skipped = len(result.get("skipped", ())) + len(result.get("not_scanned_conda", ()))
    return words + (f", {skipped} not scanned" if skipped else "")


def finding_lines(scan: Mapping | None) -> list[str]:
    """One line per finding: environment, id, package, installed and fixed versions, acceptance."""
    lines = []
    for key in (SERVER, COURSE, DEBIAN):
        for finding in (scan or {}).get(key, {}).get("findings", ()):
            fixed = ", ".join(finding["fixed"]) or "no fixed version yet"
            accepted = finding.get("accepted")
            note = f"; accepted until {accepted['expires']} by {accepted['by']}: {accepted['reason']}" if accepted else ""
            lines.append(
                f"{SHORT_TITLES[key]}: {finding['id']} {finding['package']} {finding['installed']} (fixed in {fixed}){note}"
            )
    return lines


def scan_summary(scan: Mapping | None) -> str:
    """The whole scan in one line, with the advisory data's date."""
    if not scan:
        return f"{NOT_SCANNED} (published before scanning)"
    data = scan.get("advisory_data")
    when = f"advisory data of {data['date']}" if data else "no advisory data"
    parts = [f"{SHORT_TITLES[key]}: {environment_summary(scan[key])}" for key in (SERVER, COURSE, DEBIAN)]
    return f"{when}; " + "; ".join(parts)


def new_findings(before: Mapping | None, after: Mapping) -> list[tuple[str, dict]]:
    """Findings of ``after`` that ``before`` (the recorded scan) did not have, with their environment;
    a finding an admin accepted (and whose acceptance is still active) is not news."""
    known = set()
    if before:
        for key in (SERVER, COURSE, DEBIAN):
            known |= {(key, f["id"], f["package"], f["installed"]) for f in before.get(key, {}).get("findings", ())}
    return [
        (key, finding)
        for key in (SERVER, COURSE, DEBIAN)
        for finding in after[key].get("findings", ())
        if (key, finding["id"], finding["package"], finding["installed"]) not in known and "accepted" not in finding
    ]


def trivy_debian_result(report: Mapping) -> dict:
    """The Debian part of a Trivy JSON report (``trivy image --format json``): its OS package findings."""
    findings = []
    for result in report.get("Results") or ():
        if result.get("Class") != "os-pkgs":
            continue
        for vulnerability in result.get("Vulnerabilities") or ():
            fixed = vulnerability.get("FixedVersion") or ""
            findings.append(
                {
                    "id": vulnerability["VulnerabilityID"],
                    "aliases": [],
                    "package": vulnerability["PkgName"],
                    "installed": vulnerability.get("InstalledVersion", ""),
                    "fixed": [fixed] if fixed else [],
                    "summary": (vulnerability.get("Title") or "")[:200],
                    "severity": vulnerability.get("Severity", ""),
                }
            )
    return {"status": FINDINGS if findings else NO_KNOWN, "findings": findings, "skipped": [], "scanner": "trivy"}
