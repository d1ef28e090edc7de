"""A certificate authority of the demo lab's own and a wildcard certificate for its domain.

Per-server origins need HTTPS (host-prefixed cookies are Secure-only), so even the demo lab speaks it: the
hub at ``https://<domain>``, each user's servers at ``https://<user>.<domain>``. ``make up`` makes the CA
once (``<state>/lab/tls/ca.crt``; import it into a browser to trust the demo), the tests make their own.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..deploy.certificates import self_signed_ca

VALID_DAYS = 825


@dataclass(frozen=True)
class LabCertificates:
    folder: Path

    @property
    def ca_certificate(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def certificate(self) -> Path:
        return self.folder / "server.crt"

    @property
    def key(self) -> Path:
        return self.folder / "server.key"

    def ensure(self, domain: str) -> LabCertificates:
        """Make the CA and a certificate for ``domain`` and ``*.domain`` unless they exist for that domain."""
        if self.certificate.exists() and self._names() == {domain, f"*.{domain}"}:
            return self
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca_key, ca_cert = self._load_or_make_ca()
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName(domain), x509.DNSName(f"*.{domain}")]
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(self.key, key)
        self.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return self

    def _names(self) -> set[str]:
        certificate = x509.load_pem_x509_certificate(self.certificate.read_bytes())
        return set(
            certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        )

    def _load_or_make_ca(self):
        ca_key_path = self.folder / "ca.key"
        if ca_key_path.exists() and self.ca_certificate.exists():
            key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
            return key, x509.load_pem_x509_certificate(self.ca_certificate.read_bytes())
        key, certificate = self_signed_ca(
            "Teachlab demo lab CA", days=VALID_DAYS, now=datetime.datetime.now(datetime.timezone.utc)
        )
        _write_private(ca_key_path, key)
        self.ca_certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return key, certificate


def _write_private(path: Path, key) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)
