"""The lab's node CA and what it signs (spawner/deploy/certificates.py, issue 14): the certificates the hub, the nodes'
engines and the registry use on a swarm, and the folder an admin copies onto each node.

The handshakes run Python's TLS (OpenSSL, as docker-py does in the hub) between a listener and a client this test
starts on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from spawner.deploy.certificates import NodeCertificates, is_client_certificate, names_of

MANAGER = "10.0.0.2"
NODE = "10.0.0.5"


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def certificates(tmp_path) -> NodeCertificates:
    return NodeCertificates(tmp_path / "secrets" / "nodes").ensure(MANAGER)


def test_a_node_certificate_is_signed_by_the_ca_names_the_address_and_serves_only(certificates):
    node = certificates.write_node(NODE, engine_port=2376, registry=f"{MANAGER}:5000")
    tls = node.tree / "etc" / "docker" / "tls"
    certificate = load(tls / "server.crt")
    certificate.verify_directly_issued_by(load(certificates.ca_path))
    assert names_of(certificate) == {NODE}
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert (tls / "ca.crt").read_bytes() == certificates.ca_path.read_bytes()


def test_the_hubs_certificate_is_for_client_auth_only_and_the_registrys_names_the_manager(certificates):
    hub = load(certificates.hub_certificate_path)
    hub.verify_directly_issued_by(load(certificates.ca_path))
    assert is_client_certificate(hub) and names_of(hub) == set()
    registry = load(certificates.registry_certificate_path)
    registry.verify_directly_issued_by(load(certificates.ca_path))
    assert names_of(registry) == {MANAGER} and not is_client_certificate(registry)
    ca = load(certificates.ca_path)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_every_key_is_private_and_every_folder_holding_one_too(certificates):
    node = certificates.write_node(NODE, engine_port=2376, registry=f"{MANAGER}:5000")
    keys = [
        certificates.ca_key_path,
        certificates.hub_key_path,
        certificates.registry_key_path,
        certificates.docker_cli_folder / "key.pem",
        node.tree / "etc" / "docker" / "tls" / "server.key",
    ]
    for key in keys:
        assert mode(key) == 0o600, key
        assert b"PRIVATE KEY" in key.read_bytes()
    for folder in (certificates.folder, certificates.docker_cli_folder, node.folder, node.tree / "etc" / "docker" / "tls"):
        assert mode(folder) == 0o700, folder
    # Folders that land on the node's own /etc keep the modes the node's have (tar would give them to /etc).
    for folder in (node.tree / "etc", node.tree / "etc" / "docker", node.tree / "etc" / "default"):
        assert mode(folder) == 0o755, folder


def test_the_node_folder_holds_the_engines_settings_and_the_registrys_trust(certificates):
    node = certificates.write_node(NODE, engine_port=2399, registry=f"{MANAGER}:5001")
    defaults = (node.tree / "etc" / "default" / "docker").read_text()
    for flag in (
        "--tlsverify",
        "--tlscacert=/etc/docker/tls/ca.crt",
        "--tlscert=/etc/docker/tls/server.crt",
        "--tlskey=/etc/docker/tls/server.key",
        f"--host=tcp://{NODE}:2399",
    ):
        assert flag in defaults
    trust = node.tree / "etc" / "docker" / "certs.d" / f"{MANAGER}:5001" / "ca.crt"
    assert trust.read_bytes() == certificates.ca_path.read_bytes()
    readme = (node.folder / "README.txt").read_text()
    assert f"ssh root@{NODE}" in readme and "--no-overwrite-dir" in readme and '"tlsverify": true' in readme


def test_ensure_keeps_what_is_right_so_docker_secrets_keep_their_names(certificates):
    files = [certificates.ca_path, certificates.hub_certificate_path, certificates.hub_key_path, certificates.registry_key_path]
    before = [path.read_bytes() for path in files]
    node = certificates.write_node(NODE, engine_port=2376, registry=None)
    server = (node.tree / "etc" / "docker" / "tls" / "server.crt").read_bytes()
    NodeCertificates(certificates.folder).ensure(MANAGER).write_node(NODE, engine_port=2376, registry=None)
    assert [path.read_bytes() for path in files] == before
    assert (node.tree / "etc" / "docker" / "tls" / "server.crt").read_bytes() == server


def test_a_new_manager_address_gets_a_new_registry_certificate_and_the_rest_stays(certificates):
    hub = certificates.hub_certificate_path.read_bytes()
    NodeCertificates(certificates.folder).ensure("10.0.0.9")
    assert names_of(load(certificates.registry_certificate_path)) == {"10.0.0.9"}
    assert certificates.hub_certificate_path.read_bytes() == hub


def test_certificates_near_their_end_are_made_again(certificates):
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=820)
    old_hub = certificates.hub_certificate_path.read_bytes()
    renewed = NodeCertificates(certificates.folder, now=later).ensure(MANAGER)
    assert renewed.hub_certificate_path.read_bytes() != old_hub
    assert load(renewed.hub_certificate_path).not_valid_after_utc > later + datetime.timedelta(days=800)


def test_a_new_ca_replaces_every_certificate_the_old_one_signed(certificates):
    certificates.ca_key_path.unlink()  # a CA without its key cannot sign: made again
    old_ca = certificates.ca_path.read_bytes()
    NodeCertificates(certificates.folder).ensure(MANAGER)
    assert certificates.ca_path.read_bytes() != old_ca
    for path in (certificates.hub_certificate_path, certificates.registry_certificate_path):
        load(path).verify_directly_issued_by(load(certificates.ca_path))


def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> str:
    """A TLS handshake on 127.0.0.1 between a listener this test starts and a client; '' or the client's error."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with server_context.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"x")
                tls.recv(1)  # the server's answer to a refused client certificate arrives here (TLS 1.3)
        return ""
    except (ssl.SSLError, OSError) as exc:
        return str(exc)
    finally:
        thread.join(timeout=10)
        listener.close()


def engine_context(certificates: NodeCertificates, address: str) -> ssl.SSLContext:
    """What a node's dockerd does with --tlsverify: its own certificate, and only clients the CA signed."""
    node = certificates.write_node(address, engine_port=2376, registry=None)
    tls = node.tree / "etc" / "docker" / "tls"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls / "server.crt", tls / "server.key")
    context.load_verify_locations(tls / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def hub_context(certificates: NodeCertificates, *, with_certificate: bool = True) -> ssl.SSLContext:
    """What the hub's docker-py does: the lab's CA only, and its client certificate."""
    context = ssl.create_default_context(cafile=str(certificates.ca_path))
    if with_certificate:
        context.load_cert_chain(certificates.hub_certificate_path, certificates.hub_key_path)
    return context


def test_the_hub_and_a_nodes_engine_complete_mutual_tls_and_strangers_do_not(certificates, tmp_path):
    assert handshake(engine_context(certificates, "127.0.0.1"), hub_context(certificates)) == ""
    # A client without a certificate, or with one of another CA, is refused by the engine.
    assert handshake(engine_context(certificates, "127.0.0.1"), hub_context(certificates, with_certificate=False)) != ""
    stranger = NodeCertificates(tmp_path / "other").ensure()
    foreign = ssl.create_default_context(cafile=str(certificates.ca_path))
    foreign.load_cert_chain(stranger.hub_certificate_path, stranger.hub_key_path)
    assert handshake(engine_context(certificates, "127.0.0.1"), foreign) != ""
    # The hub refuses an engine whose certificate names another address (a node answering for another).
    assert "certificate" in handshake(engine_context(certificates, "127.0.0.2"), hub_context(certificates)).lower()
