"""The production lab of the cluster tests: its accounts and names, how the tests reach it (``ProdLab``), and what
the test puts on a server in place of an admin (the release tarball, the published courses)."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
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
        return self.node.sh(f". /etc/profile.d/teachlab.sh && {command}", check=check, timeout=timeout, env=env)

    def docker(self, *arguments: str, check: bool = True, timeout: float = 300):
        return self.node.docker(*arguments, check=check, timeout=timeout)


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
