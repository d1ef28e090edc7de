"""What a scan records and says: findings per environment, acceptances with expiry, never "clean"
when something was not checked (no Docker: the image's contents are given)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from spawner.core.problems import TeachlabError
from spawner.images.advisories import load_advisories
from spawner.images.contents import ImageContents
from spawner.images.scan import (
    AcceptanceStore,
    blocking_findings,
    environment_summary,
    new_acceptance,
    new_findings,
    scan_image,
    scan_summary,
    trivy_debian_result,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "advisories"
TODAY = date(2026, 11, 25)
CONTENTS = ImageContents(
    server_python="3.11.2",
    kernel_python="3.9.2",
    server_packages={"jupyter-server": "2.21.1", "tornado": "6.6.1", "pip": "26.3"},
    course_packages={"tornado": "6.3.1", "requests": "2.32.3", "pip": "26.0.1"},
    debian_packages={"bash": "5.2.15-2+b7"},
)


def _accept(advisory: str, expires: str = "2026-12-31"):
    return new_acceptance(advisory, reason="only reachable by admins here", expires=expires, accepted_by="admin", today=TODAY)


def test_a_course_finding_is_reported_and_does_not_block():
    scan = scan_image(CONTENTS, load_advisories(FIXTURES / "pypa-2024-10-10"), acceptances=[], today=TODAY)
    assert [f["id"] for f in scan["course"]["findings"]] == ["PYSEC-2023-75"]
    assert scan["server"]["status"] == "no known vulnerabilities" and blocking_findings(scan) == []
    assert scan["advisory_data"]["date"] == "2023-11-03"
    assert scan["debian"] == {"status": "not scanned", "reason": "no Trivy database", "findings": []}
    summary = scan_summary(scan)
    assert summary.startswith(
        "advisory data of 2023-11-03; server: no known vulnerabilities; course: 1 finding(s): PYSEC-2023-75"
    )
    assert "Debian packages: not scanned (no Trivy database)" in summary


def test_a_server_finding_blocks_until_accepted_and_an_expired_acceptance_is_void():
    database = load_advisories(FIXTURES / "server-fixture")
    blocked = blocking_findings(scan_image(CONTENTS, database, acceptances=[], today=TODAY))
    assert [(f["id"], f["package"], f["installed"], f["fixed"]) for f in blocked] == [
        ("TEACHLAB-TEST-0001", "jupyter-server", "2.21.1", ["2.21.2"])
    ]
    accepted = scan_image(CONTENTS, database, acceptances=[_accept("TEACHLAB-TEST-0001")], today=TODAY)
    assert blocking_findings(accepted) == []
    assert accepted["server"]["findings"][0]["accepted"] == {
        "reason": "only reachable by admins here",
        "expires": "2026-12-31",
        "by": "admin",
    }
    assert "(1 accepted)" in environment_summary(accepted["server"])
    later = scan_image(CONTENTS, database, acceptances=[_accept("TEACHLAB-TEST-0001")], today=date(2027, 1, 1))
    assert [f["id"] for f in blocking_findings(later)] == ["TEACHLAB-TEST-0001"]


def test_an_acceptance_of_another_advisory_does_not_cover_this_one():
    scan = scan_image(CONTENTS, load_advisories(FIXTURES / "server-fixture"), acceptances=[_accept("GHSA-0000")], today=TODAY)
    assert len(blocking_findings(scan)) == 1


def test_without_advisory_data_everything_is_not_scanned_never_clean():
    scan = scan_image(CONTENTS, None, acceptances=[], today=TODAY)
    assert scan["advisory_data"] is None
    assert {scan[key]["status"] for key in ("server", "course", "debian")} == {"not scanned"}
    summary = scan_summary(scan)
    assert summary.startswith("no advisory data; server: not scanned (no advisory data)")
    assert "clean" not in summary and "no known" not in summary
    assert scan_summary(None) == "not scanned (published before scanning)"


def test_skipped_packages_are_named():
    contents = ImageContents("3.11.2", "3.9.2", {"jupyter-server": "2.21.1"}, {"odd": "1.0-custom-build!"}, {})
    scan = scan_image(contents, load_advisories(FIXTURES / "pypa-2024-10-10"), acceptances=[], today=TODAY)
    assert environment_summary(scan["course"]) == "no known vulnerabilities; not scanned: odd==1.0-custom-build!"


def test_conda_packages_without_python_metadata_are_named_as_not_scanned():
    contents = ImageContents(
        "3.11.2", "3.9.2", {}, {"numpy": "1.26.4"}, {}, conda_packages={"numpy": "1.26.4", "libopenblas": "0.3.21"}
    )
    scan = scan_image(contents, load_advisories(FIXTURES / "pypa-2024-10-10"), acceptances=[], today=TODAY)
    assert scan["course"]["not_scanned_conda"] == ["libopenblas"]
    assert "not scanned: libopenblas" in environment_summary(scan["course"])


def test_new_findings_are_those_the_recorded_scan_did_not_have():
    before = scan_image(CONTENTS, None, acceptances=[], today=TODAY)
    after = scan_image(CONTENTS, load_advisories(FIXTURES / "pypa-2024-10-10"), acceptances=[], today=TODAY)
    assert [(env, f["id"]) for env, f in new_findings(before, after)] == [("course", "PYSEC-2023-75")]
    assert new_findings(after, after) == []


@pytest.mark.parametrize(
    "reason, expires, message",
    [
        pytest.param("", "2026-12-31", "needs a reason", id="no-reason"),
        pytest.param("why", "31.12.2026", "needs an expiry date: add --expires YYYY-MM-DD", id="bad-date"),
        pytest.param("why", None, "needs an expiry date", id="no-date"),
        pytest.param("why", "2026-11-01", "has passed", id="past-date"),
    ],
)
def test_an_acceptance_needs_a_reason_and_a_future_expiry(reason, expires, message):
    with pytest.raises(TeachlabError, match=message):
        new_acceptance("TEACHLAB-TEST-0001", reason=reason, expires=expires, accepted_by="admin", today=TODAY)


def test_acceptances_are_recorded_and_read_back(tmp_path):
    store = AcceptanceStore(tmp_path / "advisories" / "accepted.json")
    assert store.read() == []
    store.add([_accept("A-1")])
    store.add([_accept("A-2", "2027-01-31")])
    assert [(a.id, a.expires, a.accepted_on) for a in store.read()] == [
        ("A-1", "2026-12-31", "2026-11-25"),
        ("A-2", "2027-01-31", "2026-11-25"),
    ]


def test_trivy_os_findings_become_the_debian_result():
    """The shape of `trivy image --format json` (a hand-made report: no Trivy database exists here)."""
    report = {
        "Results": [
            {
                "Target": "teachlab/course (debian 12.8)",
                "Class": "os-pkgs",
                "Vulnerabilities": [
                    {
                        "VulnerabilityID": "CVE-2026-0001",
                        "PkgName": "libc6",
                        "InstalledVersion": "2.36-9",
                        "FixedVersion": "2.36-10",
                        "Severity": "HIGH",
                    }
                ],
            },
            {"Target": "Python", "Class": "lang-pkgs", "Vulnerabilities": [{"VulnerabilityID": "CVE-X", "PkgName": "pip"}]},
        ]
    }
    result = trivy_debian_result(report)
    assert result["status"] == "findings" and [(f["id"], f["package"], f["fixed"]) for f in result["findings"]] == [
        ("CVE-2026-0001", "libc6", ["2.36-10"])
    ]
    assert trivy_debian_result({"Results": []})["status"] == "no known vulnerabilities"
