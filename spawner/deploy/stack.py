"""The stack a site file describes: its secrets, the hub's settings, the rendered stack file and nginx config.

Pure: from a checked ``Site``, the stack's image references and the secrets' contents to the text that
``docker stack deploy`` and nginx read (``deploy/stack/stack.yml.j2``, ``deploy/stack/nginx/nginx.conf.j2``),
as kubespawner's ``make_pod`` builds a manifest; ``spawner.deploy.swarm`` applies it. Tested without Docker
(tests/unit/test_deploy_stack.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2

from ..core import naming
from ..core.contract import REPO_ROOT, Labels
from ..hub.settings import HubSettings
from . import certificates
from .site import NODE_CERTIFICATES_FOLDER, Site

STACK_DIR = REPO_ROOT / "deploy" / "stack"
STACK_NAME = "teachlab"
STUDENTS_NETWORK = "teachlab-students"
SECRETS_MOUNT = Path("/run/secrets")
DATABASE_DIR = "/var/lib/teachlab-postgres"
DATABASE_USER = "teachlab"
HUB_DATABASE = "jupyterhub"
RECORDS_DATABASE = "teachlab"  # the GPU ledger and the SSH keys
NGINX_CONFIG = "/etc/teachlab/nginx.conf"
NGINX_HEALTH_PATH = "/teachlab-nginx-health"
HSTS_SECONDS = 63072000  # two years
HUB_CONFIG = "/opt/teachlab/jupyterhub_config.py"
HUB_VENV = "/opt/teachlab/venv"
REGISTRY_STORAGE = "/var/lib/docker-registry"  # deploy/stack/registry/config.yml's storage


@dataclass(frozen=True)
class Ports:
    """Where each service listens; all but nginx's and the hub's on 127.0.0.1 only."""

    http: int = 80
    https: int = 443
    proxy: int = 8000
    proxy_api: int = 8001
    hub: int = 8081
    database: int = 5432


PORTS = Ports()


@dataclass(frozen=True)
class StackImages:
    """References of the stack's images (``spawner.deploy.images`` builds them); the registry's only on a swarm."""

    hub: str
    proxy: str
    postgres: str
    nginx: str
    registry: str = ""

    def references(self) -> tuple[str, ...]:
        return tuple(reference for reference in (self.hub, self.proxy, self.postgres, self.nginx, self.registry) if reference)


@dataclass(frozen=True)
class LabSecret:
    """A secret of the lab: its file in the site's secrets folder and where services read it."""

    name: str  # the stack file's name for it
    file: str  # in the site's secrets folder; made when missing (``generated``)
    generated: bool  # False: the admin provides it (the provider's client secret, the TLS files)

    @property
    def target(self) -> str:
        """The file name under /run/secrets in the containers."""
        return f"teachlab-{self.name.replace('_', '-')}"

    @property
    def container_path(self) -> Path:
        return SECRETS_MOUNT / self.target


GENERATED_SECRETS = (
    LabSecret("cookie_secret", "cookie-secret", True),
    LabSecret("proxy_token", "proxy-token", True),
    LabSecret("database_password", "database-password", True),
    LabSecret("auth_state_key", "auth-state-key", True),
    LabSecret("deploy_token", "deploy-token", True),
)
OIDC_CLIENT_SECRET = LabSecret("oidc_client_secret", "oidc-client-secret", False)
TLS_CERTIFICATE = LabSecret("tls_certificate", "tls-certificate", False)
TLS_KEY = LabSecret("tls_key", "tls-key", False)
ALL_SECRETS = (*GENERATED_SECRETS, OIDC_CLIENT_SECRET, TLS_CERTIFICATE, TLS_KEY)
HUB_SECRETS = (*GENERATED_SECRETS, OIDC_CLIENT_SECRET)


def _node_file(name: str) -> str:
    return f"{NODE_CERTIFICATES_FOLDER}/{name}"


# On a swarm: the files ``teachlab deploy node-certificates`` makes (spawner.deploy.certificates), in the secrets folder.
ENGINE_CA = LabSecret("engine_ca", _node_file(certificates.CA_FILE), False)
ENGINE_CLIENT_CERTIFICATE = LabSecret("engine_client_certificate", _node_file(certificates.HUB_CERTIFICATE_FILE), False)
ENGINE_CLIENT_KEY = LabSecret("engine_client_key", _node_file(certificates.HUB_KEY_FILE), False)
REGISTRY_CERTIFICATE = LabSecret("registry_certificate", _node_file(certificates.REGISTRY_CERTIFICATE_FILE), False)
REGISTRY_KEY = LabSecret("registry_key", _node_file(certificates.REGISTRY_KEY_FILE), False)
HUB_SWARM_SECRETS = (ENGINE_CA, ENGINE_CLIENT_CERTIFICATE, ENGINE_CLIENT_KEY)
SWARM_SECRETS = (*HUB_SWARM_SECRETS, REGISTRY_CERTIFICATE, REGISTRY_KEY)
_BY_NAME = {secret.name: secret for secret in (*ALL_SECRETS, *SWARM_SECRETS)}


def stack_secrets(site: Site) -> tuple[LabSecret, ...]:
    """Every secret the site's stack uses: the node certificates' too on a swarm."""
    return (*ALL_SECRETS, *SWARM_SECRETS) if site.swarm else ALL_SECRETS


def hub_secrets(site: Site) -> tuple[LabSecret, ...]:
    return (*HUB_SECRETS, *HUB_SWARM_SECRETS) if site.swarm else HUB_SECRETS


def secret(name: str) -> LabSecret:
    return _BY_NAME[name]


def content_name(stack: str, kind: str, data: bytes) -> str:
    """A Docker secret's or config's name: they cannot change, so a new content gets a new name."""
    return f"{stack}-{kind.replace('_', '-')}-{hashlib.sha256(data).hexdigest()[:12]}"


def database_url(database: str, ports: Ports = PORTS) -> str:
    """SQLAlchemy URL of one of the stack's databases (no password: libpq's password file has it)."""
    return f"postgresql+psycopg://{DATABASE_USER}@127.0.0.1:{ports.database}/{database}"


def hub_address(site: Site) -> str:
    return site.hub_address


def hub_settings(site: Site, images: StackImages, ports: Ports = PORTS) -> HubSettings:
    """What the hub service is told: the site file's choices and where the stack puts secrets and databases."""
    path = {item.name: item.container_path for item in _BY_NAME.values()}
    swarm = site.swarm
    on_a_swarm = {}
    if swarm is not None:
        on_a_swarm = dict(
            swarm_placement=True,
            swarm_hub_address=swarm.manager_address,
            node_engine_port=swarm.engine_port,
            node_engine_timeout_seconds=swarm.engine_timeout_seconds,
            node_engine_ca_file=path[ENGINE_CA.name],
            node_engine_certificate_file=path[ENGINE_CLIENT_CERTIFICATE.name],
            node_engine_key_file=path[ENGINE_CLIENT_KEY.name],
            course_data_node=swarm.course_data_node,
        )
    return HubSettings(
        state_dir=site.state_dir,
        catalog_path=site.catalog,
        public_url=site.public_url,
        hub_port=ports.hub,
        proxy_api_url=f"http://127.0.0.1:{ports.proxy_api}",
        name_prefix=naming.DEFAULT_PREFIX,
        network=STUDENTS_NETWORK,
        oidc_issuer=site.issuer,
        oidc_client_id=site.client_id,
        admin_groups=site.admin_groups,
        allowed_groups=site.allowed_groups,
        username_claim=site.username_claim,
        groups_claim=site.groups_claim,
        oidc_scopes=site.scopes,
        claims_from_id_token=site.claims_from == "id_token",
        gpu_inventory=json.dumps([dict(device) for device in site.gpus]) if site.gpus else "",
        gpu_ledger_url=database_url(RECORDS_DATABASE, ports),
        hub_db_url=database_url(HUB_DATABASE, ports),
        database_password_file=path["database_password"],
        cookie_secret_file=path["cookie_secret"],
        proxy_token_file=path["proxy_token"],
        oidc_client_secret_file=path["oidc_client_secret"],
        auth_state_key_file=path["auth_state_key"],
        deploy_token_file=path["deploy_token"],
        student_subnet=site.students_subnet,
        node_agent_image=images.hub,
        ssh_port=site.ssh_port,
        ssh_bind="0.0.0.0",
        **on_a_swarm,
    )


def registry_environment(site: Site) -> dict[str, str]:
    """On a swarm, where publishing pushes course images: the registry as the nodes reach it (it names the images),
    and as this server's engine reaches it (its loopback: Docker trusts a registry there without a certificate)."""
    if site.swarm is None:
        return {}
    return {
        "TEACHLAB_REGISTRY": site.swarm.registry_address,
        "TEACHLAB_REGISTRY_PUSH_ADDRESS": f"127.0.0.1:{site.swarm.registry_port}",
    }


def hub_environment(site: Site, images: StackImages) -> dict[str, str]:
    """The hub service's variables: every setting spelled out, secrets only as file paths."""
    environment = hub_settings(site, images).to_environment() | registry_environment(site)
    environment.pop("TEACHLAB_OIDC_CLIENT_SECRET", None)  # read from its file
    return dict(sorted(environment.items()))


def _templates() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader([str(STACK_DIR), str(STACK_DIR / "nginx")])
    return jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render_nginx_config(site: Site, ports: Ports = PORTS) -> str:
    return (
        _templates()
        .get_template("nginx.conf.j2")
        .render(
            host=site.host,
            http_port=ports.http,
            https_port=ports.https,
            proxy_port=ports.proxy,
            certificate=TLS_CERTIFICATE.container_path,
            key=TLS_KEY.container_path,
            health_path=NGINX_HEALTH_PATH,
            hsts_seconds=HSTS_SECONDS,
        )
    )


def render_stack(
    site: Site,
    images: StackImages,
    external_secrets: Mapping[str, str],
    nginx_config_name: str,
    *,
    hub_replicas: int = 1,
    ports: Ports = PORTS,
) -> str:
    """The stack file; ``external_secrets`` maps each secret's stack name to its Docker secret's name.
    ``hub_replicas`` 0 deploys everything but the hub (a restore fills the databases first)."""
    missing = sorted({item.name for item in stack_secrets(site)} - set(external_secrets))
    if missing:
        raise ValueError(f"no Docker secret for {', '.join(missing)}")
    if site.swarm is not None and not images.registry:
        raise ValueError("a swarm's stack runs the registry: give its image")
    return (
        _templates()
        .get_template("stack.yml.j2")
        .render(
            site_file=site.path,
            images=images,
            ports=ports,
            hub_address=site.hub_address,
            database_dir=DATABASE_DIR,
            secret_files={item.name: item.target for item in stack_secrets(site)},
            hub_environment=hub_environment(site, images),
            hub_secrets={item.name: item.target for item in hub_secrets(site)},
            swarm=site.swarm,
            registry_volume_dir=REGISTRY_STORAGE,
            state_dir=site.state_dir,
            catalog=site.catalog,
            nginx_config=NGINX_CONFIG,
            health_path=NGINX_HEALTH_PATH,
            labels={Labels.STACK: STACK_NAME},
            external_secrets=dict(sorted(external_secrets.items())),
            nginx_config_name=nginx_config_name,
            hub_replicas=hub_replicas,
        )
    )
