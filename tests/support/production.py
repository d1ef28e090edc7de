"""The production lab of the cluster tests: its accounts and names, how the tests reach it (``ProdLab``), and what
the test puts on a server in place of an admin (the release tarball, the published courses)."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from spawner.core.contract import StateLayout
from spawner.hub.settings import HubSettings
from support.cluster import Cluster, Node

DOMAIN = "teachlab-prod.test"
CLIENT_ID = "teachlab"
SERVER_STATE = "/srv/teachlab/state"
SERVER_CATALOG = "/srv/teachlab/course_envs"
SITE_FILE = "/etc/teachlab/site.yaml"
CACHE_LABEL = {"org.teachlab.test-cache": "1"}
PROD_COURSES = ("intro-python", "gpu-course")
STUDENTS = ("alice", "bob", "carol", "dave", "erin", "fiona")
ACCOUNTS = (
    *({"username": name, "name": name.title(), "groups": ["cs101-students"]} for name in STUDENTS),
    {"username": "gail", "name": "Gail", "groups": ["gpu-testers"]},
    {"username": "eve", "name": "Eve", "groups": ["cs101-students", "gpu-testers"]},  # erased on request
    {"username": "prof", "name": "Prof", "groups": ["cs101-staff"]},
    {"username": "admin", "name": "Admin", "groups": ["lab-admins"]},
)
PASSWORD = "correct-horse-battery"  # the provider's accounts are this test's own


def release_tarball(repo_root: Path) -> bytes:
    """The working tree as a release tarball (`git archive` of it: tracked and new files, nothing ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo_root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, tarfile.open(fileobj=zipped, mode="w") as archive:
        for name in sorted(item.decode() for item in listed if item):
            path = repo_root / name
            if path.is_file():
                archive.add(path, arcname=f"teachlab/{name}", recursive=False)
    return buffer.getvalue()


@dataclass
class ProdLab:
    """The production lab as the tests reach it: by name, over HTTPS, through nginx; looks like ``devlab.Lab``
    to the tests' helpers (``HubUser``, the browser's sign-in)."""

    node: Node
    issuer: str
    ca_certificate: Path
    image_namespace: str
    domain: str = DOMAIN

    @property
    def public_url(self) -> str:
        return f"https://{self.domain}"

    def password(self, username: str) -> str:
        return PASSWORD

    def hub_settings(self) -> HubSettings:
        return HubSettings(public_url=self.public_url, per_server_origins=True)

    def server_url(self, username: str, course: str) -> str:
        return self.hub_settings().server_url(username, course)

    def service_url(self, name: str) -> str:
        return self.hub_settings().service_url(name)

    def teachlab(self, *arguments: str, check: bool = True, timeout: float = 900, env: dict | None = None):
        """The admin's `teachlab` command on the server, as root, with the server's profile."""
        command = " ".join(f"'{argument}'" for argument in ("teachlab", *arguments))
        return self.node.sh(
            f". /etc/profile.d/teachlab.sh && {command}", check=check, timeout=timeout, env={**self.environment, **(env or {})}
        )

    @property
    def environment(self) -> dict[str, str]:
        """What the test's admin has in the environment besides the server's profile: images are named in the
        test session's namespace."""
        return {"TEACHLAB_IMAGE_NAMESPACE": self.image_namespace}

    def docker(self, *arguments: str, check: bool = True, timeout: float = 300):
        return self.node.docker(*arguments, check=check, timeout=timeout)

    # -- what the tests look at on the server --------------------------------------------------------------
    def site_value(self, name: str) -> str:
        """An attribute of the server's checked site file (e.g. ``hub_address``)."""
        return _on_server(self, f"print(json.dumps(str(lab.site.{name})))")

    def stack_fingerprint(self) -> str:
        """The stack's services' specifications (what a deploy changes), secrets and configs."""
        return self.node.sh(
            "docker service inspect --format '{{json .Spec}}' $(docker service ls -q) && docker secret ls -q | sort "
            "&& docker config ls -q | sort"
        ).stdout

    def server_containers(self) -> dict[str, str]:
        """Students' running containers on the server: name -> start time (a restarted one shows)."""
        output = self.docker("ps", "--filter", "label=org.teachlab.user", "--format", "{{.Names}}").stdout.split()
        if not output:
            return {}
        started = self.docker("inspect", "--format", "{{.Name}} {{.State.StartedAt}}", *output).stdout.split("\n")
        return dict(line.lstrip("/").split(" ", 1) for line in started if line.strip())

    def server_container(self, user: str, course: str) -> str:
        names = self.docker(
            "ps",
            "--filter",
            f"label=org.teachlab.user={user}",
            "--filter",
            f"label=org.teachlab.course={course}",
            "--format",
            "{{.Names}}",
        ).stdout.split()
        assert len(names) == 1, f"{user}/{course}: {names}"
        return names[0]

    def hub_container(self) -> str:
        names = self.docker("ps", "--filter", "label=com.docker.swarm.service.name=teachlab_hub", "--format", "{{.ID}}")
        ids = names.stdout.split()
        assert len(ids) == 1, ids
        return ids[0]

    def hub_image(self) -> str:
        spec = self.docker("service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", "teachlab_hub")
        return spec.stdout.strip().split("@")[0]

    def wait_for_new_hub(self, old: str, timeout: float = 240) -> str:
        """The hub task Swarm started after ``old`` went, once it is healthy and answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = self.docker(
                "ps",
                "--filter",
                "label=com.docker.swarm.service.name=teachlab_hub",
                "--filter",
                "health=healthy",
                "--format",
                "{{.ID}}",
            ).stdout.split()
            if ids and ids[0] != old:
                return ids[0]
            time.sleep(2)
        raise AssertionError(
            f"no new healthy hub task within {timeout:.0f} s:\n" + self.docker("service", "ps", "teachlab_hub").stdout
        )

    def volumes(self, *, course: str | None = None, user: str | None = None) -> dict[str, dict]:
        """The server's students' volumes (name -> labels) of a course or a person."""
        filters = [f"label=org.teachlab.course={course}"] if course else []
        filters += [f"label=org.teachlab.user={user}"] if user else []
        arguments = [item for value in filters for item in ("--filter", value)]
        names = self.docker("volume", "ls", "-q", *arguments).stdout.split()
        if not names:
            return {}
        labels = self.docker("volume", "inspect", "--format", "{{json .Labels}}", *names).stdout.splitlines()
        return {name: json.loads(line) for name, line in zip(names, labels, strict=True)}

    def gpu_facts(self) -> dict:
        return _on_server(self, GPU_FACTS)

    def records_summary(self) -> dict:
        return _on_server(self, RECORDS_SUMMARY)

    def records_of(self, username: str) -> dict:
        return _on_server(self, RECORDS_OF, username)

    def add_ssh_key(self, username: str) -> None:
        _on_server(self, ADD_SSH_KEY, username)

    def audit_log(self) -> str:
        return self.node.read_file(f"{SERVER_STATE}/audit.log").decode()

    def downgrade_hub_database(self, revision: str) -> None:
        assert _on_server(self, DOWNGRADE_HUB_DATABASE, revision) == revision

    def upgrade_as_documented(self, tarball: bytes, document: Path):
        """docs/admins.md's Upgrades steps as written, with the new release at /root/teachlab-next.tar.gz."""
        from support.admin_docs import install_script

        self.node.write_file("/root/teachlab-next.tar.gz", tarball)
        script = ". /etc/profile.d/teachlab.sh\n" + install_script(document, {}, "Upgrades")
        return self.node.sh(script, timeout=1200, env=self.environment)


def publish_on_server(node: Node, cluster: Cluster, build_settings, prod_courses, prod_catalog) -> float:
    """What an admin's `teachlab course publish` leaves on the server: the versions' records and their images."""
    references = sorted({reference for result in prod_courses.values() for reference in (result.image,)})
    registry = StateLayout(build_settings.state_dir).courses
    base_images = {json.loads((registry / f"{slug}.json").read_text())["versions"][-1]["base_image"] for slug in PROD_COURSES}
    seconds = cluster.load_images([*references, *sorted(base_images)], [node])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for slug in PROD_COURSES:
            archive.add(registry / f"{slug}.json", arcname=f"{slug}.json")
            archive.add(registry / slug, arcname=slug)
    node.sh(f"mkdir -p {SERVER_STATE}/courses && tar -xf - -C {SERVER_STATE}/courses", stdin=buffer.getvalue())
    gpu = io.BytesIO()
    with tarfile.open(fileobj=gpu, mode="w") as archive:
        archive.add(prod_catalog / "gpu-course", arcname="gpu-course")
    node.sh(f"tar -xf - -C {SERVER_CATALOG}", stdin=gpu.getvalue())
    return seconds


@dataclass
class InstalledServer:
    cluster: Cluster
    node: Node
    returncode: int
    output: str
    install_seconds: float
    load_seconds: float


GPU_COURSE = "gpu-course"
# JupyterHub's migration head before its current one: the hub database of the previous release (JupyterHub 5).
PREVIOUS_JUPYTERHUB_HEAD = "ff1860e38070"
SERVER_PYTHON = "/opt/teachlab/.venv/bin/python"

# Scripts the tests run on the server with the admin's Teachlab (its venv, its site file): each prints JSON.
_ON_SERVER_PRELUDE = """
import json, os, sys
from pathlib import Path
from spawner.deploy.lab import ProductionLab
from spawner.deploy.site import load_site
lab = ProductionLab(load_site(Path(os.environ["TEACHLAB_SITE_FILE"])))
records = lab.records_url.render_as_string(hide_password=False)
"""
GPU_FACTS = """
from spawner.core.contract import Labels
from spawner.gpu.ledger import GpuLedger
ledger = GpuLedger.open(records)
holdings = sorted([h.username, h.server_name, h.device_uuid] for h in ledger.holdings())
containers = sorted(
    [c.labels[Labels.USER], c.labels[Labels.SERVER], uuid]
    for c in lab.student_containers() if c.status == "running"
    for uuid in filter(None, (c.labels.get(Labels.GPUS) or "").split(","))
)
print(json.dumps({"holdings": holdings, "containers": containers}))
"""
RECORDS_SUMMARY = """
from spawner.gpu.ledger import GpuLedger
ledger = GpuLedger.open(records)
courses = {}
for slug in ("intro-python", "gpu-course"):
    record = json.loads((lab.layout.courses / (slug + ".json")).read_text())
    courses[slug] = {"current": record["current"], "versions": [[v["version"], v["image"]] for v in record["versions"]]}
print(json.dumps({
    "quotas": ledger.course_quotas(),
    "usage": sorted([row.course, row.username, round(row.gpu_seconds, 3)] for row in ledger.usage_report()),
    "courses": courses,
}, default=str))
"""
RECORDS_OF = """
from spawner.gpu.ledger import GpuLedger
from spawner.ssh.keys import SshKeyStore
import sqlalchemy
name = sys.argv[1]
keys = SshKeyStore.open(records).keys_of(name)
engine = sqlalchemy.create_engine(records)
with engine.connect() as connection:
    gpu_rows = sum(
        connection.execute(sqlalchemy.text(f"SELECT count(*) FROM {table} WHERE username = :name"), {"name": name}).scalar()
        for table in ("gpu_holdings", "gpu_usage_intervals", "gpu_user_overrides")
    )
print(json.dumps({"ssh_keys": len(keys), "gpu_rows": gpu_rows, "hub_user": lab.hub_api().user(name) is not None}))
"""
ADD_SSH_KEY = """
from spawner.ssh.keys import SshKeyStore
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
SshKeyStore.open(records).add(sys.argv[1], public + " test-key")
print(json.dumps(True))
"""
DOWNGRADE_HUB_DATABASE = """
from alembic import command
from alembic.config import Config
from jupyterhub import dbutil
with dbutil._temp_alembic_ini(lab.hub_database_url.render_as_string(hide_password=False)) as ini:
    command.downgrade(Config(ini), sys.argv[1])
from spawner.deploy.migrate import JUPYTERHUB_VERSION_TABLE, revision
print(json.dumps(revision(lab.hub_database_url.render_as_string(hide_password=False), JUPYTERHUB_VERSION_TABLE)))
"""


def _on_server(lab: ProdLab, script: str, *arguments: str):
    quoted = " ".join(f"'{argument}'" for argument in arguments)
    result = lab.node.sh(
        f". /etc/profile.d/teachlab.sh && {SERVER_PYTHON} - {quoted}", stdin=_ON_SERVER_PRELUDE + script, env=lab.environment
    )
    return json.loads(result.stdout.strip().splitlines()[-1])
