"""One production lab on this server, as the site file describes it: deploy it, show it, take it down.

``ProductionLab`` joins the checked site file, this engine and its swarm, the lab's secrets folder and the
hub's REST API; the other deploy commands (backups, upgrades, the end of a term) work through it.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import docker
import sqlalchemy

from ..core import naming
from ..core.contract import Labels, StateLayout
from ..core.problems import TeachlabError
from ..core.progress import Progress
from ..core.secrets import hex_secret, private_folder, write_private
from ..engine import connect
from ..images.settings import BuildSettings
from ..node.disks import VolumeStore
from .certificates import NodeCertificates
from .hubapi import DeployHubApi
from .images import StackImageBuilder
from .site import Site
from .stack import (
    ALL_SECRETS,
    DATABASE_USER,
    HUB_DATABASE,
    OIDC_CLIENT_SECRET,
    PORTS,
    RECORDS_DATABASE,
    STACK_NAME,
    TLS_CERTIFICATE,
    TLS_KEY,
    LabSecret,
    StackImages,
    content_name,
    hub_settings,
    render_nginx_config,
    render_stack,
    stack_secrets,
)
from .swarm import ServiceState, Swarm

DEPLOY_FOLDER = "deploy"  # <state>/deploy/stack.yml: the rendered stack file


def today() -> datetime.date:
    """Today, or the fixed day of ``TEACHLAB_TODAY`` (tests jump in time, as the hub's own setting lets them)."""
    fixed = os.environ.get("TEACHLAB_TODAY")
    return datetime.date.fromisoformat(fixed) if fixed else datetime.date.today()


@dataclass
class ProductionLab:
    site: Site
    progress: Progress = field(default_factory=lambda: Progress(quiet=True))
    client: docker.DockerClient = field(default_factory=connect)

    @cached_property
    def swarm(self) -> Swarm:
        return Swarm(self.client, STACK_NAME)

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.site.state_dir)

    @property
    def names(self) -> naming.LabNames:
        return naming.LabNames(naming.DEFAULT_PREFIX)

    @property
    def volume_store(self) -> VolumeStore:
        """The sized work volumes, made and mounted by this process (the admin's commands run as root on the node)."""
        return VolumeStore(self.layout.volumes)

    @property
    def build_settings(self) -> BuildSettings:
        return BuildSettings.from_environment(state_dir=self.site.state_dir, image_namespace=self.site.image_namespace)

    def image_builder(self) -> StackImageBuilder:
        return StackImageBuilder(self.build_settings, self.client, self.progress, with_registry=self.site.swarm is not None)

    def node_certificates(self) -> NodeCertificates:
        """On a swarm: the lab's node CA, the hub's client certificate and the registry's, made when missing."""
        return NodeCertificates(self.site.node_certificates_dir).ensure(self.site.swarm.manager_address)

    def images(self) -> StackImages:
        return self.image_builder().current()

    @property
    def lab_id(self) -> str:
        return hub_settings(self.site, StackImages("", "", "", "")).lab_id

    @property
    def lab_filter(self) -> dict[str, str]:
        return {"label": f"{Labels.LAB}={self.lab_id}"}

    # -- secrets -----------------------------------------------------------------------------------------
    def secret_path(self, secret: LabSecret) -> Path:
        if secret is OIDC_CLIENT_SECRET:
            return self.site.client_secret_file
        if secret is TLS_CERTIFICATE:
            return self.site.certificate
        if secret is TLS_KEY:
            return self.site.key
        return self.site.secrets_dir / secret.file

    def secret_bytes(self, secret: LabSecret) -> bytes:
        """A secret's content; the lab's own ones are made (random, 0600) the first time."""
        path = self.secret_path(secret)
        if secret.generated:
            private_folder(self.site.secrets_dir)
            return (hex_secret(path) + "\n").encode()
        return path.read_bytes()

    def write_secret(self, secret: LabSecret, data: bytes) -> None:
        write_private(self.secret_path(secret), data)

    def hub_api(self) -> DeployHubApi:
        token = self.secret_bytes(next(s for s in ALL_SECRETS if s.name == "deploy_token")).decode().strip()
        return DeployHubApi(f"http://{self.site.hub_address}:{PORTS.hub}/hub/api", token)

    def database_url(self, database: str) -> sqlalchemy.URL:
        """A URL with the password, for this process only (never written anywhere, never in a variable)."""
        password = self.secret_bytes(next(s for s in ALL_SECRETS if s.name == "database_password")).decode().strip()
        return sqlalchemy.URL.create(
            "postgresql+psycopg",
            username=DATABASE_USER,
            password=password,
            host="127.0.0.1",
            port=PORTS.database,
            database=database,
        )

    @property
    def records_url(self) -> sqlalchemy.URL:
        return self.database_url(RECORDS_DATABASE)

    @property
    def hub_database_url(self) -> sqlalchemy.URL:
        return self.database_url(HUB_DATABASE)

    # -- deploy ------------------------------------------------------------------------------------------
    def render(self, images: StackImages, *, hub_replicas: int = 1) -> Path:
        """Make the Docker secrets and the nginx config, write the stack file; returns its path."""
        names = {}
        if self.site.swarm is not None:
            self._require_swarm_address()
            self.node_certificates()
        for secret in stack_secrets(self.site):
            data = self.secret_bytes(secret)
            names[secret.name] = self.swarm.ensure_secret(content_name(STACK_NAME, secret.name, data), data)
        nginx = render_nginx_config(self.site).encode()
        nginx_name = self.swarm.ensure_config(content_name(STACK_NAME, "nginx", nginx), nginx)
        text = render_stack(self.site, images, names, nginx_name, hub_replicas=hub_replicas)
        path = self.site.state_dir / DEPLOY_FOLDER / "stack.yml"
        private_folder(path.parent)
        path.write_text(text)
        self._kept = [*names.values(), nginx_name]
        return path

    def _require_swarm_address(self) -> None:
        """The site file's manager address is the one this swarm advertises: nodes reach the hub and registry there."""
        advertised = self.client.info().get("Swarm", {}).get("NodeAddr", "")
        wanted = self.site.swarm.manager_address
        if advertised != wanted:
            raise TeachlabError(
                f"{self.site.path}:swarm.manager_address: {wanted} is not the address this swarm manager advertises "
                f"({advertised or 'none'}) (write that address, or docker swarm init --advertise-addr {wanted})"
            )

    def deploy(self, images: StackImages, *, hub_replicas: int = 1, timeout: float = 600) -> list[ServiceState]:
        """Deploy (or update) the stack and wait until every service is healthy."""
        self.swarm.require_manager()
        private_folder(self.site.state_dir)
        self.layout.volumes.mkdir(parents=True, exist_ok=True)
        with self.progress.step("deploy the stack"):
            self.swarm.deploy(self.render(images, hub_replicas=hub_replicas))
        with self.progress.step("wait until every service is healthy"):
            states = self.swarm.wait_until_ready(timeout=timeout, expected={"hub": hub_replicas})
        self.swarm.prune(self._kept)
        return states

    def up(self) -> list[ServiceState]:
        self.swarm.require_manager()
        return self.deploy(self.images())

    def student_containers(self) -> list[Any]:
        """The lab's students' containers on this server (not its helpers, such as the node agent)."""
        containers = self.client.containers.list(all=True, filters=self.lab_filter)
        return [container for container in containers if Labels.HELPER not in (container.labels or {})]

    def down(self, *, stop_servers: bool) -> int:
        """Take the stack down; with ``stop_servers`` first ask the hub to stop every server. Volumes stay."""
        self.swarm.require_manager()
        stopped = 0
        if stop_servers and self.swarm.service("hub") is not None:
            api = self.hub_api()
            pairs = api.running_servers()
            with self.progress.step(f"stop {len(pairs)} server(s)"):
                api.stop_servers(pairs)
            stopped = len(pairs)
        with self.progress.step("remove the stack's services"):
            self.swarm.remove()
        return stopped
