"""Publishing scans both Python environments against advisory data on disk, blocks on the server's,
records an admin's acceptance, stores a CycloneDX SBOM, and says "not scanned" without data; audits
re-check current versions. Real engine, real images, real advisory records (tests/fixtures/advisories:
a few PyPA records, and one made-up record against jupyter-server, named TEACHLAB-TEST-0001)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest

from spawner.catalog import load_course
from spawner.images.publish import ScanBlocked, publish_course
from spawner.images.registry import VersionRegistry
from support.catalogs import add_pip_requirements, copy_course

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("print_container_logs_on_failure")]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "advisories"
PYPA = FIXTURES / "pypa-2024-10-10"
SERVER_FIXTURE = FIXTURES / "server-fixture"
VULNERABLE_PIN = "tornado==6.3.1"  # named by PYSEC-2023-75 (tornado before 6.3.2) in the real snapshot


@pytest.fixture
def course_with_a_vulnerable_pin(tmp_path, repo_root, published_examples):
    folder = copy_course(repo_root, "data-analysis", tmp_path / "catalog")
    add_pip_requirements(folder, VULNERABLE_PIN)
    return folder


@pytest.fixture
def settings(build_settings, tmp_path):
    return replace(build_settings, state_dir=tmp_path / "state")


def _teachlab(*args: str, env_changes: dict[str, str]) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "TEACHLAB_ADVISORY_DB"}
    return subprocess.run(
        [sys.executable, "-m", "spawner.cli", *args], capture_output=True, text=True, env={**env, **env_changes}
    )


def test_a_course_environment_finding_is_reported_with_its_id_and_does_not_block(
    docker_client, settings, course_with_a_vulnerable_pin
):
    result = publish_course(
        load_course(course_with_a_vulnerable_pin), settings=replace(settings, advisory_db=PYPA), client=docker_client
    )
    assert result.outcome == "published"
    version = VersionRegistry(settings.registry_dir).current_image("data-analysis")
    scan = version.scan
    assert scan["advisory_data"] == {"source": str(PYPA), "date": "2023-11-03", "records": 6}
    assert [(f["id"], f["package"], f["installed"], f["fixed"]) for f in scan["course"]["findings"]] == [
        ("PYSEC-2023-75", "tornado", "6.3.1", ["6.3.2"])
    ]
    assert scan["server"]["status"] == "no known vulnerabilities" and scan["server"]["packages"] > 100
    assert scan["debian"]["status"] == "not scanned" and scan["debian"]["reason"] == "no Trivy database"
    assert version.kernel_python.startswith("3.9.") and version.server_python.startswith("3.11.")


def test_a_server_finding_blocks_the_publish_until_an_admin_accepts_it(docker_client, settings, course_with_a_vulnerable_pin):
    env = {"TEACHLAB_IMAGE_NAMESPACE": settings.image_namespace}
    common = ["--catalog", str(course_with_a_vulnerable_pin.parent), "--state-dir", str(settings.state_dir)]
    refused = _teachlab("course", "publish", "data-analysis", *common, "--advisory-db", str(SERVER_FIXTURE), env_changes=env)
    assert refused.returncode == 1, refused.stdout
    assert "known vulnerabilities in the Jupyter server environment" in refused.stderr
    assert "TEACHLAB-TEST-0001: jupyter-server 2.21.1 (fixed in 2.21.2)" in refused.stderr
    assert "--accept TEACHLAB-TEST-0001 --reason" in refused.stderr and "Traceback" not in refused.stderr
    assert VersionRegistry(settings.registry_dir).read("data-analysis").versions == ()

    expires = (date.today() + timedelta(days=30)).isoformat()
    accept = ["--accept", "TEACHLAB-TEST-0001", "--reason", "the handler is disabled here", "--expires", expires]
    published = _teachlab(
        "course", "publish", "data-analysis", *common, *accept, env_changes={**env, "TEACHLAB_ADVISORY_DB": str(SERVER_FIXTURE)}
    )
    assert published.returncode == 0, published.stderr
    assert "published data-analysis v1" in published.stdout
    assert "server: 1 finding(s): TEACHLAB-TEST-0001 (1 accepted)" in published.stdout

    listing = _teachlab("course", "versions", "data-analysis", "--json", *common[2:], env_changes=env)
    data = json.loads(listing.stdout)
    (version,) = data["versions"]
    (finding,) = version["scan"]["server"]["findings"]
    assert finding["id"] == "TEACHLAB-TEST-0001" and finding["installed"] == "2.21.1"
    assert finding["accepted"] == {"reason": "the handler is disabled here", "expires": expires, "by": finding["accepted"]["by"]}
    assert version["scan"]["advisory_data"]["date"] == "2026-11-20"
    assert [a["id"] for a in data["acceptances"]] == ["TEACHLAB-TEST-0001"] and data["acceptances"][0]["active"]

    sbom = json.loads(Path(version["sbom"]).read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    purls = {component.get("purl", "").split("@")[0] for component in sbom["components"]}
    assert {"pkg:pypi/jupyter-server", "pkg:pypi/tabulate", "pkg:pypi/tornado"} <= purls
    assert any(purl.startswith("pkg:deb/debian/python3.9") for purl in purls)
    assert any(purl.startswith("pkg:deb/debian/bash") for purl in purls)
    for kind in ("course", "server", "debian"):
        assert Path(version["locks"][kind]).is_file()


def test_without_advisory_data_a_version_says_not_scanned(docker_client, settings, course_with_a_vulnerable_pin):
    env = {"TEACHLAB_IMAGE_NAMESPACE": settings.image_namespace}
    common = ["--catalog", str(course_with_a_vulnerable_pin.parent), "--state-dir", str(settings.state_dir)]
    published = _teachlab("course", "publish", "data-analysis", *common, env_changes=env)
    assert published.returncode == 0, published.stderr
    assert "scan: no advisory data; server: not scanned (no advisory data); course: not scanned" in published.stdout
    data = json.loads(_teachlab("course", "versions", "data-analysis", "--json", *common[2:], env_changes=env).stdout)
    scan = data["versions"][0]["scan"]
    assert scan["advisory_data"] is None
    assert {scan[key]["status"] for key in ("server", "course", "debian")} == {"not scanned"}
    assert Path(data["versions"][0]["sbom"]).is_file()
    table = _teachlab("course", "versions", "data-analysis", *common[2:], env_changes={**env, "COLUMNS": "200"}).stdout
    assert "clean" not in table and "no known" not in table and "not scanned" in table

    # The daily audit with data: the known-vulnerable pin is new, so the exit code is 1 ...
    audit = _teachlab("course", "audit", "--all", *common[2:], "--advisory-db", str(PYPA), env_changes=env)
    assert audit.returncode == 1, audit.stderr
    assert "NEW in course: PYSEC-2023-75 tornado 6.3.1 (fixed in 6.3.2)" in audit.stdout
    recorded = VersionRegistry(settings.registry_dir).current_image("data-analysis").scan["last_audit"]
    assert recorded["advisory_data"]["date"] == "2023-11-03"


def test_an_audit_with_nothing_new_exits_0(docker_client, settings, course_with_a_vulnerable_pin):
    publish_course(load_course(course_with_a_vulnerable_pin), settings=replace(settings, advisory_db=PYPA), client=docker_client)
    env = {"TEACHLAB_IMAGE_NAMESPACE": settings.image_namespace, "TEACHLAB_ADVISORY_DB": str(PYPA)}
    audit = _teachlab("course", "audit", "data-analysis", "--state-dir", str(settings.state_dir), env_changes=env)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "course: 1 finding(s): PYSEC-2023-75" in audit.stdout and "NEW" not in audit.stdout


def test_the_server_finding_blocks_also_through_the_library(docker_client, settings, course_with_a_vulnerable_pin):
    with pytest.raises(ScanBlocked, match="TEACHLAB-TEST-0001"):
        publish_course(
            load_course(course_with_a_vulnerable_pin),
            settings=replace(settings, advisory_db=SERVER_FIXTURE),
            client=docker_client,
        )
    assert VersionRegistry(settings.registry_dir).read("data-analysis").current is None
