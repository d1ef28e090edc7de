"""Deployment settings of one hub, read from ``TEACHLAB_*`` variables when the hub loads its config.

``teachlab lab up``, the tests and a production stack set these variables when they start the hub.
Each field names its variable and says what it is for; ``docs/configuration.md`` is generated from
them. Read only when ``HubSettings.from_environment()`` is called, never at import. A value that
cannot be read is a one-line problem naming the variable, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from ..core.contract import REPO_ROOT, STATE_DIR_VARIABLE, StateLayout, default_state_dir
from ..core.problems import Problem, ProblemsError
from ..core.units import parse_memory


def _names(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _labels(text: str) -> dict[str, str]:
    value = json.loads(text)
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("must be a JSON object of text keys and values")
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError("must be true or false")
    return value in ("1", "true", "yes", "on")


def _time_zone(text: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("is not a time zone name") from None
    return text


def _optional(text: str) -> str | None:
    return text or None


def _path(text: str) -> Path | None:
    return Path(text) if text else None


def setting(variable: str, default: Any, help: str, *, parse: Callable[[str], Any] = str, example: str = "") -> Any:
    """A field read from ``variable`` (``parse`` turns its text into the value)."""
    metadata = {"variable": variable, "help": help, "parse": parse, "example": example}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _default(spec: Any) -> Any:
    return spec.default_factory() if spec.default is MISSING else spec.default


@dataclass(frozen=True)
class HubSettings:
    """Everything a deployment decides about its hub; the defaults run the demo lab on one machine."""

    state_dir: Path = setting(
        STATE_DIR_VARIABLE,
        REPO_ROOT / ".teachlab",
        "State folder shared with the `teachlab` CLI: published versions, the hub database, the GPU ledger, secrets.",
        parse=Path,
        example="/srv/teachlab/state",
    )
    catalog_path: Path = setting(
        "TEACHLAB_CATALOG",
        REPO_ROOT / "course_envs",
        "Course catalog folder (`<slug>/course.yaml` + `environment.yml`); re-read when it changes.",
        parse=Path,
        example="/srv/teachlab/course_envs",
    )
    public_url: str = setting(
        "TEACHLAB_PUBLIC_URL",
        "http://127.0.0.1:8000",
        "Where people open the lab (the proxy's public address).",
        example="https://lab.example.edu",
    )
    hub_port: int = setting(
        "TEACHLAB_HUB_PORT",
        8081,
        "Port of the hub's own API, bound on the students' network gateway so that servers reach it.",
        parse=int,
    )
    proxy_api_url: str = setting(
        "TEACHLAB_PROXY_API_URL", "http://127.0.0.1:8001", "The proxy's REST API (configurable-http-proxy), which the hub drives."
    )
    name_prefix: str = setting(
        "TEACHLAB_NAME_PREFIX",
        "teachlab",
        "Prefix of the lab's container and volume names (a letter, then up to 19 "
        "lowercase letters and digits); two labs on one Docker engine need different ones. Never change it while "
        "students have work: their volumes are found by name.",
        example="teachlab",
    )
    network: str = setting(
        "TEACHLAB_NETWORK",
        "teachlab-students",
        "Docker network of student containers (created with container-to-container traffic off).",
    )
    oidc_issuer: str | None = setting(
        "TEACHLAB_OIDC_ISSUER",
        None,
        "The university's OpenID Connect issuer; its discovery document gives the login endpoints.",
        parse=_optional,
        example="https://login.example.edu/realms/university",
    )
    oidc_client_id: str = setting(
        "TEACHLAB_OIDC_CLIENT_ID", "teachlab-hub", "Client id the lab is registered under at the provider."
    )
    oidc_client_secret: str = setting("TEACHLAB_OIDC_CLIENT_SECRET", "", "That client's secret.")
    admin_groups: tuple[str, ...] = setting(
        "TEACHLAB_ADMIN_GROUPS",
        ("lab-admins",),
        "Provider groups whose members are hub admins (comma separated).",
        parse=_names,
        example="lab-admins,it-staff",
    )
    cli_token: str | None = setting(
        "TEACHLAB_CLI_TOKEN", None, "API token of the `teachlab` CLI's hub service (none: no CLI service).", parse=_optional
    )
    metrics_token: str | None = setting(
        "TEACHLAB_METRICS_TOKEN",
        None,
        "API token of the monitoring system: it may read the hub's Prometheus metrics (/hub/metrics) and nothing else.",
        parse=_optional,
    )
    cull_every_seconds: int = setting(
        "TEACHLAB_CULL_EVERY", 60, "How often the idle culler looks for idle servers (seconds).", parse=int
    )
    poll_interval_seconds: int = setting(
        "TEACHLAB_POLL_INTERVAL", 30, "How often the hub checks that each server's container still runs (seconds).", parse=int
    )
    extra_labels: Mapping[str, str] = setting(
        "TEACHLAB_EXTRA_LABELS",
        {},
        "Labels added to every container, volume and network the lab creates (a JSON object).",
        parse=_labels,
        example='{"org.example.lab": "cs-department"}',
    )
    today: str | None = setting(
        "TEACHLAB_TODAY",
        None,
        'Fixes "today" for course terms (ISO date; tests and demos).',
        parse=_optional,
        example="2026-11-15",
    )
    gpu_inventory: str = setting(
        "TEACHLAB_GPU_INVENTORY",
        "",
        "The GPUs this hub gives out: `nvml` discovers them, a JSON list declares them, empty means none.",
        example="nvml",
    )
    gpu_ledger_url: str | None = setting(
        "TEACHLAB_GPU_LEDGER_URL",
        None,
        "SQLAlchemy URL of the GPU ledger (default: SQLite in the state folder).",
        parse=_optional,
        example="postgresql://teachlab@db/teachlab",
    )
    gpu_service_port: int = setting(
        "TEACHLAB_GPU_SERVICE_PORT", 8083, "Port of the `teachlab-gpu` service on 127.0.0.1.", parse=int
    )
    courses_service_port: int = setting(
        "TEACHLAB_COURSES_SERVICE_PORT",
        8086,
        "Port of the `teachlab-courses` service on 127.0.0.1 (instructors' publish and class pages).",
        parse=int,
    )
    per_server_origins: bool = setting(
        "TEACHLAB_PER_SERVER_ORIGINS",
        True,
        "Serve each user's servers on an origin of their own "
        "(`https://<user>.<host>`, JupyterHub's subdomain_host) with host-prefixed cookies, so HTML a student writes "
        "never runs with an instructor's hub session. Needs wildcard DNS and a wildcard certificate.",
        parse=_boolean,
        example="false",
    )
    auth_refresh_seconds: int = setting(
        "TEACHLAB_AUTH_REFRESH_SECONDS",
        300,
        "Refresh a person's groups from the provider when their last refresh is "
        "older than this (seconds), before every start, and for running servers: a student removed from a course loses "
        "its servers within this time.",
        parse=int,
    )
    cookie_max_age_days: float = setting(
        "TEACHLAB_COOKIE_MAX_AGE_DAYS", 1.0, "How long a browser sign-in lasts (days).", parse=float
    )
    token_max_days: float = setting(
        "TEACHLAB_TOKEN_MAX_DAYS",
        30.0,
        "The longest lifetime of an API token anyone may make (days); no token lives forever.",
        parse=float,
    )
    username_claim: str = setting(
        "TEACHLAB_USERNAME_CLAIM",
        "preferred_username",
        "The OpenID Connect claim that becomes the username. An "
        "immutable claim (`sub`, or an employee number) is safer than one a person can change.",
        example="sub",
    )
    allowed_groups: tuple[str, ...] = setting(
        "TEACHLAB_ALLOWED_GROUPS",
        (),
        "Provider groups whose members may sign in (comma separated); empty lets in "
        "everyone the provider authenticates (they still see only their courses).",
        parse=_names,
        example="students,staff",
    )
    auth_state_key_file: Path | None = setting(
        "TEACHLAB_AUTH_STATE_KEY_FILE",
        None,
        "File holding the key that encrypts the provider's tokens in the hub "
        "database (made, 0600, when missing; default: in the state folder). Back it up with the database.",
        parse=lambda text: Path(text) if text else None,
        example="/run/secrets/teachlab-auth-state-key",
    )
    ssh_port: int = setting(
        "TEACHLAB_SSH_PORT",
        2222,
        "Port of the `teachlab-ssh` gateway (SSH and VS Code Remote-SSH into course containers).",
        parse=int,
    )
    ssh_bind: str = setting(
        "TEACHLAB_SSH_BIND", "127.0.0.1", "Address the SSH gateway listens on (`0.0.0.0`: every interface).", example="0.0.0.0"
    )
    ssh_service_port: int = setting(
        "TEACHLAB_SSH_SERVICE_PORT", 8084, "Port of the `teachlab-ssh` keys page on 127.0.0.1 (behind the proxy).", parse=int
    )
    work_service_port: int = setting(
        "TEACHLAB_WORK_SERVICE_PORT",
        8087,
        "Port of the `teachlab-work` service (students download their work as one zip) on 127.0.0.1.",
        parse=int,
    )
    ssh_activity_seconds: int = setting(
        "TEACHLAB_SSH_ACTIVITY_INTERVAL",
        60,
        "How often the SSH gateway reports sessions that moved data as their server's activity (seconds).",
        parse=int,
    )
    start_timeout_seconds: int = setting(
        "TEACHLAB_START_TIMEOUT",
        900,
        "How long a start may take, waiting in line included (seconds): a crowd at the start of a class waits its turn "
        "instead of failing.",
        parse=int,
    )
    concurrent_boots: int | None = setting(
        "TEACHLAB_CONCURRENT_BOOTS",
        None,
        "How many servers boot at once on this node; more starts wait in line, told their place (default: four times the CPU count).",
        parse=lambda text: int(text) if text else None,
        example="8",
    )
    timezone: str = setting(
        "TEACHLAB_TIMEZONE",
        "UTC",
        "The lab's time zone: course sessions (course.yaml `sessions`) are in it.",
        parse=_time_zone,
        example="Europe/Vienna",
    )
    warm_lead_minutes: float = setting(
        "TEACHLAB_WARM_LEAD_MINUTES",
        10.0,
        "How long before a session the class pre-warm starts its students' servers (minutes).",
        parse=float,
    )
    warm_unused_minutes: float = setting(
        "TEACHLAB_WARM_UNUSED_MINUTES",
        15.0,
        "How long after a session's start a warm server nobody opened is stopped (minutes).",
        parse=float,
    )
    warm_memory_budget: str = setting(
        "TEACHLAB_WARM_MEMORY_BUDGET",
        "",
        "Memory all warm servers waiting for their students may take together (e.g. 16G; default: half of this node's memory).",
        example="16G",
    )
    warm_stagger_seconds: float = setting(
        "TEACHLAB_WARM_STAGGER_SECONDS",
        1.0,
        "Seconds between two warm starts' requests (the boots queue on the node).",
        parse=float,
    )
    warmer_port: int = setting(
        "TEACHLAB_WARMER_PORT",
        8085,
        "Port of the `teachlab-warmer` service on 127.0.0.1 (`teachlab class warm` calls it).",
        parse=int,
    )
    site_config_dir: Path | None = setting(
        "TEACHLAB_SITE_CONFIG_DIR",
        None,
        "Folder of the site's own "
        "`*.py` config files, read last in name order (default: "
        "`jupyterhub_config.d` beside `jupyterhub_config.py`).",
        parse=lambda text: Path(text) if text else None,
        example="/etc/teachlab/jupyterhub_config.d",
    )
    # -- the production stack (spawner/deploy): PostgreSQL, secrets as files, the node agent ----------------
    hub_db_url: str | None = setting(
        "TEACHLAB_HUB_DB_URL",
        None,
        "SQLAlchemy URL of the hub's own database (default: SQLite in the state folder). No password in it: see "
        "TEACHLAB_DATABASE_PASSWORD_FILE.",
        parse=_optional,
        example="postgresql+psycopg://teachlab@127.0.0.1:5432/jupyterhub",
    )
    database_password_file: Path | None = setting(
        "TEACHLAB_DATABASE_PASSWORD_FILE",
        None,
        "File holding the PostgreSQL password of the hub database and the lab's records (a Docker secret); "
        "the hub gives it to libpq as a password file, never in a URL or a variable.",
        parse=_path,
        example="/run/secrets/teachlab-database-password",
    )
    cookie_secret_file: Path | None = setting(
        "TEACHLAB_COOKIE_SECRET_FILE",
        None,
        "File holding the hub's cookie secret (default: made in the state folder). Back it up.",
        parse=_path,
        example="/run/secrets/teachlab-cookie-secret",
    )
    proxy_token_file: Path | None = setting(
        "TEACHLAB_PROXY_TOKEN_FILE",
        None,
        "File holding the proxy's API token (default: the CONFIGPROXY_AUTH_TOKEN variable).",
        parse=_path,
        example="/run/secrets/teachlab-proxy-token",
    )
    oidc_client_secret_file: Path | None = setting(
        "TEACHLAB_OIDC_CLIENT_SECRET_FILE",
        None,
        "File holding the provider client's secret, read instead of TEACHLAB_OIDC_CLIENT_SECRET.",
        parse=_path,
        example="/run/secrets/teachlab-oidc-client-secret",
    )
    deploy_token_file: Path | None = setting(
        "TEACHLAB_DEPLOY_TOKEN_FILE",
        None,
        "File holding the API token of `teachlab deploy` (it stops servers and erases people on an admin's "
        "command); none: no such service.",
        parse=_path,
        example="/run/secrets/teachlab-deploy-token",
    )
    groups_claim: str = setting(
        "TEACHLAB_GROUPS_CLAIM", "groups", "The OpenID Connect claim that lists a person's groups.", example="roles"
    )
    oidc_scopes: tuple[str, ...] = setting(
        "TEACHLAB_OIDC_SCOPES",
        ("openid", "profile", "email", "groups"),
        "Scopes asked for at sign-in (comma separated).",
        parse=_names,
        example="openid,profile,email",
    )
    claims_from_id_token: bool = setting(
        "TEACHLAB_OIDC_CLAIMS_FROM_ID_TOKEN",
        False,
        "Read the username and groups from the ID token instead of the userinfo endpoint (Microsoft Entra ID "
        "puts groups only in the token).",
        parse=_boolean,
        example="true",
    )
    student_subnet: str | None = setting(
        "TEACHLAB_STUDENT_SUBNET",
        None,
        "Subnet of the students' network when the hub creates it (default: the first free /20 of 172.24.0.0/13).",
        parse=_optional,
        example="172.30.0.0/20",
    )
    node_agent_image: str | None = setting(
        "TEACHLAB_NODE_AGENT_IMAGE",
        None,
        "Run the node piece (egress rules, sized volumes) in a privileged agent container of this image on "
        "the hub's node (spawner/hub/nodeagent.py), for a hub that runs in a container; none: in the hub's process.",
        parse=_optional,
        example="teachlab/hub:3f9c2a1b7d4e",
    )

    # -- a swarm (docs/scale-out.md): servers placed on the nodes, whose engines the hub reaches over mutual TLS ----
    swarm_placement: bool = setting(
        "TEACHLAB_SWARM_PLACEMENT",
        False,
        "Place each student's server on a node of the swarm this hub's engine manages, and create it on that node's "
        "engine over mutual TLS (the TEACHLAB_NODE_ENGINE_* files); off: every server runs on the hub's own engine.",
        parse=_boolean,
        example="true",
    )
    swarm_hub_address: str = setting(
        "TEACHLAB_SWARM_HUB_ADDRESS",
        "",
        "The hub's address as the swarm's nodes reach it (the manager's): each node forwards its students' gateway's hub "
        "port there.",
        example="10.0.0.2",
    )
    node_engine_port: int = setting(
        "TEACHLAB_NODE_ENGINE_PORT", 2376, "Port where each node's Docker engine listens with mutual TLS.", parse=int
    )
    node_engine_timeout_seconds: float = setting(
        "TEACHLAB_NODE_ENGINE_TIMEOUT",
        10.0,
        "Seconds a node's engine may take to answer one call; one that does not answer has lost its servers.",
        parse=float,
    )
    node_engine_ca_file: Path | None = setting(
        "TEACHLAB_NODE_ENGINE_CA_FILE",
        None,
        "The lab's node CA (PEM): the hub trusts a node's engine only with a certificate it signed.",
        parse=_path,
        example="/run/secrets/teachlab-engine-ca",
    )
    node_engine_certificate_file: Path | None = setting(
        "TEACHLAB_NODE_ENGINE_CERTIFICATE_FILE",
        None,
        "The hub's client certificate for the nodes' engines (PEM, signed by the node CA).",
        parse=_path,
        example="/run/secrets/teachlab-engine-client-certificate",
    )
    node_engine_key_file: Path | None = setting(
        "TEACHLAB_NODE_ENGINE_KEY_FILE",
        None,
        "The key of that client certificate (a Docker secret).",
        parse=_path,
        example="/run/secrets/teachlab-engine-client-key",
    )
    course_data_node: str = setting(
        "TEACHLAB_COURSE_DATA_NODE",
        "",
        "On a swarm: the node that keeps every course's data volumes as instructors write them; the other nodes get "
        "a copy at a start.",
        example="worker-1",
    )

    @property
    def node_engine_tls(self) -> dict[str, Any]:
        """docker-py ``TLSConfig`` arguments of the nodes' engines, from the three files (empty: none given)."""
        files = (self.node_engine_ca_file, self.node_engine_certificate_file, self.node_engine_key_file)
        if not all(files):
            return {}
        return {
            "ca_cert": str(self.node_engine_ca_file),
            "client_cert": [str(self.node_engine_certificate_file), str(self.node_engine_key_file)],
            "verify": True,
        }

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.state_dir)

    @property
    def lab_id(self) -> str:
        """Labels this lab's containers, so two labs on one engine never count each other's GPUs."""
        return hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]

    def _host(self, name: str, kind: str) -> str:
        """``host[:port]`` where people reach a user's servers or a service: its own subdomain with per-server origins."""
        from jupyterhub.utils import subdomain_hook_idna

        parsed = urlparse(self.public_url)
        port = f":{parsed.port}" if parsed.port else ""
        host = subdomain_hook_idna(name, parsed.hostname, kind=kind) if self.per_server_origins else parsed.hostname
        return f"{parsed.scheme}://{host}{port}"

    def server_url(self, username: str, course: str) -> str:
        """The public URL of a user's course server."""
        return f"{self._host(username, 'user')}/user/{quote(username, safe='')}/{course}/"

    def service_url(self, name: str) -> str:
        """The public URL of a hub-managed service's pages."""
        return f"{self._host(name, 'service')}/services/{name}/"

    @property
    def warm_memory_budget_bytes(self) -> int:
        """The warm servers' memory budget: the setting, or half of this node's memory."""
        if self.warm_memory_budget:
            return parse_memory(self.warm_memory_budget)
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2

    @property
    def auth_state_key_path(self) -> Path:
        return self.auth_state_key_file or self.layout.auth_state_key

    @property
    def ledger_url(self) -> str:
        return self.gpu_ledger_url or self.layout.gpu_ledger_url

    @property
    def hub_database_url(self) -> str:
        return self.hub_db_url or f"sqlite:///{self.layout.hub_database}"

    @property
    def cookie_secret_path(self) -> Path:
        return self.cookie_secret_file or self.layout.cookie_secret

    @property
    def pgpass_path(self) -> Path:
        """The libpq password file the hub writes from ``database_password_file`` (0600, in the private lab folder)."""
        return self.layout.lab / "pgpass"

    def client_secret(self) -> str:
        """The provider client's secret: from its file when one is given."""
        if self.oidc_client_secret_file:
            return self.oidc_client_secret_file.read_text().strip()
        return self.oidc_client_secret

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> HubSettings:
        """Read every ``TEACHLAB_*`` variable that is set; ProblemsError names each one that cannot be read."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems = []
        for spec in fields(cls):
            variable, parse = spec.metadata["variable"], spec.metadata["parse"]
            if variable not in env or (env[variable] == "" and parse not in (str, _optional)):
                continue  # unset, or set to nothing: the default
            try:
                values[spec.name] = parse(env[variable])
            except (ValueError, TypeError) as exc:
                example = spec.metadata["example"] or _default(spec)
                problems.append(Problem(variable, "(value)", f"{env[variable]!r} cannot be read: {exc}", f"write e.g. {example}"))
        if problems:
            raise ProblemsError(problems)
        values["state_dir"] = default_state_dir(env).resolve()
        values["catalog_path"] = Path(values.get("catalog_path", cls.catalog_path)).resolve()
        return cls(**values)

    def to_environment(self) -> dict[str, str]:
        """The ``TEACHLAB_*`` variables that ``from_environment`` reads back as these settings."""
        return {
            spec.metadata["variable"]: _as_text(getattr(self, spec.name))
            for spec in fields(self)
            if getattr(self, spec.name) is not None
        }


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, Mapping):
        return json.dumps(dict(value))
    return str(value)


def settings_reference() -> list[dict[str, str]]:
    """Every setting: variable, default and help, for the generated configuration reference."""
    rows = []
    for spec in fields(HubSettings):
        default = _default(spec)
        if isinstance(default, Path):
            shown = f"<repository>/{default.relative_to(REPO_ROOT)}"
        else:
            shown = None if default is None else _as_text(default)
        rows.append(
            {
                "variable": spec.metadata["variable"],
                "default": "" if shown is None else str(shown),
                "help": spec.metadata["help"],
                "example": spec.metadata["example"],
            }
        )
    return rows
