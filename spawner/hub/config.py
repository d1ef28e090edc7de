"""The hub's configuration as a tested function: ``apply(settings, c)``.

``jupyterhub_config.py`` reads the deployment settings (``TEACHLAB_*``), calls ``apply`` and then a
site's ``jupyterhub_config.d/``. Everything the hub needs from its machine at start (the students'
network, the provider's endpoints, group members, GPU reconciliation) comes from a ``HubHost``;
unit tests pass a stand-in and assert on the traits (tests/unit/test_hub_config.py).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

from ..catalog.cache import CatalogCache
from ..core.contract import PAGE_LINKS_VARIABLE, STATE_DIR_VARIABLE, Scopes
from ..core.problems import ProblemsError
from ..core.secrets import hex_secret, narrow, private_folder, write_private
from .home import TEMPLATES_DIR, course_rows, notices_for
from .metrics import LabGauges, register_lab_collector
from .role_sync import retire_replaced_tokens_listener, sync_roles_listener
from .roles import (
    CLI_SERVICE,
    DEPLOY_SERVICE,
    IDLE_CULLER,
    METRICS_SERVICE,
    all_roles,
    custom_scopes,
    instructor_scopes_hook,
    oauth_client_scopes,
)
from .settings import HubSettings
from .startup import HubHost, load_catalog_or_stop, stop_hub

HTTP_TIMEOUT_SECONDS = 90
ACTIVITY_INTERVAL_SECONDS = 60  # how often the hub reads servers' last activity from the proxy (warm servers used?)
IDLE_FALLBACK_TIMEOUT_SECONDS = 3600


def today_function(settings: HubSettings) -> Callable[[], date]:
    """``date.today``, or the fixed day of ``TEACHLAB_TODAY``."""
    if settings.today:
        fixed = date.fromisoformat(settings.today)
        return lambda: fixed
    return date.today


def idle_culler_service(settings: HubSettings) -> dict:
    """jupyterhub-idle-culler as a hub-managed service; the per-course limits come from the arbiter hook."""
    config_file = Path(__file__).with_name("idle_culler_config.py")
    return {
        "name": IDLE_CULLER,
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={IDLE_FALLBACK_TIMEOUT_SECONDS}",
            f"--cull-every={settings.cull_every_seconds}",
            f"--config={config_file}",
        ],
        "environment": {"TEACHLAB_CATALOG": str(settings.catalog_path)},
    }


def page_links(settings: HubSettings, *names: str) -> str:
    """``TEACHLAB_PAGE_LINKS`` of a service: the lab's pages its navigation bar shows."""
    titles = {Scopes.COURSES_SERVICE: "Courses", Scopes.GPU_SERVICE: "GPUs", Scopes.SSH_SERVICE: "SSH keys"}
    return json.dumps([{"name": titles[name], "href": settings.service_url(name)} for name in names])


def lab_service(settings: HubSettings, name: str, port: int, module: str, environment: Mapping[str, str], **options: Any) -> dict:
    """One of the lab's own hub-managed services (``python -m module`` on 127.0.0.1:``port``). Every one gets the
    fixed day of ``TEACHLAB_TODAY`` and libpq's password file, so none can be left without them."""
    environment = {**environment, **database_environment(settings)}
    if settings.today:
        environment["TEACHLAB_TODAY"] = settings.today
    return {
        "name": name,
        "url": f"http://127.0.0.1:{port}",
        "command": [sys.executable, "-m", module],
        **options,
        "environment": environment,
    }


def gpu_service(settings: HubSettings, allowed_scopes: list[str]) -> dict:
    """teachlab-gpu as a hub-managed service; its OAuth sessions may carry its custom scopes."""
    environment = {
        "TEACHLAB_GPU_LEDGER_URL": settings.ledger_url,
        "TEACHLAB_GPU_INVENTORY": settings.gpu_inventory,
        "TEACHLAB_CATALOG": str(settings.catalog_path),
        PAGE_LINKS_VARIABLE: page_links(settings, Scopes.GPU_SERVICE, Scopes.SSH_SERVICE),
    }
    return lab_service(
        settings,
        Scopes.GPU_SERVICE,
        settings.gpu_service_port,
        "spawner.services.gpu",
        environment,
        oauth_no_confirm=True,
        oauth_client_allowed_scopes=allowed_scopes,
    )


def courses_service(settings: HubSettings, allowed_scopes: list[str], build_environment: Mapping[str, str]) -> dict:
    """teachlab-courses (spawner/services/courses.py) as a hub-managed service: instructors' publish and class
    pages and the confined builder. It gets the hub's image-build settings, so its builds use the same mirrors,
    trust and image namespace as the CLI's, and the lab's names and labels for the mirror proxy it runs."""
    environment = {
        **build_environment,
        STATE_DIR_VARIABLE: str(settings.state_dir),
        "TEACHLAB_CATALOG": str(settings.catalog_path),
        "TEACHLAB_GPU_LEDGER_URL": settings.ledger_url,
        "TEACHLAB_LAB_ID": settings.lab_id,
        "TEACHLAB_NAME_PREFIX": settings.name_prefix,
        "TEACHLAB_EXTRA_LABELS": json.dumps(dict(settings.extra_labels)),
        "TEACHLAB_PUBLIC_URL": settings.public_url,
        "TEACHLAB_PER_SERVER_ORIGINS": "true" if settings.per_server_origins else "false",
        PAGE_LINKS_VARIABLE: page_links(settings, Scopes.COURSES_SERVICE, Scopes.GPU_SERVICE, Scopes.SSH_SERVICE),
    }
    return lab_service(
        settings,
        Scopes.COURSES_SERVICE,
        settings.courses_service_port,
        "spawner.services.courses",
        environment,
        oauth_no_confirm=True,
        oauth_client_allowed_scopes=allowed_scopes,
    )


def ssh_service(settings: HubSettings) -> dict:
    """teachlab-ssh (spawner/ssh/) as a hub-managed service: the SSH gateway and its keys page."""
    environment = {
        "TEACHLAB_CATALOG": str(settings.catalog_path),
        "TEACHLAB_STATE_DIR": str(settings.state_dir),
        "TEACHLAB_RECORDS_URL": settings.ledger_url,
        "TEACHLAB_LAB_ID": settings.lab_id,
        "TEACHLAB_PUBLIC_URL": settings.public_url,
        "TEACHLAB_SSH_KEYS_URL": settings.service_url(Scopes.SSH_SERVICE),
        "TEACHLAB_NAME_PREFIX": settings.name_prefix,
        "TEACHLAB_SSH_PORT": str(settings.ssh_port),
        "TEACHLAB_SSH_BIND": settings.ssh_bind,
        "TEACHLAB_SSH_ACTIVITY_INTERVAL": str(settings.ssh_activity_seconds),
    }
    return lab_service(settings, Scopes.SSH_SERVICE, settings.ssh_service_port, "spawner.ssh", environment, oauth_no_confirm=True)


def database_environment(settings: HubSettings) -> dict[str, str]:
    """What a process needs to sign in to PostgreSQL: libpq's password file, written by ``write_pgpass``."""
    return {"PGPASSFILE": str(settings.pgpass_path)} if settings.database_password_file else {}


def write_pgpass(settings: HubSettings) -> None:
    """libpq's password file (``*:*:*:*:<password>``, 0600) from the database password file (a Docker secret):
    the password reaches libpq in every hub process without a URL or a variable holding it."""
    if settings.database_password_file is None:
        return
    password = settings.database_password_file.read_text().strip()
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    write_private(settings.pgpass_path, f"*:*:*:*:{escaped}\n".encode())
    os.environ.update(database_environment(settings))


def warmer_service(settings: HubSettings) -> dict:
    """teachlab-warmer (spawner/services/warmer.py): the class pre-warm, as a hub-managed service."""
    environment = {
        "TEACHLAB_CATALOG": str(settings.catalog_path),
        "TEACHLAB_RECORDS_URL": settings.ledger_url,
        "TEACHLAB_WARM_LEAD_MINUTES": str(settings.warm_lead_minutes),
        "TEACHLAB_WARM_UNUSED_MINUTES": str(settings.warm_unused_minutes),
        "TEACHLAB_WARM_MEMORY_BUDGET_BYTES": str(settings.warm_memory_budget_bytes),
        "TEACHLAB_WARM_STAGGER_SECONDS": str(settings.warm_stagger_seconds),
        "TEACHLAB_TIMEZONE": settings.timezone,
    }
    return lab_service(settings, Scopes.WARMER_SERVICE, settings.warmer_port, "spawner.services.warmer", environment)


def work_service(settings: HubSettings) -> dict:
    """teachlab-work as a hub-managed service: students download their work in a course as one zip
    (spawner/deploy/workservice.py), while the course is open to them."""
    environment = {
        "TEACHLAB_CATALOG": str(settings.catalog_path),
        "TEACHLAB_STATE_DIR": str(settings.state_dir),
        "TEACHLAB_LAB_ID": settings.lab_id,
        "TEACHLAB_NAME_PREFIX": settings.name_prefix,
    }
    if settings.node_agent_image:
        environment["TEACHLAB_NODE_AGENT_IMAGE"] = settings.node_agent_image
    return lab_service(
        settings,
        Scopes.WORK_SERVICE,
        settings.work_service_port,
        "spawner.deploy.workservice",
        environment,
        oauth_no_confirm=True,
    )


def apply(settings: HubSettings, c: Any, host: HubHost | None = None) -> None:
    """Configure JupyterHub (``c``) for this lab. Stops the hub, with one line per problem, when the
    catalog, the students' network, the provider or the GPU inventory is broken."""
    host = host or HubHost.for_settings(settings)
    layout = settings.layout
    private_folder(settings.state_dir)
    private_folder(layout.lab)
    narrow(settings.cookie_secret_path)
    write_pgpass(settings)
    # The catalog is checked before anything starts: a broken catalog stops the hub with one line per problem.
    catalog = load_catalog_or_stop(settings.catalog_path)
    if settings.swarm_placement and (problems := swarm_problems(settings)):
        stop_hub(problems)
    today = today_function(settings)

    # Hub, proxy and database. The proxy runs on its own, so restarting the hub never interrupts students;
    # servers keep running across hub restarts.
    net = host.student_network(settings.network, settings.extra_labels, settings.hub_port)
    host.install_firewall(net)
    c.JupyterHub.bind_url = settings.public_url
    c.JupyterHub.hub_bind_url = f"http://{net.gateway}:{settings.hub_port}"
    hub_db_url = settings.hub_database_url
    c.JupyterHub.db_url = hub_db_url
    c.JupyterHub.cookie_secret_file = str(settings.cookie_secret_path)
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.cleanup_proxy = False
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = settings.proxy_api_url
    if settings.proxy_token_file:
        c.ConfigurableHTTPProxy.auth_token = settings.proxy_token_file.read_text().strip()

    # One named server per course: /user/<name>/<course>/. The home page lists the user's courses.
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.redirect_to_server = False
    c.JupyterHub.template_paths = [str(TEMPLATES_DIR)]
    cache = CatalogCache.for_root(settings.catalog_path)
    cache.on_reload_async(sync_roles_listener())
    cache.start_background_refresh()
    c.JupyterHub.template_vars = {
        "courses": course_rows(cache, layout.courses, today),
        "notices": notices_for,
        "ssh_keys_url": settings.service_url(Scopes.SSH_SERVICE),
        "course_pages_url": settings.service_url(Scopes.COURSES_SERVICE),
        "work_download_url": settings.service_url(Scopes.WORK_SERVICE),
    }

    c.JupyterHub.spawner_class = "teachlab"
    c.CourseSpawner.catalog_path = str(settings.catalog_path)
    c.CourseSpawner.state_dir = str(settings.state_dir)
    c.CourseSpawner.lab_id = settings.lab_id
    c.CourseSpawner.name_prefix = settings.name_prefix
    c.CourseSpawner.extra_labels = dict(settings.extra_labels)
    c.CourseSpawner.today = today
    c.CourseSpawner.network_name = settings.network
    c.CourseSpawner.offline_address_range = net.offline_range
    c.CourseSpawner.student_subnet = net.subnet
    c.CourseSpawner.use_internal_ip = True
    # A start may wait in the admission queue (spawner/hub/admission.py): it is not failing while it waits, so
    # the timeout is long and the queue, not JupyterHub's concurrent-spawn limit, paces a crowd.
    c.CourseSpawner.start_timeout = settings.start_timeout_seconds
    c.CourseSpawner.http_timeout = HTTP_TIMEOUT_SECONDS
    if settings.concurrent_boots:
        c.CourseSpawner.concurrent_boots = settings.concurrent_boots
    c.JupyterHub.concurrent_spawn_limit = 0
    c.JupyterHub.last_activity_interval = ACTIVITY_INTERVAL_SECONDS
    c.CourseSpawner.poll_interval = settings.poll_interval_seconds
    if settings.node_agent_image:
        c.CourseSpawner.node_agent_image = settings.node_agent_image
    if settings.swarm_placement:
        apply_swarm(settings, c, net.gateway)

    # GPUs: discovered with NVML ("nvml") or declared (a JSON list); the ledger is made equal to what this
    # lab's containers hold before the hub takes any request.
    c.CourseSpawner.gpu_inventory = inventory = host.gpu_inventory(settings.gpu_inventory)
    gauges = LabGauges(ledger_url=settings.ledger_url, inventory_setting=inventory, today=today)
    register_lab_collector(gauges.snapshot)
    cache.on_reload_async(gauges.update)
    c.CourseSpawner.gpu_ledger_url = settings.ledger_url
    host.reconcile_gpus(settings.ledger_url, settings.lab_id)

    # Login through the university's OpenID Connect provider; its groups claim becomes hub groups
    # (course membership) and admin rights.
    c.JupyterHub.authenticator_class = "generic-oauth"
    if settings.oidc_issuer:
        endpoints = host.oidc_endpoints(settings.oidc_issuer)
        c.GenericOAuthenticator.authorize_url = endpoints["authorization_endpoint"]
        c.GenericOAuthenticator.token_url = endpoints["token_endpoint"]
        c.GenericOAuthenticator.userdata_url = endpoints["userinfo_endpoint"]
    c.GenericOAuthenticator.login_service = "University login"
    c.GenericOAuthenticator.client_id = settings.oidc_client_id
    c.GenericOAuthenticator.client_secret = settings.client_secret()
    c.GenericOAuthenticator.oauth_callback_url = f"{settings.public_url.rstrip('/')}/hub/oauth_callback"
    c.GenericOAuthenticator.scope = list(settings.oidc_scopes)
    c.GenericOAuthenticator.username_claim = settings.username_claim
    c.GenericOAuthenticator.userdata_from_id_token = settings.claims_from_id_token
    c.GenericOAuthenticator.manage_groups = True
    c.GenericOAuthenticator.auth_state_groups_key = f"oauth_user.{settings.groups_claim}"
    c.GenericOAuthenticator.admin_groups = set(settings.admin_groups)
    if settings.allowed_groups:
        c.GenericOAuthenticator.allowed_groups = set(settings.allowed_groups)
    c.GenericOAuthenticator.allow_all = not settings.allowed_groups
    c.GenericOAuthenticator.enable_pkce = True
    c.GenericOAuthenticator.post_auth_hook = instructor_scopes_hook(cache)

    # Revocation: the provider's tokens are kept (encrypted) so groups can be refreshed; a refresh happens before
    # every start and whenever the last one is older than the refresh age (running servers included, in the
    # spawner's poll). Sign-ins and tokens expire.
    c.GenericOAuthenticator.enable_auth_state = True
    c.CryptKeeper.keys = [hex_secret(settings.auth_state_key_path).encode()]
    c.GenericOAuthenticator.auth_refresh_age = settings.auth_refresh_seconds
    c.GenericOAuthenticator.refresh_pre_spawn = True
    c.GenericOAuthenticator.refresh_user_hook = nothing_to_refresh_without_a_sign_in
    c.JupyterHub.cookie_max_age_days = settings.cookie_max_age_days
    c.JupyterHub.token_expires_in_max_seconds = int(settings.token_max_days * 24 * 3600)

    # Every user's servers on an origin of their own (https://<user>.<host>), with __Host- cookies: HTML a
    # student writes never runs with the hub's or an instructor's session.
    if settings.per_server_origins:
        c.JupyterHub.subdomain_host = settings.public_url
        c.JupyterHub.cookie_host_prefix_enabled = settings.public_url.startswith("https://")

    # Roles: instructors manage their course's students' servers; services get the least scopes they need.
    scopes = custom_scopes(catalog)
    c.JupyterHub.custom_scopes = scopes
    c.JupyterHub.load_roles = all_roles(
        catalog,
        host.group_members(hub_db_url),
        settings.admin_groups,
        with_cli=settings.cli_token is not None,
        with_metrics=settings.metrics_token is not None,
        with_deploy=settings.deploy_token_file is not None,
    )
    clients = oauth_client_scopes(catalog)
    c.JupyterHub.services = [
        idle_culler_service(settings),
        gpu_service(settings, clients[Scopes.GPU_SERVICE]),
        ssh_service(settings),
        warmer_service(settings),
        courses_service(settings, clients[Scopes.COURSES_SERVICE], host.build_environment()),
        work_service(settings),
    ]
    if settings.cli_token:
        c.JupyterHub.services.append({"name": CLI_SERVICE, "api_token": settings.cli_token})
        cache.on_reload_async(retire_replaced_tokens_listener(CLI_SERVICE, settings.cli_token))
    # /hub/metrics needs read:metrics (JupyterHub's authenticate_prometheus): admins have it, and the monitoring
    # system's own token when the lab has one.
    if settings.metrics_token:
        c.JupyterHub.services.append({"name": METRICS_SERVICE, "api_token": settings.metrics_token})
        cache.on_reload_async(retire_replaced_tokens_listener(METRICS_SERVICE, settings.metrics_token))
    if settings.deploy_token_file:
        c.JupyterHub.services.append({"name": DEPLOY_SERVICE, "api_token": settings.deploy_token_file.read_text().strip()})


def swarm_problems(settings: HubSettings) -> list[str]:
    """What a hub that places servers on a swarm cannot do without (one line each, naming the variable)."""
    needed = {
        "TEACHLAB_SWARM_HUB_ADDRESS": settings.swarm_hub_address,
        "TEACHLAB_NODE_ENGINE_CA_FILE": settings.node_engine_ca_file,
        "TEACHLAB_NODE_ENGINE_CERTIFICATE_FILE": settings.node_engine_certificate_file,
        "TEACHLAB_NODE_ENGINE_KEY_FILE": settings.node_engine_key_file,
        "TEACHLAB_NODE_AGENT_IMAGE": settings.node_agent_image,
    }
    return [
        f"teachlab: {variable} is not set: TEACHLAB_SWARM_PLACEMENT needs it (docs/admins.md, Adding machines)"
        for variable, value in needed.items()
        if not value
    ]


def apply_swarm(settings: HubSettings, c: Any, gateway: str) -> None:
    """Servers on the swarm's nodes (docs/scale-out.md): the spawner places them and reaches each node's engine over
    mutual TLS. The hub listens on every address of its node, because servers on other nodes reach it through their
    node's forward to ``swarm_hub_address``; every server is told the students' gateway, the same on every node."""
    c.CourseSpawner.swarm_placement = True
    c.CourseSpawner.hub_address = settings.swarm_hub_address
    c.CourseSpawner.node_engine_url_template = f"tcp://{{address}}:{settings.node_engine_port}"
    c.CourseSpawner.node_engine_tls = settings.node_engine_tls
    c.CourseSpawner.node_engine_timeout = settings.node_engine_timeout_seconds
    c.CourseSpawner.course_data_node = settings.course_data_node
    c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{settings.hub_port}"
    c.JupyterHub.hub_connect_url = f"http://{gateway}:{settings.hub_port}"


def nothing_to_refresh_without_a_sign_in(authenticator: Any, user: Any, auth_state: Any) -> bool | None:
    """``refresh_user_hook``: a person who never signed in (listed in course.yaml, started by an admin or by the
    class pre-warm) has no provider tokens to refresh; their access is the catalog's to decide, so their
    record counts as current. Everyone who did sign in is refreshed as usual (``None``)."""
    return True if not auth_state else None


def settings_or_stop() -> HubSettings:
    """The deployment settings from the environment; a setting that cannot be read stops the hub."""
    try:
        return HubSettings.from_environment()
    except ProblemsError as problems:
        stop_hub(str(problem) for problem in problems.problems)


def site_config_files(settings: HubSettings, config_file: str) -> list[Path]:
    """A site's ``*.py`` overrides, in name order: from ``TEACHLAB_SITE_CONFIG_DIR``, else ``jupyterhub_config.d``
    beside the config file (as The Littlest JupyterHub reads its ``jupyterhub_config.d``)."""
    folder = settings.site_config_dir or Path(config_file).with_name("jupyterhub_config.d")
    return sorted(folder.glob("*.py"))
