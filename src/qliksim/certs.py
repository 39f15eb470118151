"""Certificates laid out as the QMC's "Export certificates" writes them, plus the server's own.

``root.pem`` is the site CA; ``client.pem`` / ``client_key.pem`` (CN=QlikClient) is what clients present;
``server.pem`` / ``server_key.pem`` is what the simulated services present. All keys are RSA 2048.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class SiteCertificates:
    directory: Path

    @property
    def root(self) -> Path:
        return self.directory / "root.pem"

    @property
    def client(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client_key.pem"

    @property
    def server(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server_key.pem"

    def exist(self) -> bool:
        return all(
            p.is_file() for p in (self.root, self.client, self.client_key, self.server, self.server_key)
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _issue(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Certificate,
    issuer_key: rsa.RSAPrivateKey,
    usage: x509.ObjectIdentifier,
    names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_site_certificates(directory: Path, hostname: str | None = None) -> SiteCertificates:
    """Create a site CA and the client and server certificates it signs, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    hostname = hostname or socket.gethostname()
    now = datetime.datetime.now(datetime.UTC)
    ca_key = _key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{hostname}-CA"))
        .issuer_name(_name(f"{hostname}-CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    client_key = _key()
    client = _issue("QlikClient", client_key, ca, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH)
    server_key = _key()
    names: list[x509.GeneralName] = [
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    server = _issue(hostname, server_key, ca, ca_key, ExtendedKeyUsageOID.SERVER_AUTH, names)

    files = SiteCertificates(directory)
    files.root.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.client.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(files.client_key, client_key)
    files.server.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(files.server_key, server_key)
    return files
