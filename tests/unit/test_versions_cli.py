"""`teachlab course versions` shows each version's scan: findings, the advisory data's date, the SBOM,
and "not scanned" where there was no data (a registry written here; no Docker)."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pytest

from spawner.cli import main
from spawner.core.contract import StateLayout
from spawner.images.advisories import load_advisories
from spawner.images.contents import ImageContents
from spawner.images.registry import CourseVersion, VersionRegistry
from spawner.images.scan import AcceptanceStore, new_acceptance, scan_image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "advisories"
TODAY = date(2026, 11, 25)
CONTENTS = ImageContents(
    "3.11.2", "3.9.2", {"jupyter-server": "2.21.1"}, {"tornado": "6.3.1", "tabulate": "0.9.0"}, {"bash": "5.2.15-2+b7"}
)


def _version(tag: str, scan: dict | None) -> CourseVersion:
    return CourseVersion(
        version=tag,
        image=f"teachlab/course-c1:{tag}",
        image_id=f"sha256:{tag}",
        environment_hash=tag,
        created="2026-11-25T12:00:00+00:00",
        size_bytes=900_000_000,
        base_image="teachlab/debian-py39:v2.1.0",
        flavor="debian-py39",
        kernel_python="3.9.2",
        server_python="3.11.2",
        jupyter_server="2.21.1",
        scan=scan,
    )


@pytest.fixture
def state(tmp_path):
    registry = VersionRegistry(StateLayout(tmp_path).courses)
    files = {
        "server": "jupyter-server==2.21.1 --hash=sha256:" + "a" * 64 + "\n",
        "debian": CONTENTS.debian_lock(),
        "contents": json.dumps(CONTENTS.as_dict()),
        "sbom": b"{}",
    }
    registry.add_current("c1", _version("v1", scan_image(CONTENTS, None, acceptances=[], today=TODAY)), "tornado==6.3.1\n", files)
    scanned = scan_image(CONTENTS, load_advisories(FIXTURES / "pypa-2024-10-10"), acceptances=[], today=TODAY)
    registry.add_current("c1", _version("v2", scanned), "tornado==6.3.1\n", files)
    AcceptanceStore(StateLayout(tmp_path).acceptances).add(
        [new_acceptance("TEACHLAB-TEST-0001", reason="admins only", expires="2099-12-31", accepted_by="root", today=TODAY)]
    )
    return tmp_path


def test_versions_json_shows_findings_data_date_sbom_and_locks(state, capsys):
    assert main(["course", "versions", "c1", "--json", "--state-dir", str(state)]) == 0
    data = json.loads(capsys.readouterr().out)
    first, second = data["versions"]
    assert first["scan"]["advisory_data"] is None
    assert {first["scan"][key]["status"] for key in ("server", "course", "debian")} == {"not scanned"}
    assert second["scan"]["advisory_data"]["date"] == "2023-11-03"
    assert [(f["id"], f["package"], f["installed"], f["fixed"]) for f in second["scan"]["course"]["findings"]] == [
        ("PYSEC-2023-75", "tornado", "6.3.1", ["6.3.2"])
    ]
    assert second["scan"]["debian"]["status"] == "not scanned"
    sbom = Path(second["sbom"])
    assert sbom.name == "v2.sbom.cdx.json" and sbom.is_file()
    assert {kind: Path(path).name for kind, path in second["locks"].items()} == {
        "course": "v2.lock.txt",
        "server": "v2.server-lock.txt",
        "debian": "v2.debian-lock.txt",
    }
    (acceptance,) = data["acceptances"]
    assert acceptance["id"] == "TEACHLAB-TEST-0001" and acceptance["reason"] == "admins only"


def test_versions_table_shows_the_scan_in_words(state, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["course", "versions", "c1", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    v1, v2 = (line.split() for line in out.splitlines() if re.match(r"^[ *]*v\d+ +\d{4}-", line))
    assert " ".join(v1[-8:]) == "no data not scanned not scanned not scanned"
    assert " ".join(v2[-7:]) == "2023-11-03 none known 1 finding(s) not scanned"
    assert "clean" not in out
    assert "v2: image teachlab/course-c1:v2; SBOM " in out and "v2.sbom.cdx.json" in out
    assert "  course: PYSEC-2023-75 tornado 6.3.1 (fixed in 6.3.2)" in out
    assert "v2 scan: advisory data of 2023-11-03; server: no known vulnerabilities" in out
    assert "accepted TEACHLAB-TEST-0001 until 2099-12-31 (active) by root: admins only" in out


def test_old_records_without_scans_still_read(tmp_path):
    courses = StateLayout(tmp_path).courses
    courses.mkdir(parents=True)
    old = {
        k: v
        for k, v in _version("v1", None).__dict__.items()
        if k in ("version", "image", "image_id", "environment_hash", "created", "size_bytes", "base_image", "flavor")
    }
    (courses / "c1.json").write_text(json.dumps({"course": "c1", "current": "v1", "versions": [old]}))
    record = VersionRegistry(courses).read("c1")
    assert record.current_version.scan is None and record.current_version.cuda_runtime is None


def test_audit_exits_1_only_on_findings_the_version_did_not_have(state, capsys):
    """v2 was published with the PyPA records: its tornado finding is known. Newer data (the fixture
    record against jupyter-server) brings a new one. The recorded contents suffice: no Docker."""
    assert main(["course", "audit", "c1", "--state-dir", str(state), "--advisory-db", str(FIXTURES / "pypa-2024-10-10")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "c1 v2: advisory data of 2023-11-03; server: no known vulnerabilities; course: 1 finding(s): PYSEC-2023-75"
    )
    assert "NEW" not in out
    server_fixture = ["--advisory-db", str(FIXTURES / "server-fixture")]
    assert main(["course", "audit", "--all", "--state-dir", str(state), *server_fixture]) == 0  # accepted: not news
    StateLayout(state).acceptances.unlink()
    assert main(["course", "audit", "--all", "--state-dir", str(state), *server_fixture]) == 1
    out = capsys.readouterr().out
    assert "  NEW in server: TEACHLAB-TEST-0001 jupyter-server 2.21.1 (fixed in 2.21.2)" in out
    last = VersionRegistry(StateLayout(state).courses).current_image("c1").scan["last_audit"]
    assert last["advisory_data"]["date"] == "2026-11-20" and last["server"]["findings"][0]["id"] == "TEACHLAB-TEST-0001"


def test_audit_needs_one_course_or_all(state, capsys):
    assert main(["course", "audit", "--state-dir", str(state)]) == 1
    assert "name one course (teachlab course audit SLUG) or audit all of them (--all)" in capsys.readouterr().err


def test_versions_show_who_published_and_the_newest_publishes_and_rollbacks(tmp_path, capsys):
    from dataclasses import replace

    from spawner.images.registry import HistoryEntry

    registry = VersionRegistry(StateLayout(tmp_path).courses)
    registry.add_current(
        "c1",
        replace(_version("v1", None), published_by="lena"),
        "",
        event=HistoryEntry("2026-11-29T10:00:00+00:00", "lena", "publish", None, "v1", "published"),
    )
    registry.record_event(
        "c1", HistoryEntry("2026-11-29T10:05:00+00:00", "lena", "publish", "v1", None, "failed", "pip: no toolz 9")
    )
    assert main(["course", "versions", "c1", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s*\*\s+v1 .* lena\s*$", out, re.MULTILINE)
    assert "2026-11-29T10:05:00+00:00 lena publish v1 -> - (failed: pip: no toolz 9)" in out
    assert main(["course", "versions", "c1", "--json", "--state-dir", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(e["actor"], e["outcome"]) for e in data["history"]] == [("lena", "published"), ("lena", "failed")]


def test_versions_list_the_newest_publishes_and_rollbacks_one_line_each(state, capsys, monkeypatch):
    """Who changed the current version, when, from which to which and how it ended; the oldest drop off."""
    from spawner.cli.course import HISTORY_SHOWN
    from spawner.images.registry import HistoryEntry

    monkeypatch.setenv("COLUMNS", "200")
    registry = VersionRegistry(StateLayout(state).courses)
    for minute in range(HISTORY_SHOWN):
        registry.record_event(
            "c1", HistoryEntry(f"2026-11-29T09:{minute:02d}:00+00:00", "old", "publish", "v2", "v2", "unchanged")
        )
    registry.make_current("c1", "v1", HistoryEntry("2026-11-29T10:00:00+00:00", "ada", "rollback", "v2", "v1", "rolled back"))
    registry.record_event(
        "c1", HistoryEntry("2026-11-29T10:05:00+00:00", "lena", "publish", "v1", None, "failed", "pip: no toolz==9")
    )
    assert main(["course", "versions", "c1", "--state-dir", str(state)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index(f"Publishes and rollbacks (the newest {HISTORY_SHOWN}, oldest first):")
    shown = lines[start + 1 : start + 1 + HISTORY_SHOWN]
    assert shown[-2:] == [
        "2026-11-29T10:00:00+00:00 ada rollback v2 -> v1 (rolled back)",
        "2026-11-29T10:05:00+00:00 lena publish v1 -> - (failed: pip: no toolz==9)",
    ]
    assert shown[0] == "2026-11-29T09:02:00+00:00 old publish v2 -> v2 (unchanged)"  # the two oldest are left out
    assert "09:01:00" not in "\n".join(lines)
    assert re.search(r"^\s*\*\s+v1 ", "\n".join(lines), re.MULTILINE)  # the rollback made v1 current
