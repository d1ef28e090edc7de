# Teachlab's JupyterHub configuration.
#
# Deployment settings come from TEACHLAB_* variables (spawner/labconfig.py, docs/configuration.md);
# `teachlab lab up` and the tests set them. Code lives in the `spawner` package; this file only wires
# it to JupyterHub. A site's own overrides go in jupyterhub_config.d/*.py next to this file.
from datetime import date
from pathlib import Path

import spawner
from spawner.hub import CatalogCache, course_rows, instructor_roles, instructor_scopes_hook
from spawner.hubconfig import (
    IDLE_CULLER_SCOPES,
    discover_oidc,
    ensure_student_network,
    gpu_inventory_or_stop,
    gpu_roles,
    gpu_service,
    hub_group_members,
    idle_culler_service,
    load_catalog_or_stop,
    reconcile_gpus_or_stop,
)
from spawner.gpu_service import custom_scopes
from spawner.gpuhub import LAB_LABEL, default_ledger_url
from spawner.labconfig import LabConfig

c = get_config()  # noqa: F821
lab = LabConfig.from_environment()
lab.lab_dir.mkdir(parents=True, exist_ok=True)

# The catalog is checked before anything starts: a broken catalog stops the hub with one line per problem.
catalog = load_catalog_or_stop(lab.catalog_path)
fixed_today = date.fromisoformat(lab.today) if lab.today else None
today = (lambda: fixed_today) if fixed_today else date.today

# Hub, proxy and database. The proxy runs on its own (started by `teachlab lab up`), so restarting the
# hub never interrupts students; servers keep running across hub restarts.
gateway = ensure_student_network(lab.network, lab.extra_labels)
c.JupyterHub.bind_url = lab.public_url
c.JupyterHub.hub_bind_url = f"http://{gateway}:{lab.hub_port}"
hub_db_url = f"sqlite:///{lab.lab_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.db_url = hub_db_url
c.JupyterHub.cookie_secret_file = str(lab.lab_dir / "jupyterhub_cookie_secret")
c.JupyterHub.cleanup_servers = False
c.JupyterHub.cleanup_proxy = False
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = lab.proxy_api_url

# One named server per course: /user/<name>/<course>/. The home page lists the user's courses.
c.JupyterHub.allow_named_servers = True
c.JupyterHub.redirect_to_server = False
c.JupyterHub.template_paths = [str(Path(spawner.__file__).parent / "templates")]
cache = CatalogCache.for_root(lab.catalog_path)
c.JupyterHub.template_vars = {"courses": course_rows(cache, lab.registry_dir, today)}

c.JupyterHub.spawner_class = "spawner.CourseSpawner"
c.CourseSpawner.catalog_path = str(lab.catalog_path)
c.CourseSpawner.state_dir = str(lab.state_dir)
c.CourseSpawner.extra_labels = {**lab.extra_labels, LAB_LABEL: lab.lab_id}
c.CourseSpawner.today = today
c.CourseSpawner.network_name = lab.network
c.CourseSpawner.use_internal_ip = True
c.CourseSpawner.start_timeout = 120
c.CourseSpawner.http_timeout = 90
c.CourseSpawner.poll_interval = lab.poll_interval_seconds

# GPUs: discovered with NVML ("nvml") or declared (a JSON list); the ledger is made equal to what this
# lab's containers hold before the hub takes any request.
gpu_ledger_url = lab.gpu_ledger_url or default_ledger_url(lab.state_dir)
c.CourseSpawner.gpu_inventory = gpu_inventory_or_stop(lab.gpu_inventory)
c.CourseSpawner.gpu_ledger_url = gpu_ledger_url
reconcile_gpus_or_stop(gpu_ledger_url, lab.lab_id)

# Login through the university's OpenID Connect provider; its groups claim becomes hub groups
# (course membership) and admin rights.
c.JupyterHub.authenticator_class = "generic-oauth"
if lab.oidc_issuer:
    endpoints = discover_oidc(lab.oidc_issuer)
    c.GenericOAuthenticator.authorize_url = endpoints["authorization_endpoint"]
    c.GenericOAuthenticator.token_url = endpoints["token_endpoint"]
    c.GenericOAuthenticator.userdata_url = endpoints["userinfo_endpoint"]
c.GenericOAuthenticator.login_service = "University login"
c.GenericOAuthenticator.client_id = lab.oidc_client_id
c.GenericOAuthenticator.client_secret = lab.oidc_client_secret
c.GenericOAuthenticator.oauth_callback_url = f"{lab.public_url.rstrip('/')}/hub/oauth_callback"
c.GenericOAuthenticator.scope = ["openid", "profile", "email", "groups"]
c.GenericOAuthenticator.username_claim = "preferred_username"
c.GenericOAuthenticator.manage_groups = True
c.GenericOAuthenticator.auth_state_groups_key = "oauth_user.groups"
c.GenericOAuthenticator.admin_groups = set(lab.admin_groups)
c.GenericOAuthenticator.allow_all = True
c.GenericOAuthenticator.enable_pkce = True
c.GenericOAuthenticator.post_auth_hook = instructor_scopes_hook(cache)

# Roles: instructors manage their course's students' servers; services get the least scopes they need.
c.JupyterHub.custom_scopes = custom_scopes(catalog)
c.JupyterHub.load_roles = instructor_roles(catalog, hub_group_members(hub_db_url)) + gpu_roles(catalog, lab.admin_groups) + [
    {"name": "idle-culler", "scopes": IDLE_CULLER_SCOPES, "services": ["idle-culler"]},
]
c.JupyterHub.services = [
    idle_culler_service(catalog_path=lab.catalog_path, cull_every_seconds=lab.cull_every_seconds),
    gpu_service(port=lab.gpu_service_port, ledger_url=gpu_ledger_url, inventory=lab.gpu_inventory,
                catalog_path=lab.catalog_path, catalog=catalog, today=lab.today),
]
if lab.cli_token:
    c.JupyterHub.services.append({"name": "teachlab-cli", "api_token": lab.cli_token})
    c.JupyterHub.load_roles.append({
        "name": "teachlab-cli",
        "description": "The teachlab CLI of this lab's admins",
        "scopes": ["admin:users", "admin:servers", "admin:groups", "list:services", "read:services"],
        "services": ["teachlab-cli"],
    })

# Site overrides, read last (sorted), like The Littlest JupyterHub's jupyterhub_config.d.
for site_file in sorted(Path(__file__).with_name("jupyterhub_config.d").glob("*.py")):
    load_subconfig(str(site_file))  # noqa: F821
