"""The advisory scanner against real OSV records (a few copied from the PyPA advisory database into
tests/fixtures/advisories/, see its NOTICE.md) and one made-up record in the OSV export's JSON format."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from packaging.version import Version

from spawner.core.problems import TeachlabError
from spawner.images.advisories import Advisory, load_advisories, scan_packages

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "advisories"
PYPA = FIXTURES / "pypa-2024-10-10"
SERVER_FIXTURE = FIXTURES / "server-fixture"


@pytest.fixture(scope="module")
def pypa():
    return load_advisories(PYPA)


@pytest.mark.parametrize(
    "package, version, expected",
    [
        pytest.param("tornado", "6.3.1", ["PYSEC-2023-75"], id="tornado-before-fix"),
        pytest.param("tornado", "6.3.2", [], id="tornado-fixed"),
        pytest.param("Tornado", "5.0", ["PYSEC-2023-75"], id="name-not-canonical"),
        pytest.param("requests", "2.30.0", ["PYSEC-2023-74"], id="requests-in-range"),
        pytest.param("requests", "2.2.1", [], id="requests-before-introduced"),
        pytest.param("requests", "2.31.0", [], id="requests-fixed"),
        pytest.param("pip", "23.2.1", ["PYSEC-2023-228"], id="pip-before-23.3"),
        pytest.param("pip", "26.0.1", [], id="pip-current"),
        pytest.param("jupyter-server", "2.7.1", ["PYSEC-2023-155"], id="jupyter-server-old"),
        pytest.param("jupyter_server", "2.21.1", [], id="jupyter-server-current"),
        pytest.param("numpy", "1.0", [], id="no-advisory"),
    ],
)
def test_real_advisories_flag_the_versions_they_name(pypa, package, version, expected):
    assert [advisory.id for advisory in pypa.affecting(package, version)] == expected


def test_a_finding_says_package_installed_and_fixed_versions(pypa):
    findings, skipped = scan_packages(pypa, {"tornado": "6.3.1", "tabulate": "0.9.0"})
    assert skipped == []
    (finding,) = findings
    assert (finding.id, finding.package, finding.installed, finding.fixed) == ("PYSEC-2023-75", "tornado", "6.3.1", ("6.3.2",))
    assert finding.aliases == ("CVE-2023-28370",)


def test_a_version_that_cannot_be_compared_is_skipped_not_called_safe(pypa):
    findings, skipped = scan_packages(pypa, {"tornado": "not-a-version", "requests": "2.32.3"})
    assert findings == [] and skipped == ["tornado==not-a-version"]


def test_the_data_says_its_date_and_size(pypa):
    assert pypa.date == date(2023, 11, 3)  # the newest record's "modified"
    assert pypa.records == 6 and pypa.source == str(PYPA)


def test_git_ranges_are_not_read_as_versions(pypa):
    """PYSEC-2023-155 has a GIT range fixed at a commit hash: only its ECOSYSTEM range counts."""
    assert pypa.affecting("jupyter-server", "2.7.2") == []


def test_osv_export_json_records_are_read(tmp_path):
    database = load_advisories(SERVER_FIXTURE)
    assert [a.id for a in database.affecting("jupyter-server", "2.21.1")] == ["TEACHLAB-TEST-0001"]
    assert database.affecting("jupyter-server", "2.21.2") == [] and database.date == date(2026, 11, 20)


def test_withdrawn_advisories_and_other_ecosystems_are_ignored(tmp_path):
    record = {
        "id": "X-1",
        "modified": "2026-01-01T00:00:00Z",
        "affected": [{"package": {"ecosystem": "npm", "name": "tornado"}, "versions": ["6.3.1"]}],
    }
    (tmp_path / "npm.json").write_text(json.dumps(record))
    withdrawn = {**record, "id": "X-2", "withdrawn": "2026-01-02T00:00:00Z"}
    withdrawn["affected"] = [{"package": {"ecosystem": "PyPI", "name": "tornado"}, "versions": ["6.3.1"]}]
    (tmp_path / "withdrawn.json").write_text(json.dumps(withdrawn))
    assert load_advisories(tmp_path).affecting("tornado", "6.3.1") == []


@pytest.mark.parametrize(
    "events, version, affected",
    [
        pytest.param([("introduced", "0"), ("fixed", "2.0")], "1.9", True, id="before-fixed"),
        pytest.param([("introduced", "0"), ("fixed", "2.0")], "2.0", False, id="at-fixed"),
        pytest.param([("introduced", "1.0"), ("last_affected", "1.5")], "1.5", True, id="at-last-affected"),
        pytest.param([("introduced", "1.0"), ("last_affected", "1.5")], "1.5.1", False, id="after-last-affected"),
        pytest.param(
            [("introduced", "1.0"), ("fixed", "1.2"), ("introduced", "2.0"), ("fixed", "2.1")], "1.5", False, id="between-ranges"
        ),
        pytest.param(
            [("introduced", "1.0"), ("fixed", "1.2"), ("introduced", "2.0"), ("fixed", "2.1")], "2.0.5", True, id="second-range"
        ),
        pytest.param([("introduced", "1.0"), ("limit", "1.4")], "1.5", False, id="past-limit"),
        pytest.param([("introduced", "1.0")], "99", True, id="no-fix-yet"),
    ],
)
def test_osv_range_semantics(events, version, affected):
    advisory = Advisory("X", (), "", "pkg", frozenset(), (tuple(events),))
    assert advisory.affects(Version(version)) is affected


def test_missing_or_empty_data_is_one_clear_error(tmp_path):
    with pytest.raises(TeachlabError, match=r"does not exist .*TEACHLAB_ADVISORY_DB or --advisory-db"):
        load_advisories(tmp_path / "nowhere")
    with pytest.raises(TeachlabError, match="holds no OSV records"):
        load_advisories(tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(TeachlabError, match=r"broken\.json: not an OSV record"):
        load_advisories(tmp_path)
