"""A backup's manifest (issue 13): a restore trusts a backup only when every file is there as it was written."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from spawner.core.problems import TeachlabError
from spawner.deploy.backup import FORMAT, MANIFEST, latest_backups, make_manifest, read_manifest, verify_backup

CREATED = datetime.datetime(2026, 6, 30, 18, 0, tzinfo=datetime.timezone.utc)


@pytest.fixture
def backup(tmp_path) -> Path:
    folder = tmp_path / "teachlab-20260630T180000Z"
    (folder / "databases").mkdir(parents=True)
    (folder / "databases" / "jupyterhub.dump").write_bytes(b"PGDMP hub")
    (folder / "databases" / "teachlab.dump").write_bytes(b"PGDMP ledger")
    (folder / "secrets").mkdir()
    (folder / "secrets" / "auth-state-key").write_text("00ff\n")
    (folder / "volumes").mkdir()
    (folder / "volumes" / "teachlab-alice-intro-python-work.tar").write_bytes(b"tar")
    volumes = [
        {"name": "teachlab-alice-intro-python-work", "labels": {"org.teachlab.course": "intro-python"}, "size_bytes": 1 << 30}
    ]
    manifest = make_manifest(
        folder,
        created=CREATED,
        host="lab.example-uni.test",
        site_file=Path("/etc/teachlab/site.yaml"),
        hub_image="teachlab/hub:abc",
        images=["teachlab/course-intro-python:v1"],
        volumes=volumes,
    )
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_the_manifest_lists_every_file_with_its_digest(backup):
    manifest = read_manifest(backup)
    assert manifest["format"] == FORMAT and manifest["created"] == "2026-06-30T18:00:00+00:00"
    assert sorted(manifest["files"]) == [
        "databases/jupyterhub.dump",
        "databases/teachlab.dump",
        "secrets/auth-state-key",
        "volumes/teachlab-alice-intro-python-work.tar",
    ]
    assert all(len(digest) == 64 for digest in manifest["files"].values())
    assert manifest["volumes"][0]["size_bytes"] == 1 << 30
    verify_backup(backup, manifest)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda folder: (folder / "databases" / "teachlab.dump").write_bytes(b"PGDMP changed"), id="changed"),
        pytest.param(lambda folder: (folder / "secrets" / "auth-state-key").unlink(), id="missing"),
    ],
)
def test_a_changed_or_missing_file_is_refused(backup, damage):
    damage(backup)
    with pytest.raises(TeachlabError, match="missing or changed since the backup was written"):
        verify_backup(backup, read_manifest(backup))


def test_a_folder_that_is_no_backup_or_of_another_format(tmp_path, backup):
    with pytest.raises(TeachlabError, match="is not a Teachlab backup"):
        read_manifest(tmp_path)
    manifest = json.loads((backup / MANIFEST).read_text())
    (backup / MANIFEST).write_text(json.dumps({**manifest, "format": FORMAT + 1}))
    with pytest.raises(TeachlabError, match=f"backup format {FORMAT + 1}"):
        read_manifest(backup)


def test_the_newest_backup_comes_first(tmp_path, backup):
    older = tmp_path / "teachlab-20250101T000000Z"
    older.mkdir()
    (older / MANIFEST).write_text("{}")
    (tmp_path / "teachlab-20990101T000000Z").mkdir()  # no manifest: not a backup (an interrupted one)
    assert latest_backups(tmp_path) == [backup, older]
