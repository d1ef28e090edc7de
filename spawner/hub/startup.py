"""What a hub start needs from its machine, and the checks that stop a broken start.

``HubHost`` is the hub's view of the outside world at start: the Docker engine (students' network,
GPU reconciliation), the login provider (discovery), the hub database (group members), the GPU
inventory and the image-build settings of its own environment. Each method stops the hub with one line per problem, never a traceback, when what it
needs is broken. ``spawner.hub.config.apply`` takes a host, so its unit tests pass a stand-in.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..catalog import Catalog, load_catalog
from ..core.contract import Labels
from ..core.problems import ProblemsError, TeachlabError
from ..engine import DockerUnavailable, connect
from ..gpu.cache import InventorySetting, inventory_for, parse_inventory_setting
from ..gpu.ledger import LOCAL_NODE, ReconcileReport
from ..images.settings import BUILD_VARIABLES
from ..node import firewall
from ..node.firewall import FirewallError, StudentNetwork, free_subnet, split_subnet

if TYPE_CHECKING:
    from .nodeagent import NodeAgent
    from .settings import HubSettings

ICC_OPTION = "com.docker.network.bridge.enable_icc"


def stop_hub(lines: Iterable[str]) -> NoReturn:
    """Refuse to start: print the reasons (one line each) and exit without a traceback."""
    for line in lines:
        print(line, file=sys.stderr)
    print("teachlab: the hub did not start; fix the lines above and start it again", file=sys.stderr)
    raise SystemExit(1)


def _problem_lines(error: TeachlabError) -> list[str]:
    if isinstance(error, ProblemsError):
        return [str(problem) for problem in error.problems]
    return [f"teachlab: {line}" for line in str(error).splitlines()]


def load_catalog_or_stop(path: Path) -> Catalog:
    try:
        return load_catalog(path)
    except ProblemsError as problems:
        stop_hub(_problem_lines(problems))


class HubHost:
    """The real machine: Docker, the provider's discovery document, the hub's database, NVML.

    ``student_subnet`` fixes the subnet of a students' network made now (the production stack's proxy must
    know the hub's address in advance); ``node_agent`` runs the node piece in the agent container.
    """

    def __init__(self, *, student_subnet: str | None = None, node_agent: NodeAgent | None = None):
        self.student_subnet = student_subnet
        self.node_agent = node_agent

    @classmethod
    def for_settings(cls, settings: HubSettings) -> HubHost:
        """The host as these settings describe it; the node agent (if any) is started here, before anything needs it."""
        agent = None
        if settings.node_agent_image:
            from ..core.naming import LabNames
            from .nodeagent import NodeAgent

            try:
                agent = NodeAgent(
                    connect().api,
                    image=settings.node_agent_image,
                    name=LabNames(settings.name_prefix).node_agent(),
                    volume_root=settings.layout.volumes,
                    labels={**settings.extra_labels, Labels.LAB: settings.lab_id},
                )
                agent.ensure()
            except TeachlabError as exc:
                stop_hub(_problem_lines(exc))
        return cls(student_subnet=settings.student_subnet, node_agent=agent)

    def build_environment(self) -> dict[str, str]:
        """The image-build settings the hub was started with (mirrors, trust, image namespace, limits): the
        teachlab-courses service builds with the same ones."""
        return {name: os.environ[name] for name in BUILD_VARIABLES if os.environ.get(name)}

    def student_network(self, name: str, labels: Mapping[str, str], hub_port: int) -> StudentNetwork:
        """Create (once) the bridge network of student containers on this node (``ensure_student_network``)."""
        try:
            client = connect()
        except DockerUnavailable as exc:
            stop_hub(_problem_lines(exc))
        try:
            return ensure_student_network(client, name, labels, hub_port, subnet=self.student_subnet)
        except TeachlabError as exc:
            stop_hub(_problem_lines(exc))

    def install_firewall(self, net: StudentNetwork) -> None:
        """Install and verify the egress policy of the students' network, or stop the hub."""
        try:
            if self.node_agent is not None:
                self.node_agent.install_firewall(net)
            else:
                firewall.install(net)
        except FirewallError as exc:
            stop_hub(_problem_lines(exc))

    def oidc_endpoints(self, issuer: str) -> dict:
        """The provider's discovery document (authorize, token and userinfo endpoints)."""
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            with urllib.request.urlopen(url, timeout=15) as response:
                return json.load(response)
        except (OSError, ValueError) as exc:
            stop_hub(
                [
                    f"teachlab: cannot read the login provider's discovery document at {url}: {exc} "
                    "(check TEACHLAB_OIDC_ISSUER and that the provider is up)"
                ]
            )

    def group_members(self, db_url: str) -> dict[str, set[str]]:
        """Group -> members as recorded in the hub's database (empty before the hub's first start)."""
        import sqlalchemy

        url = sqlalchemy.engine.make_url(db_url)
        if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
            return {}  # the hub's first start: nobody is in any group yet
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    sqlalchemy.text(
                        "SELECT groups.name, users.name FROM groups JOIN user_group_map ON groups.id = user_group_map.group_id "
                        "JOIN users ON users.id = user_group_map.user_id"
                    )
                )
                members: dict[str, set[str]] = {}
                for group, user in rows:
                    members.setdefault(group, set()).add(user)
                return members
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError):
            return {}  # no database or no tables yet (SQLite and PostgreSQL say it differently)
        finally:
            engine.dispose()

    def gpu_inventory(self, text: str) -> InventorySetting:
        """The GPU inventory setting, checked now (declared devices validated, NVML loaded) rather than
        at the first GPU spawn."""
        try:
            setting = parse_inventory_setting(text)
            inventory_for(setting, where="TEACHLAB_GPU_INVENTORY")
        except TeachlabError as exc:
            stop_hub(_problem_lines(exc))
        return setting

    def reconcile_gpus(self, ledger_url: str, lab_id: str) -> ReconcileReport:
        """Make the GPU ledger equal to the labels of this lab's running containers (at hub start)."""
        from .gpus import reconcile_with_containers

        try:
            report = reconcile_with_containers(ledger_url, connect(), lab_id)
        except (TeachlabError, ValueError) as exc:
            stop_hub(_problem_lines(exc) if isinstance(exc, TeachlabError) else [f"teachlab: {exc}"])
        for line in reconcile_report_lines(report):
            print(line, file=sys.stderr)
        return report


def ensure_student_network(
    client: Any, name: str, labels: Mapping[str, str], hub_port: int, *, subnet: str | None = None, hub_address: str = ""
) -> StudentNetwork:
    """Create (once) the bridge network of student containers on the engine of ``client`` (a docker-py
    DockerClient) and describe it for the egress policy; TeachlabError when an existing one is unfit.

    Container-to-container traffic is off (``enable_icc=false``); Docker hands out addresses from the
    lower half of the subnet, the upper half is for servers of offline courses. The hub listens on the
    gateway so containers reach it (or, on a node where the hub does not run, ``hub_address`` is where the
    node forwards the gateway's hub port); the firewall lets them reach nothing else of the node. Every node
    of a cluster gets the same ``subnet``, so the hub's address for servers is the same everywhere.
    """
    import docker.errors
    import docker.types

    try:
        network = client.networks.get(name)
    except docker.errors.NotFound:
        taken = [
            config["Subnet"]
            for other in client.networks.list()
            for config in (other.attrs.get("IPAM", {}).get("Config") or [])
            if config.get("Subnet")
        ]
        chosen = subnet or free_subnet(taken)
        docker_half, _ = split_subnet(chosen)
        gateway = str(next(ipaddress.ip_network(chosen).hosts()))
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=chosen, iprange=docker_half, gateway=gateway)])
        network = client.networks.create(
            name, driver="bridge", labels={Labels.NETWORK: name, **labels}, ipam=ipam, options={ICC_OPTION: "false"}
        )
        network.reload()
    recreate = f"remove it (docker network rm {name}) and start the hub again to recreate it"
    if network.attrs.get("Options", {}).get(ICC_OPTION) != "false":
        raise TeachlabError(f"docker network {name} lets containers reach each other (enable_icc is not false); {recreate}")
    configs = network.attrs.get("IPAM", {}).get("Config") or []
    usable = [c for c in configs if c.get("Gateway") and c.get("Subnet") and c.get("IPRange")]
    if not usable or usable[0]["IPRange"] != split_subnet(usable[0]["Subnet"])[0]:
        raise TeachlabError(
            f"docker network {name} has no address range for offline courses (it was made by an older release); {recreate}"
        )
    config = usable[0]
    if subnet and config["Subnet"] != subnet:
        raise TeachlabError(
            f"docker network {name} has subnet {config['Subnet']}, not {subnet} as configured; "
            f"set TEACHLAB_STUDENT_SUBNET to {config['Subnet']}, or {recreate} while no server runs"
        )
    return StudentNetwork(
        network_id=network.id,
        bridge=f"br-{network.id[:12]}",
        subnet=config["Subnet"],
        gateway=config["Gateway"],
        offline_range=split_subnet(config["Subnet"])[1],
        hub_port=hub_port,
        hub_address=hub_address,
    )


def reconcile_report_lines(report: ReconcileReport, node: str = LOCAL_NODE) -> list[str]:
    """What reconciliation changed or left for an admin, one line each; a swarm node's devices are named with it."""

    def gpu(device_uuid: str) -> str:
        return device_uuid if node == LOCAL_NODE else f"{device_uuid} on {node}"

    lines = []
    for conflict in report.conflicts:
        claimants = ", ".join(f"{user}/{server}" for user, server in conflict.servers)
        lines.append(
            f"teachlab: GPU {gpu(conflict.device_uuid)} is claimed by several containers ({claimants}); the ledger "
            "keeps it as it was: stop all but one of them (teachlab gpu status shows the holder)"
        )
    for holding in report.protected:
        lines.append(
            f"teachlab: GPU {gpu(holding.device_uuid)} stays with {holding.username}/{holding.server_name}: a running "
            "container without this lab's label holds it"
        )
    for holding in report.released:
        lines.append(
            f"teachlab: GPU {gpu(holding.device_uuid)} released from {holding.username}/{holding.server_name}: its "
            "container is gone"
        )
    for holding in report.added:
        lines.append(
            f"teachlab: GPU {gpu(holding.device_uuid)} recorded for {holding.username}/{holding.server_name} from its container"
        )
    return lines
