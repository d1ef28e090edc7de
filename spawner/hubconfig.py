"""Values ``jupyterhub_config.py`` computes when the hub starts: checks that must stop a broken start,
the students' network, the login provider's endpoints, and the services with their least scopes."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Mapping, NoReturn, Optional

import docker
import docker.errors

from .catalog import Catalog, load_catalog
from .docker_engine import DockerUnavailable, connect
from .problems import ProblemsError, TeachlabError

NETWORK_LABEL = "org.teachlab.network"
IDLE_CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


def stop_hub(lines: list[str]) -> NoReturn:
    """Refuse to start: print the reasons (one line each) and exit without a traceback."""
    for line in lines:
        print(line, file=sys.stderr)
    print("teachlab: the hub did not start; fix the lines above and start it again", file=sys.stderr)
    raise SystemExit(1)


def load_catalog_or_stop(path: Path) -> Catalog:
    try:
        return load_catalog(path)
    except ProblemsError as problems:
        stop_hub([str(problem) for problem in problems.problems])


def hub_group_members(db_url: str) -> dict[str, set[str]]:
    """Group -> members as recorded in the hub's database (empty before the hub's first start)."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(db_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
        return {}  # the hub's first start: nobody is in any group yet
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT groups.name, users.name FROM groups JOIN user_group_map ON groups.id = user_group_map.group_id "
                "JOIN users ON users.id = user_group_map.user_id"))
            members: dict[str, set[str]] = {}
            for group, user in rows:
                members.setdefault(group, set()).add(user)
            return members
    except sqlalchemy.exc.OperationalError:
        return {}  # no database or no tables yet
    finally:
        engine.dispose()


def ensure_student_network(name: str, labels: Mapping[str, str]) -> str:
    """Create (once) the bridge network of student containers, with container-to-container traffic off.

    Returns the gateway address: the hub listens there so containers can reach it, while ``icc=false``
    keeps one student's container from reaching another's.
    """
    try:
        client = connect()
    except DockerUnavailable as exc:
        stop_hub([f"teachlab: {exc}"])
    try:
        network = client.networks.get(name)
    except docker.errors.NotFound:
        network = client.networks.create(
            name, driver="bridge", labels={NETWORK_LABEL: name, **labels},
            options={"com.docker.network.bridge.enable_icc": "false"},
        )
        network.reload()
    if network.attrs.get("Options", {}).get("com.docker.network.bridge.enable_icc") != "false":
        stop_hub([f"teachlab: docker network {name} lets containers reach each other (enable_icc is not false); "
                  f"remove it (docker network rm {name}) and start the hub again to recreate it"])
    configs = network.attrs.get("IPAM", {}).get("Config") or []
    gateways = [config["Gateway"] for config in configs if config.get("Gateway")]
    if not gateways:
        stop_hub([f"teachlab: docker network {name} has no gateway address"])
    return gateways[0]


def discover_oidc(issuer: str) -> dict:
    """The provider's discovery document (authorize, token and userinfo endpoints)."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return json.load(response)
    except (OSError, ValueError) as exc:
        stop_hub([f"teachlab: cannot read the login provider's discovery document at {url}: {exc} "
                  "(check TEACHLAB_OIDC_ISSUER and that the provider is up)"])


def idle_culler_service(*, catalog_path: Path, cull_every_seconds: int, fallback_timeout_seconds: int = 3600) -> dict:
    """jupyterhub-idle-culler as a hub-managed service; the per-course limits come from the arbiter hook."""
    config_file = Path(__file__).with_name("idle_culler_config.py")
    return {
        "name": "idle-culler",
        "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={fallback_timeout_seconds}",
                    f"--cull-every={cull_every_seconds}", f"--config={config_file}"],
        "environment": {"TEACHLAB_CATALOG": str(catalog_path)},
    }


def gpu_service(*, port: int, ledger_url: str, inventory: str, catalog_path: Path, catalog: Catalog,
                today: Optional[str] = None) -> dict:
    """teachlab-gpu as a hub-managed service; its OAuth sessions may carry its custom scopes."""
    from .gpu_service import SERVICE_NAME, custom_scopes

    return {
        "name": SERVICE_NAME,
        "url": f"http://127.0.0.1:{port}",
        "command": [sys.executable, "-m", "spawner.gpu_service"],
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": sorted(custom_scopes(catalog)),
        "environment": {"TEACHLAB_GPU_LEDGER_URL": ledger_url, "TEACHLAB_GPU_INVENTORY": inventory,
                        "TEACHLAB_CATALOG": str(catalog_path), **({"TEACHLAB_TODAY": today} if today else {})},
    }


def gpu_roles(catalog: Catalog, admin_groups: tuple[str, ...]) -> list[dict]:
    """Admins manage GPUs, instructors read their course's usage, every user reads their own."""
    from .gpu_service import ADMIN_SCOPE, SERVICE_NAME, usage_scope

    access = f"access:services!service={SERVICE_NAME}"
    roles = [
        {"name": "user", "scopes": ["self", access]},
        {"name": "gpu-admins", "description": "Set GPU quotas, see and release every GPU",
         "scopes": [ADMIN_SCOPE, access], "groups": list(admin_groups)},
    ]
    for course in catalog.courses.values():
        if course.instructors.users or course.instructors.groups:
            roles.append({"name": f"gpu-usage-{course.slug}", "description": f"Read the GPU usage of {course.slug}",
                          "scopes": [usage_scope(course.slug), access],
                          "users": list(course.instructors.users), "groups": list(course.instructors.groups)})
    return roles


def gpu_inventory_or_stop(text: str):
    """The GPU inventory setting, checked now (declared devices validated, NVML loaded) rather than at the first GPU spawn."""
    from .gpuhub import inventory_for, parse_inventory_setting

    try:
        setting = parse_inventory_setting(text)
        inventory_for(setting)
    except TeachlabError as exc:
        stop_hub([f"teachlab: {line}" for line in str(exc).splitlines()])
    return setting


def reconcile_gpus_or_stop(ledger_url: str, lab_id: str) -> None:
    """Make the GPU ledger equal to the labels of this lab's running containers (at hub start)."""
    from .gpuhub import reconcile_with_containers

    try:
        report = reconcile_with_containers(ledger_url, connect(), lab_id)
    except (TeachlabError, ValueError) as exc:
        stop_hub([f"teachlab: {line}" for line in str(exc).splitlines()])
    for conflict in report.conflicts:
        claimants = ", ".join(f"{user}/{server}" for user, server in conflict.servers)
        print(f"teachlab: GPU {conflict.device_uuid} is claimed by several containers ({claimants}); the ledger keeps "
              "it as it was: stop all but one of them (teachlab gpu status shows the holder)", file=sys.stderr)
    for holding in report.released:
        print(f"teachlab: GPU {holding.device_uuid} released from {holding.username}/{holding.server_name}: its container is gone",
              file=sys.stderr)
    for holding in report.added:
        print(f"teachlab: GPU {holding.device_uuid} recorded for {holding.username}/{holding.server_name} from its container",
              file=sys.stderr)
