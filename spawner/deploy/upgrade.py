"""Upgrade the lab to the images just built: migrate the databases, roll the hub, keep students' servers.

``teachlab deploy build`` makes the new images; ``upgrade`` then

1. dumps both databases to ``<backups>/pre-upgrade-<time>/`` (the way back if the new release is wrong);
2. stops the hub (``docker service scale hub=0``): students' servers keep running, the proxy keeps their
   routes, so open notebooks keep working while the hub is away;
3. runs ``python -m spawner.deploy.migrate`` from the new hub image (JupyterHub's upgrade-db, the ledger's
   and the SSH keys' Alembic migrations); if it fails, the old hub is started again and nothing changed;
4. deploys the stack with the new images, which starts the new hub; it finds every running server again.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from dataclasses import dataclass

from ..core.contract import Labels
from ..core.problems import TeachlabError
from ..core.secrets import private_folder
from . import audit
from .lab import ProductionLab
from .stack import DATABASE_USER, HUB_DATABASE, PORTS, RECORDS_DATABASE, hub_environment, secret


@dataclass(frozen=True)
class UpgradeResult:
    old_image: str
    new_image: str
    revisions: dict
    servers_kept: int
    line: str


def _dump_databases(lab: ProductionLab) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = lab.site.backups_dir / f"pre-upgrade-{stamp}"
    private_folder(folder)
    postgres = lab.swarm.task_container("postgres").id
    for database in (HUB_DATABASE, RECORDS_DATABASE):
        with (folder / f"{database}.dump").open("wb") as dump:
            result = subprocess.run(
                ["docker", "exec", postgres, "pg_dump", "-h", "/run/postgresql", "-p", str(PORTS.database)]
                + ["-U", DATABASE_USER, "-Fc", database],
                stdout=dump,
                stderr=subprocess.PIPE,
                timeout=3600,
            )
        if result.returncode != 0:
            raise TeachlabError(f"pg_dump {database} failed: {result.stderr.decode(errors='replace').strip()[-300:]}")
    return str(folder)


def run_migrations(lab: ProductionLab, image: str) -> dict:
    """The migration job in a one-off container of ``image``; its revisions before and after."""
    images = lab.images()
    password = secret("database_password")
    lab.secret_bytes(password)  # made on the first deploy; here it must exist
    container = lab.client.containers.run(
        image,
        ["python", "-m", "spawner.deploy.migrate"],
        detach=True,
        network_mode="host",
        environment=hub_environment(lab.site, images),
        volumes={
            str(lab.secret_path(password)): {"bind": str(password.container_path), "mode": "ro"},
            str(lab.site.state_dir): {"bind": str(lab.site.state_dir), "mode": "rw"},
        },
        labels={Labels.HELPER: "migrate", Labels.LAB: lab.lab_id},
    )
    try:
        status = container.wait(timeout=900)
        output = container.logs().decode("utf-8", "replace").strip().splitlines()
    finally:
        container.remove(force=True)
    if status.get("StatusCode") != 0:
        raise TeachlabError(f"the migrations failed: {output[-1] if output else 'no output'}")
    return json.loads(output[-1])


def upgrade(lab: ProductionLab) -> UpgradeResult:
    lab.swarm.require_manager()
    images = lab.images()
    hub = lab.swarm.service("hub")
    if hub is None:
        raise TeachlabError("no Teachlab stack runs here: deploy it first (teachlab deploy up)")
    old_image = hub.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0]
    servers = {container.id for container in lab.student_containers() if container.status == "running"}
    with lab.progress.step("dump both databases before the upgrade"):
        dumps = _dump_databases(lab)
    with lab.progress.step("stop the hub (students' servers keep running)"):
        lab.swarm.scale("hub", 0)
    try:
        with lab.progress.step(f"migrate the databases with {images.hub}"):
            revisions = run_migrations(lab, images.hub)
    except TeachlabError:
        with lab.progress.step(f"start the hub again on {old_image}"):
            lab.swarm.scale("hub", 1)
        raise
    lab.deploy(images)
    kept = {container.id for container in lab.student_containers() if container.status == "running"}
    line = audit.record(
        lab.site.state_dir,
        "upgrade",
        old_image=old_image,
        new_image=images.hub,
        revisions=revisions,
        servers_running_before=len(servers),
        servers_still_running=len(servers & kept),
        dumps=dumps,
    )
    return UpgradeResult(old_image, images.hub, revisions, len(servers & kept), line)
