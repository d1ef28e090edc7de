"""The end of a course's term: archive and delete its students' work, keep the archive N days, then delete it.

While the term runs, students download their own work as one zip (``spawner.deploy.workservice``). Once it
has ended, ``archive_course`` stops the course's servers, writes each student's work volume (and, asked to,
the course's data volumes) to ``<archives>/<course>/`` as ``.tar.gz``, removes the volumes, and records when
the archive expires (the site file's ``end_of_term.keep_archives_days``); ``prune_archives`` (a daily timer)
deletes expired archives. Each leaves an audit line.
"""

from __future__ import annotations

import datetime
import gzip
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from ..catalog import load_catalog
from ..core.contract import Labels
from ..core.problems import TeachlabError
from ..core.secrets import private_folder, write_private
from ..engine.volumes import write_tar
from . import audit
from .lab import ProductionLab, today

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ArchivedCourse:
    course: str
    folder: Path
    work_volumes: int
    data_volumes: int
    delete_after: datetime.date
    line: str


def remove_volume(lab: ProductionLab, name: str) -> None:
    """Remove a Docker volume and, for a sized one, its filesystem on this node."""
    try:
        lab.client.volumes.get(name).remove()
    except docker.errors.NotFound:
        pass
    if lab.volume_store.exists(name):
        lab.volume_store.remove(name)


def archive_volume(lab: ProductionLab, volume: str, target: Path, image: str) -> None:
    """``volume``'s files as a gzipped tar at ``target`` (0600)."""
    if lab.volume_store.exists(volume):
        lab.volume_store.ensure_mounted(volume)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    write_private(partial, b"")
    with gzip.open(partial, "wb") as archive:
        write_tar(lab.client, image, volume, archive, {Labels.LAB: lab.lab_id})
    partial.rename(target)


def archive_course(lab: ProductionLab, slug: str, *, with_data: bool = False) -> ArchivedCourse:
    """Archive then delete an ended course's work volumes (and data volumes with ``with_data``)."""
    catalog = load_catalog(lab.site.catalog)
    course = catalog.courses.get(slug)
    if course is None:
        raise TeachlabError(f"no course {slug!r} in {lab.site.catalog} (courses: {', '.join(sorted(catalog.courses))})")
    day = today()
    if course.term.end >= day:
        raise TeachlabError(
            f"{slug}'s term ends on {course.term.end}: archive it after that day (students can download their work until then)"
        )
    image = lab.images().hub
    running = lab.hub_api().running_servers(slug)
    if running:
        with lab.progress.step(f"stop {len(running)} server(s) of {slug}"):
            lab.hub_api().stop_servers(running)
    folder = lab.site.archives_dir / slug
    private_folder(folder)
    work = lab.client.volumes.list(filters={"label": [f"{Labels.COURSE}={slug}", Labels.USER]})
    files = []
    for volume in sorted(work, key=lambda v: v.name):
        owner = volume.attrs["Labels"][Labels.USER]
        target = folder / f"{owner}.tar.gz"
        with lab.progress.step(f"archive {owner}'s work in {slug}"):
            archive_volume(lab, volume.name, target, image)
            remove_volume(lab, volume.name)
        files.append({"file": target.name, "person": owner, "volume": volume.name})
    data_count = 0
    if with_data:
        for name in course.data_volumes:
            volume = lab.names.data_volume(slug, name)
            try:
                lab.client.volumes.get(volume)
            except docker.errors.NotFound:
                continue
            target = folder / f"data-{name}.tar.gz"
            with lab.progress.step(f"archive the data volume {name} of {slug}"):
                archive_volume(lab, volume, target, image)
                remove_volume(lab, volume)
            files.append({"file": target.name, "volume": volume})
            data_count += 1
    delete_after = day + datetime.timedelta(days=lab.site.keep_archives_days)
    manifest = {"course": slug, "archived_on": day.isoformat(), "delete_after": delete_after.isoformat(), "files": files}
    write_private(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    line = audit.record(
        lab.site.state_dir,
        "archive-course",
        course=slug,
        work_volumes=len(files) - data_count,
        data_volumes=data_count,
        archive=str(folder),
        delete_after=delete_after.isoformat(),
    )
    return ArchivedCourse(slug, folder, len(files) - data_count, data_count, delete_after, line)


def prune_archives(lab: ProductionLab) -> list[str]:
    """Delete every course archive whose keeping time is over; returns the audit lines."""
    lines = []
    day = today()
    root = lab.site.archives_dir
    for manifest_path in sorted(root.glob(f"*/{MANIFEST}")) if root.is_dir() else []:
        manifest = json.loads(manifest_path.read_text())
        if datetime.date.fromisoformat(manifest["delete_after"]) > day:
            continue
        shutil.rmtree(manifest_path.parent)
        lines.append(
            audit.record(
                lab.site.state_dir,
                "delete-course-archive",
                course=manifest["course"],
                files=len(manifest["files"]),
                archived_on=manifest["archived_on"],
            )
        )
    return lines


def forget_person_in_archives(lab: ProductionLab, username: str) -> int:
    """Delete a person's archived work from every course archive (erasure); returns how many files."""
    removed = 0
    root = lab.site.archives_dir
    for manifest_path in sorted(root.glob(f"*/{MANIFEST}")) if root.is_dir() else []:
        manifest = json.loads(manifest_path.read_text())
        kept = []
        for entry in manifest["files"]:
            if entry.get("person") == username:
                (manifest_path.parent / entry["file"]).unlink(missing_ok=True)
                removed += 1
            else:
                kept.append(entry)
        if len(kept) != len(manifest["files"]):
            write_private(manifest_path, json.dumps({**manifest, "files": kept}, indent=1).encode())
    return removed
