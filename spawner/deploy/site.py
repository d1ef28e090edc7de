"""The site file: everything an admin decides about one production lab, in one YAML file.

``spawner/deploy/schema/site.schema.json`` is its single source of truth (unknown keys are errors at every
level, descriptions generate ``docs/site-yaml.md``). ``load_site`` reads it with the strict YAML loader and
reports every problem as one line, ``FILE:YAML.PATH: what is wrong (how to fix)``, the same shape as
course.yaml's: first what the schema says, then what only this machine can tell (the certificate names the
host and matches its key, the files exist, the catalog loads). Nothing is deployed while a problem remains.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..catalog import load_catalog
from ..core.contract import Labels
from ..core.problems import Problem, ProblemsError
from ..core.schemacheck import schema_problems
from ..core.yamlfile import load_yaml_file

NODE_CERTIFICATES_FOLDER = "nodes"  # in the secrets folder: the lab's node CA and what it signs
SITE_FILE_VARIABLE = "TEACHLAB_SITE_FILE"
NAMESPACE_VARIABLE = "TEACHLAB_IMAGE_NAMESPACE"  # what `teachlab image build-base` and `course publish` use too
DEFAULT_NAMESPACE = "teachlab"
DEFAULT_SITE_FILE = Path("/etc/teachlab/site.yaml")


@lru_cache(maxsize=1)
def site_schema() -> dict:
    return json.loads(resources.files("spawner.deploy").joinpath("schema/site.schema.json").read_text())


def _default(*path: str) -> Any:
    node = site_schema()
    for key in path:
        node = node["properties"][key]
    return node["default"]


@dataclass(frozen=True)
class SwarmSection:
    """The site file's ``swarm`` section: the lab's servers run on the swarm's nodes (docs/admins.md, Adding machines)."""

    manager_address: str
    course_data_node: str
    engine_port: int
    registry_port: int
    engine_timeout_seconds: float

    @property
    def registry_address(self) -> str:
        """The stack's registry as the nodes reach it: it names every course image pushed there."""
        return f"{self.manager_address}:{self.registry_port}"


@dataclass(frozen=True)
class Site:
    """A checked site file."""

    path: Path
    host: str
    certificate: Path
    key: Path
    issuer: str
    client_id: str
    client_secret_file: Path
    username_claim: str
    groups_claim: str
    claims_from: str
    scopes: tuple[str, ...]
    admin_groups: tuple[str, ...]
    allowed_groups: tuple[str, ...]
    catalog: Path
    gpus: tuple[Mapping[str, Any], ...]
    state_dir: Path
    secrets_dir: Path
    backups_dir: Path
    archives_dir: Path
    students_subnet: str
    ssh_port: int
    keep_archives_days: int
    image_namespace: str
    swarm: SwarmSection | None = None  # None: one server

    @property
    def node_certificates_dir(self) -> Path:
        """The lab's node CA and the certificates it signs (``spawner.deploy.certificates``)."""
        return self.secrets_dir / NODE_CERTIFICATES_FOLDER

    @property
    def public_url(self) -> str:
        return f"https://{self.host}"

    @property
    def hub_address(self) -> str:
        """The first address of the students' subnet: the hub listens there, students' servers reach it there."""
        return str(next(ipaddress.ip_network(self.students_subnet).hosts()))


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return data.get(name) or {}


def _value(data: Mapping[str, Any], section: str, key: str) -> Any:
    return _section(data, section).get(key, _default(section, key))


def site_from_data(data: Mapping[str, Any], path: Path) -> Site:
    """The Site of schema-checked data, defaults filled in from the schema."""
    oidc = data["oidc"]
    return Site(
        path=path,
        host=data["host"],
        certificate=Path(data["tls"]["certificate"]),
        key=Path(data["tls"]["key"]),
        issuer=oidc["issuer"].rstrip("/"),
        client_id=oidc["client_id"],
        client_secret_file=Path(oidc["client_secret_file"]),
        username_claim=_value(data, "oidc", "username_claim"),
        groups_claim=_value(data, "oidc", "groups_claim"),
        claims_from=_value(data, "oidc", "claims_from"),
        scopes=tuple(_value(data, "oidc", "scopes")),
        admin_groups=tuple(_value(data, "oidc", "admin_groups")),
        allowed_groups=tuple(_value(data, "oidc", "allowed_groups")),
        catalog=Path(data["catalog"]),
        gpus=tuple(data.get("gpus", ())),
        state_dir=Path(_value(data, "paths", "state")),
        secrets_dir=Path(_value(data, "paths", "secrets")),
        backups_dir=Path(_value(data, "paths", "backups")),
        archives_dir=Path(_value(data, "paths", "archives")),
        students_subnet=_value(data, "network", "students_subnet"),
        ssh_port=_value(data, "network", "ssh_port"),
        keep_archives_days=_value(data, "end_of_term", "keep_archives_days"),
        image_namespace=_section(data, "images").get("namespace") or os.environ.get(NAMESPACE_VARIABLE) or DEFAULT_NAMESPACE,
        swarm=_swarm_section(data),
    )


def _swarm_section(data: Mapping[str, Any]) -> SwarmSection | None:
    if "swarm" not in data:
        return None
    return SwarmSection(
        manager_address=data["swarm"]["manager_address"],
        course_data_node=data["swarm"]["course_data_node"],
        engine_port=_value(data, "swarm", "engine_port"),
        registry_port=_value(data, "swarm", "registry_port"),
        engine_timeout_seconds=float(_value(data, "swarm", "engine_timeout_seconds")),
    )


def _file_problem(shown_as: str, where: str, path: Path, what: str) -> Problem | None:
    if not path.is_file():
        return Problem(shown_as, where, f"{path} does not exist", f"put {what} there, or write the path of yours")
    try:
        if not path.read_bytes().strip():
            return Problem(shown_as, where, f"{path} is empty", f"put {what} there")
    except OSError as exc:
        return Problem(shown_as, where, f"{path} cannot be read ({exc.strerror})", "run the command as root")
    return None


def _certificate_problems(site: Site, shown_as: str, today: datetime.date) -> list[Problem]:
    """The certificate parses, names the host and *.host, is valid today, and matches the key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificates(site.certificate.read_bytes())[0]
    except ValueError as exc:
        return [Problem(shown_as, "tls.certificate", f"{site.certificate} is not a PEM certificate ({exc})", "give the PEM file")]
    problems = []
    try:
        names = set(
            certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        )
    except x509.ExtensionNotFound:
        names = set()
    for needed in (site.host, f"*.{site.host}"):
        if needed not in names:
            problems.append(
                Problem(
                    shown_as,
                    "tls.certificate",
                    f"the certificate does not name {needed} (it names {', '.join(sorted(names)) or 'nothing'})",
                    f"get a certificate for {site.host} and *.{site.host}: each user's servers have a host of their own",
                )
            )
    not_after = certificate.not_valid_after_utc.date()
    if not_after < today:
        problems.append(Problem(shown_as, "tls.certificate", f"the certificate expired on {not_after}", "renew it"))
    try:
        key = serialization.load_pem_private_key(site.key.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        problems.append(
            Problem(shown_as, "tls.key", f"{site.key} is not an unencrypted PEM private key ({exc})", "give the key file")
        )
        return problems
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.PEM
    if key.public_key().public_bytes(encoding, public) != certificate.public_key().public_bytes(encoding, public):
        problems.append(
            Problem(shown_as, "tls.key", "the key does not belong to the certificate", "give the certificate's own key")
        )
    return problems


def _subnet_problems(site: Site, shown_as: str) -> list[Problem]:
    where = "network.students_subnet"
    try:
        network = ipaddress.ip_network(site.students_subnet)
    except ValueError as exc:
        return [Problem(shown_as, where, f"{site.students_subnet} is not a subnet ({exc})", "write e.g. 172.30.0.0/20")]
    if network.prefixlen > 24:
        return [Problem(shown_as, where, f"{network} is too small for a lab", "use a /24 or larger, e.g. 172.30.0.0/20")]
    if not network.is_private:
        return [Problem(shown_as, where, f"{network} is not a private range", "use a private range, e.g. 172.30.0.0/20")]
    return []


def _swarm_problems(site: Site, shown_as: str) -> list[Problem]:
    swarm = site.swarm
    if swarm is None:
        return []
    problems = []
    try:
        address = ipaddress.ip_address(swarm.manager_address)
    except ValueError as exc:
        return [
            Problem(
                shown_as, "swarm.manager_address", f"{swarm.manager_address} is not an address ({exc})", "write e.g. 10.0.0.2"
            )
        ]
    if address.is_loopback or address.is_unspecified:
        problems.append(
            Problem(
                shown_as,
                "swarm.manager_address",
                f"{address} cannot be reached from other machines",
                "write this server's address on the nodes' network (docker swarm init --advertise-addr)",
            )
        )
    elif address in ipaddress.ip_network(site.students_subnet, strict=False):
        problems.append(
            Problem(
                shown_as,
                "swarm.manager_address",
                f"{address} is inside the students' subnet {site.students_subnet}",
                "write this server's address on the nodes' network, or move network.students_subnet",
            )
        )
    if site.gpus:
        problems.append(
            Problem(
                shown_as,
                "gpus",
                "on a swarm, GPUs are declared per node, not in the site file",
                f"remove gpus: and label each GPU node: docker node update --label-add {Labels.NODE_ROLE}=gpu "
                f"--label-add {Labels.NODE_GPUS}=0,1 NODE",
            )
        )
    if swarm.registry_port in (swarm.engine_port, site.ssh_port):
        problems.append(
            Problem(
                shown_as,
                "swarm.registry_port",
                f"{swarm.registry_port} is taken by another of the lab's ports",
                "pick another port",
            )
        )
    return problems


def _gpu_problems(site: Site, shown_as: str) -> list[Problem]:
    problems = []
    for key in ("uuid", "index"):
        seen: set[Any] = set()
        for position, device in enumerate(site.gpus):
            if device[key] in seen:
                problems.append(Problem(shown_as, f"gpus[{position}].{key}", f"{device[key]!r} is listed twice", "each GPU once"))
            seen.add(device[key])
    return problems


def machine_problems(site: Site, *, today: datetime.date | None = None) -> list[Problem]:
    """What the schema cannot check: files, the certificate, the subnet, the GPUs, the catalog."""
    shown_as = str(site.path)
    today = today or datetime.date.today()
    problems = []
    certificate_file = _file_problem(shown_as, "tls.certificate", site.certificate, "the PEM certificate")
    key_file = _file_problem(shown_as, "tls.key", site.key, "the certificate's private key")
    problems += [p for p in (certificate_file, key_file) if p]
    if certificate_file is None and key_file is None:
        problems += _certificate_problems(site, shown_as, today)
    secret = _file_problem(shown_as, "oidc.client_secret_file", site.client_secret_file, "the client secret from the provider")
    problems += [secret] if secret else []
    problems += _subnet_problems(site, shown_as)
    problems += _gpu_problems(site, shown_as)
    problems += _swarm_problems(site, shown_as)
    if not site.catalog.is_dir():
        problems.append(Problem(shown_as, "catalog", f"{site.catalog} is not a folder", "write the path of the course catalog"))
    else:
        try:
            load_catalog(site.catalog)
        except ProblemsError as exc:
            problems += exc.problems
    return problems


def load_site(path: Path, *, check_machine: bool = True, today: datetime.date | None = None) -> Site:
    """Read and check the site file; ProblemsError lists every problem, one line each."""
    shown_as = str(path)
    data = load_yaml_file(path, shown_as)
    if data is None:
        data = {}
    problems = schema_problems(data, site_schema(), shown_as)
    if problems:
        raise ProblemsError(problems)
    site = site_from_data(data, path)
    if check_machine:
        problems = machine_problems(site, today=today)
        if problems:
            raise ProblemsError(problems)
    return site
