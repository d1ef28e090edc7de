"""The lab's own CA for a swarm's nodes, and the certificates it signs (docs/scale-out.md, docs/admins.md).

The hub reaches every node's Docker engine over TCP with mutual TLS, and every node pulls course images from the
stack's registry over TLS; both trust one CA that only this lab uses, kept in the site's secrets folder
(``<secrets>/nodes``). ``NodeCertificates`` makes it once and then signs:

* the hub's client certificate (client auth only), the one certificate a node's engine accepts;
* a server certificate per node's engine, naming the node's address (the hub checks it against the CA);
* the registry's server certificate, naming the manager's address.

Every private key is written 0600 in 0700 folders, and nothing is replaced that is still right, so the Docker
secrets made from these files keep their names (``content_name``) until a certificate really changes. Pure file
work with ``cryptography``: no Docker here; ``teachlab deploy node-certificates`` and ``teachlab deploy up`` call it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..core.secrets import private_folder, write_private

CA_DAYS = 3650
CERTIFICATE_DAYS = 825
RENEW_BEFORE_DAYS = 30  # a certificate this close to its end is made again
ENGINE_TLS_DIR = "/etc/docker/tls"  # where a node's dockerd reads its files (the node folder's tree mirrors it)
DOCKER_DEFAULTS = "/etc/default/docker"  # Debian's docker.service adds its DOCKER_OPTS to `dockerd -H fd://`
CA_FILE, CA_KEY_FILE = "ca.crt", "ca.key"
HUB_CERTIFICATE_FILE, HUB_KEY_FILE = "hub.crt", "hub.key"
REGISTRY_CERTIFICATE_FILE, REGISTRY_KEY_FILE = "registry.crt", "registry.key"
CA_NAME = "Teachlab nodes CA"
HUB_NAME = "teachlab-hub"


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def subject_name(address: str) -> x509.GeneralName:
    """An IP address as an IP name (what TLS clients compare an address with), anything else as a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        return x509.DNSName(address)


def names_of(certificate: x509.Certificate) -> set[str]:
    """The addresses and host names a certificate names."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(value) for value in names.get_values_for_type(x509.IPAddress)} | set(names.get_values_for_type(x509.DNSName))


def is_client_certificate(certificate: x509.Certificate) -> bool:
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    return list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


@dataclass(frozen=True)
class NodeFolder:
    """What to copy onto one node: ``tree`` mirrors the node's ``/`` (its README.txt says how to copy it)."""

    address: str
    folder: Path

    @property
    def tree(self) -> Path:
        return self.folder / "root"


class NodeCertificates:
    """The lab's node CA in ``folder`` and the certificates it signs. ``ensure`` makes what is missing."""

    def __init__(self, folder: Path, *, now: datetime.datetime | None = None):
        self.folder = folder
        self._now = now

    # -- files --------------------------------------------------------------------------------------------
    @property
    def ca_path(self) -> Path:
        return self.folder / CA_FILE

    @property
    def ca_key_path(self) -> Path:
        return self.folder / CA_KEY_FILE

    @property
    def hub_certificate_path(self) -> Path:
        return self.folder / HUB_CERTIFICATE_FILE

    @property
    def hub_key_path(self) -> Path:
        return self.folder / HUB_KEY_FILE

    @property
    def registry_certificate_path(self) -> Path:
        return self.folder / REGISTRY_CERTIFICATE_FILE

    @property
    def registry_key_path(self) -> Path:
        return self.folder / REGISTRY_KEY_FILE

    @property
    def docker_cli_folder(self) -> Path:
        """The hub's client files under docker's own names, for ``DOCKER_CERT_PATH`` (``teachlab nodes``)."""
        return self.folder / "docker-cli"

    @property
    def hub_tls(self) -> dict:
        """docker-py ``TLSConfig`` arguments of the hub."""
        return {
            "ca_cert": str(self.ca_path),
            "client_cert": (str(self.hub_certificate_path), str(self.hub_key_path)),
            "verify": True,
        }

    def node_folder(self, address: str) -> NodeFolder:
        return NodeFolder(address, self.folder / "node" / address)

    # -- making them ----------------------------------------------------------------------------------------
    def ensure(self, manager_address: str | None = None) -> NodeCertificates:
        """The CA, the hub's client certificate and (with ``manager_address``) the registry's, each made only when
        missing, about to expire, not signed by the CA, or naming another address."""
        private_folder(self.folder)
        if not self._usable(self.ca_path, self.ca_path):
            self._make_ca()
        if not self._usable(self.hub_certificate_path, self.hub_key_path):
            self._write_pair(self.hub_certificate_path, self.hub_key_path, *self._issue(HUB_NAME, client=True))
        if manager_address is not None and not self._usable(
            self.registry_certificate_path, self.registry_key_path, manager_address
        ):
            self._write_pair(self.registry_certificate_path, self.registry_key_path, *self.server_certificate(manager_address))
        private_folder(self.docker_cli_folder)
        for source, target in ((self.ca_path, "ca.pem"), (self.hub_certificate_path, "cert.pem"), (self.hub_key_path, "key.pem")):
            write_private(self.docker_cli_folder / target, source.read_bytes())
        return self

    def server_certificate(self, address: str) -> tuple[bytes, bytes]:
        """A server certificate and its key (PEM) naming ``address``: a node's engine, or the registry."""
        return self._issue(address, client=False)

    def write_node(self, address: str, *, engine_port: int, registry: str | None) -> NodeFolder:
        """The folder of one node: its engine's certificate, key and the CA under ``/etc/docker/tls``, the engine's
        settings (``/etc/default/docker``), and the CA for the registry (``/etc/docker/certs.d/<registry>``). A
        certificate that still names the address and is not near its end is kept."""
        self.ensure()
        node = self.node_folder(address)
        private_folder(node.folder)
        tls = node.tree / ENGINE_TLS_DIR.lstrip("/")
        # The tree is unpacked onto the node's /: its folders carry the modes the node's own have (the key's is private).
        for folder in (node.tree, tls.parent.parent, tls.parent, tls.parent / "certs.d", node.tree / "etc" / "default"):
            _public_folder(folder)
        private_folder(tls)
        certificate, key = tls / "server.crt", tls / "server.key"
        if not self._usable(certificate, key, address):
            self._write_pair(certificate, key, *self.server_certificate(address))
        _public_file(tls / "ca.crt", self.ca_path.read_bytes())
        _public_file(node.tree / DOCKER_DEFAULTS.lstrip("/"), docker_defaults(address, engine_port).encode())
        if registry is not None:
            trust = tls.parent / "certs.d" / registry
            _public_folder(trust)
            _public_file(trust / "ca.crt", self.ca_path.read_bytes())
        _public_file(node.folder / "README.txt", node_instructions(address, engine_port, registry).encode())
        return node

    def remove_node(self, address: str) -> None:
        shutil.rmtree(self.node_folder(address).folder, ignore_errors=True)

    # -- inside ----------------------------------------------------------------------------------------------
    def now(self) -> datetime.datetime:
        return self._now or datetime.datetime.now(datetime.timezone.utc)

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        certificate = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
        return certificate, key

    def _usable(self, certificate_path: Path, key_path: Path, address: str | None = None) -> bool:
        if not (certificate_path.is_file() and key_path.is_file()):
            return False
        try:
            certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
        except ValueError:
            return False
        if certificate.not_valid_after_utc - self.now() < datetime.timedelta(days=RENEW_BEFORE_DAYS):
            return False
        if certificate_path == self.ca_path:
            return self.ca_key_path.is_file()
        ca, _ = self._ca()
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return address is None or address in names_of(certificate)

    def _make_ca(self) -> None:
        key, certificate = self_signed_ca(CA_NAME, days=CA_DAYS, now=self.now())
        # A new CA invalidates every certificate it did not sign: they are made again when next ensured.
        self._write_pair(self.ca_path, self.ca_key_path, _pem(certificate), _pem_key(key))

    def _issue(self, name: str, *, client: bool) -> tuple[bytes, bytes]:
        ca, ca_key = self._ca()
        key = ec.generate_private_key(ec.SECP256R1())
        now = self.now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if not client:
            builder = builder.add_extension(x509.SubjectAlternativeName([subject_name(name)]), critical=False)
        return _pem(builder.sign(ca_key, hashes.SHA256())), _pem_key(key)

    @staticmethod
    def _write_pair(certificate_path: Path, key_path: Path, certificate: bytes, key: bytes) -> None:
        write_private(key_path, key)
        _public_file(certificate_path, certificate)


def _public_folder(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)


def _public_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o644)


def self_signed_ca(common_name: str, *, days: int, now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new CA key and its self-signed certificate, which may sign end certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def docker_defaults(address: str, engine_port: int) -> str:
    """``/etc/default/docker`` of a node: Debian's docker.service runs ``dockerd -H fd:// $DOCKER_OPTS``, so these
    flags add the TCP socket with mutual TLS beside the local one."""
    flags = [
        "--tlsverify",
        f"--tlscacert={ENGINE_TLS_DIR}/ca.crt",
        f"--tlscert={ENGINE_TLS_DIR}/server.crt",
        f"--tlskey={ENGINE_TLS_DIR}/server.key",
        f"--host=tcp://{address}:{engine_port}",
    ]
    return (
        "# Teachlab: this node's Docker engine also listens on TCP with mutual TLS; only the lab's hub (a client\n"
        "# certificate of the lab's node CA) is let in (docs/admins.md, Adding machines).\n"
        f'DOCKER_OPTS="{" ".join(flags)}"\n'
    )


def daemon_json(address: str, engine_port: int) -> str:
    """The same settings for an engine configured by ``daemon.json`` (remove ``-H`` from its service's command line)."""
    settings = {
        "hosts": ["unix:///var/run/docker.sock", f"tcp://{address}:{engine_port}"],
        "tlsverify": True,
        "tlscacert": f"{ENGINE_TLS_DIR}/ca.crt",
        "tlscert": f"{ENGINE_TLS_DIR}/server.crt",
        "tlskey": f"{ENGINE_TLS_DIR}/server.key",
    }
    return json.dumps(settings, indent=2) + "\n"


def node_instructions(address: str, engine_port: int, registry: str | None) -> str:
    trust = (
        f"- etc/docker/certs.d/{registry}/ca.crt: the CA the node's engine trusts for the lab's registry at {registry}\n"
        "  (read at every pull; no restart needed for it).\n"
        if registry
        else ""
    )
    return (
        f"Teachlab: what to copy onto the node {address} (docs/admins.md, Adding machines).\n\n"
        "root/ mirrors the node's / :\n"
        f"- {ENGINE_TLS_DIR.lstrip('/')}/: the node's engine certificate (it names {address}), its key (0600) and the\n"
        "  lab's node CA, which signs the one client certificate the engine accepts (the hub's).\n"
        f"- {DOCKER_DEFAULTS.lstrip('/')}: DOCKER_OPTS that add tcp://{address}:{engine_port} with --tlsverify to\n"
        "  Debian's docker.service. An engine configured by /etc/docker/daemon.json instead takes:\n\n"
        f"{daemon_json(address, engine_port)}\n"
        f"{trust}\n"
        "Copy it as root, then restart the engine:\n\n"
        f"  tar -C root --owner=0 --group=0 -cf - . | ssh root@{address} \\\n"
        "      'tar -C / --no-overwrite-dir -xf - && systemctl restart docker'\n\n"
        f"Keep port {engine_port} reachable from the manager only (the hub); the engine refuses every other client.\n"
    )
