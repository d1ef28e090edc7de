"""One backup of the whole lab, and its restore onto an empty server.

A backup is a folder ``<backups>/teachlab-<UTC time>/`` (0700) holding:

============================ ==================================================================================
``manifest.json``            when, from which host, every file with its sha256, every volume with its size
``databases/*.dump``         ``pg_dump -Fc`` of the hub database and of the records (GPU ledger, SSH keys)
``state.tar``                the state folder: published versions with their locks, contents and SBOMs, advisory
                             acceptances, the SSH host key, the audit log (not the volumes, kept below)
``catalog.tar``              the course catalog
``volumes/<name>.tar``       every work and data volume's files (owners kept); sized volumes keep their size
``images.tar``               ``docker save`` of each course's current image and the base image it was built on
``site/``                    the site file, the TLS certificate and key, the provider's client secret
``secrets/``                 the lab's own secrets: cookie secret, auth-state key (without it nobody's stored
                             sign-in can be read), tokens, the database password
============================ ==================================================================================

It holds every key of the lab: keep it where only admins can read it. ``restore_backup`` puts it all back
on a server where Teachlab is installed (and its swarm made), with nothing deployed yet; it builds the stack's
images the server lacks.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from ..core.contract import IMAGE, Labels
from ..core.problems import TeachlabError
from ..core.secrets import private_folder, write_private
from ..engine.volumes import restore_tar, write_tar
from ..gpu.ledger import GpuLedger
from ..images.registry import VersionRegistry
from . import audit
from .lab import DEPLOY_FOLDER, ProductionLab
from .site import load_site
from .stack import (
    DATABASE_USER,
    GENERATED_SECRETS,
    HUB_DATABASE,
    OIDC_CLIENT_SECRET,
    PORTS,
    RECORDS_DATABASE,
    TLS_CERTIFICATE,
    TLS_KEY,
)

FORMAT = 1
MANIFEST = "manifest.json"
DATABASES = (HUB_DATABASE, RECORDS_DATABASE)
# What the state folder's copy leaves out: volumes are saved one by one, the rest is remade at every start.
STATE_EXCLUDED = ("volumes", DEPLOY_FOLDER, "logs", "lab/pgpass")
SITE_FILES = {"site.yaml": None, "tls.crt": TLS_CERTIFICATE, "tls.key": TLS_KEY, "oidc-client-secret": OIDC_CLIENT_SECRET}


@dataclass(frozen=True)
class BackupResult:
    folder: Path
    files: int
    volumes: int
    images: int
    size_bytes: int


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _postgres(lab: ProductionLab) -> str:
    return lab.swarm.task_container("postgres").id


def _tar_folder(source: Path, target: Path, excluded: Iterable[str] = ()) -> None:
    excluded = tuple(excluded)

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        relative = info.name.removeprefix(".").lstrip("/")
        return None if any(relative == item or relative.startswith(item + "/") for item in excluded) else info

    with tarfile.open(target, "w") as archive:
        archive.add(source, arcname=".", filter=keep)


def _course_images(lab: ProductionLab) -> list[str]:
    registry = VersionRegistry(lab.layout.courses)
    references: list[str] = []
    for record_file in sorted(lab.layout.courses.glob("*.json")):
        current = registry.current_image(record_file.stem)
        if current is None:
            continue
        for reference in (current.image, current.base_image):
            if reference and reference not in references:
                references.append(reference)
    return references


def lab_volumes(lab: ProductionLab) -> list:
    """The lab's work and data volumes on this server (the spawner labels each with its course)."""
    return sorted(lab.client.volumes.list(filters={"label": Labels.COURSE}), key=lambda volume: volume.name)


def write_backup(lab: ProductionLab, target: Path | None = None, *, with_images: bool = True) -> BackupResult:
    stamp = datetime.datetime.now(datetime.timezone.utc)
    folder = (target or lab.site.backups_dir) / f"teachlab-{stamp.strftime('%Y%m%dT%H%M%SZ')}"
    private_folder(folder.parent)
    folder.mkdir(mode=0o700)
    image = lab.images().hub
    postgres = _postgres(lab)
    for database in DATABASES:
        path = folder / "databases" / f"{database}.dump"
        private_folder(path.parent)
        with lab.progress.step(f"pg_dump {database}"), path.open("wb") as dump:
            _run(
                ["docker", "exec", postgres, "pg_dump", "-h", "/run/postgresql", "-p", str(PORTS.database)]
                + ["-U", DATABASE_USER, "-Fc", database],
                stdout=dump,
            )
    with lab.progress.step("copy the state folder and the catalog"):
        _tar_folder(lab.site.state_dir, folder / "state.tar", STATE_EXCLUDED)
        _tar_folder(lab.site.catalog, folder / "catalog.tar")
    site_folder = private_folder(folder / "site")
    write_private(site_folder / "site.yaml", lab.site.path.read_bytes())
    for name, secret in SITE_FILES.items():
        if secret is not None:
            write_private(site_folder / name, lab.secret_bytes(secret))
    secrets_folder = private_folder(folder / "secrets")
    for secret in GENERATED_SECRETS:
        write_private(secrets_folder / secret.file, lab.secret_bytes(secret))
    volumes = []
    private_folder(folder / "volumes")
    for volume in lab_volumes(lab):
        sized = lab.volume_store.exists(volume.name)
        with lab.progress.step(f"copy volume {volume.name}"), (folder / "volumes" / f"{volume.name}.tar").open("wb") as out:
            if sized:
                lab.volume_store.ensure_mounted(volume.name)
            write_tar(lab.client, image, volume.name, out, {Labels.LAB: lab.lab_id})
        volumes.append(
            {
                "name": volume.name,
                "labels": volume.attrs.get("Labels") or {},
                "size_bytes": lab.volume_store.image(volume.name).stat().st_size if sized else None,
            }
        )
    images = _course_images(lab) if with_images else []
    if images:
        with lab.progress.step(f"docker save {len(images)} course image(s)"), (folder / "images.tar").open("wb") as out:
            _run(["docker", "save", *images], stdout=out)
    manifest = make_manifest(
        folder,
        created=stamp,
        host=lab.site.host,
        site_file=lab.site.path,
        hub_image=image,
        images=images,
        volumes=volumes,
    )
    files = [folder / name for name in manifest["files"]]
    write_private(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    size = sum(path.stat().st_size for path in files)
    audit.record(lab.site.state_dir, "backup", folder=str(folder), volumes=len(volumes), images=len(images), size_bytes=size)
    return BackupResult(folder, len(files), len(volumes), len(images), size)


def make_manifest(
    folder: Path,
    *,
    created: datetime.datetime,
    host: str,
    site_file: Path,
    hub_image: str,
    images: list[str],
    volumes: list[dict],
) -> dict:
    """The manifest of a backup folder whose files are all written: every file's sha256, so a restore trusts
    nothing that changed; the volumes with their labels and sizes; the images the lab needs back."""
    files = sorted(path for path in folder.rglob("*") if path.is_file() and path.name != MANIFEST)
    return {
        "format": FORMAT,
        "created": created.isoformat(timespec="seconds"),
        "host": host,
        "server": socket.gethostname(),
        "site_file": str(site_file),
        "hub_image": hub_image,
        "images": images,
        "volumes": volumes,
        "files": {str(path.relative_to(folder)): _sha256(path) for path in files},
    }


def _run(command: list[str], **kwargs) -> None:
    result = subprocess.run(command, stderr=subprocess.PIPE, timeout=3600, **kwargs)
    if result.returncode != 0:
        message = (result.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise TeachlabError(f"{' '.join(command[:3])} failed: {message}")


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise TeachlabError(f"{folder} is not a Teachlab backup (no {MANIFEST}); give the folder teachlab deploy backup wrote")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise TeachlabError(f"{folder} was written in backup format {manifest.get('format')}; this release reads {FORMAT}")
    return manifest


def verify_backup(folder: Path, manifest: dict) -> None:
    """Every file is there with the content it had; TeachlabError names the first that is not."""
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file() or _sha256(path) != digest:
            raise TeachlabError(f"{path} is missing or changed since the backup was written: the backup cannot be trusted")


def _restore_file(path: Path, data: bytes) -> None:
    """Put a backed-up file where it belongs; an existing one must be the same (nothing is silently replaced)."""
    if path.exists():
        if path.read_bytes() != data:
            raise TeachlabError(f"{path} exists and differs from the backup's copy: move it away, then restore again")
        return
    write_private(path, data)


def _extract(archive_path: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive_path) as archive:
        # The lab's own files, owners and modes kept. Extraction filters came with Python 3.11.4; Debian 12 has 3.11.2.
        if hasattr(tarfile, "fully_trusted_filter"):
            archive.extractall(target, filter="fully_trusted")
        else:
            archive.extractall(target)  # the backup's own archive, checked against its manifest


def restore_backup(folder: Path, *, site_path: Path | None, progress) -> ProductionLab:
    """Put a backup back onto an empty server: files, images, databases, volumes, then the stack."""
    manifest = read_manifest(folder)
    with progress.step("check the backup's files"):
        verify_backup(folder, manifest)
    site_path = site_path or Path(manifest["site_file"])
    _restore_file(site_path, (folder / "site" / "site.yaml").read_bytes())
    site = load_site(site_path, check_machine=False)
    lab = ProductionLab(site, progress)
    lab.swarm.require_manager()
    if lab.swarm.services():
        raise TeachlabError("a Teachlab stack is deployed here: restore only onto a server without one (teachlab deploy down)")
    for name, secret in SITE_FILES.items():
        if secret is not None:
            _restore_file(lab.secret_path(secret), (folder / "site" / name).read_bytes())
    for secret in GENERATED_SECRETS:
        _restore_file(lab.secret_path(secret), (folder / "secrets" / secret.file).read_bytes())
    if lab.layout.courses.is_dir() and any(lab.layout.courses.iterdir()):
        raise TeachlabError(f"{lab.layout.courses} already holds published courses: restore onto an empty server")
    if not lab.site.catalog.is_dir() or not any(lab.site.catalog.iterdir()):
        with progress.step("restore the catalog"):
            _extract(folder / "catalog.tar", lab.site.catalog)
    site = load_site(site_path)  # now every file it names is here
    lab = ProductionLab(site, progress, lab.client)
    with progress.step("build the stack's images this server lacks"):
        images = lab.image_builder().build()
    with progress.step("restore the state folder"):
        private_folder(site.state_dir)
        _extract(folder / "state.tar", site.state_dir)
    if manifest["images"]:
        with progress.step(f"docker load {len(manifest['images'])} course image(s)"), (folder / "images.tar").open("rb") as data:
            _run(["docker", "load", "--quiet"], stdin=data, stdout=subprocess.DEVNULL)
    lab.deploy(images, hub_replicas=0)
    postgres = _postgres(lab)
    for database in DATABASES:
        with progress.step(f"pg_restore {database}"), (folder / "databases" / f"{database}.dump").open("rb") as dump:
            _run(
                ["docker", "exec", "-i", postgres, "pg_restore", "-h", "/run/postgresql", "-p", str(PORTS.database)]
                + ["-U", DATABASE_USER, "-d", database, "--clean", "--if-exists", "--no-owner", "--exit-on-error"],
                stdin=dump,
                stdout=subprocess.DEVNULL,
            )
    _end_gpu_holdings_at(lab, datetime.datetime.fromisoformat(manifest["created"]))
    for volume in manifest["volumes"]:
        with progress.step(f"restore volume {volume['name']}"):
            _restore_volume(lab, volume, folder / "volumes" / f"{volume['name']}.tar", images.hub)
    states = lab.deploy(images, hub_replicas=1)
    audit.record(
        site.state_dir,
        "restore",
        backup=str(folder),
        created=manifest["created"],
        volumes=len(manifest["volumes"]),
        services=len(states),
    )
    return lab


def _end_gpu_holdings_at(lab: ProductionLab, moment: datetime.datetime) -> None:
    """GPUs held when the backup was taken were used until then, not until the restore: end them at that time."""
    ledger = GpuLedger.open(lab.records_url.render_as_string(hide_password=False), clock=lambda: moment)
    try:
        for holding in ledger.holdings():
            ledger.release(
                username=holding.username, server_name=holding.server_name, reason="the lab was restored from a backup"
            )
    finally:
        ledger.close()


def _restore_volume(lab: ProductionLab, volume: dict, archive: Path, image: str) -> None:
    name = volume["name"]
    try:
        lab.client.volumes.get(name)
        raise TeachlabError(f"volume {name} exists on this server: restore only onto an empty server")
    except docker.errors.NotFound:
        pass
    options = {}
    if volume["size_bytes"] is not None:
        lab.volume_store.create(name, volume["size_bytes"], uid=IMAGE.uid, gid=IMAGE.gid)
        options = {"driver": "local", "driver_opts": lab.volume_store.driver_options(name)}
    lab.client.volumes.create(name=name, labels=volume["labels"], **options)
    with archive.open("rb") as data:
        restore_tar(lab.client, image, name, data, {Labels.LAB: lab.lab_id})


def latest_backups(folder: Path) -> list[Path]:
    return sorted((path for path in folder.glob("teachlab-*") if (path / MANIFEST).is_file()), reverse=True)
