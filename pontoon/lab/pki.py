"""A small certificate authority for the lab and the tests (`cryptography`).

`pontoon lab up --tls` makes one CA per lab and from it a certificate per
etcd member and per host; the tests also make expired certificates and ones
from a foreign CA. Keys are ECDSA P-256, files PEM, keys mode 0600, laid out
as Docker's cert folders: ca.pem, cert.pem, key.pem.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pontoon.tls import TlsFiles

DAY = datetime.timedelta(days=1)
CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "cert.pem", "key.pem"


@dataclasses.dataclass
class Authority:
    """A CA's certificate and key, in memory and at `cert_path`."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path

    @classmethod
    def create(cls, directory: Path, name: str = "pontoon lab CA", days: int = 365) -> Authority:
        """A self-signed CA; ca.pem and ca-key.pem in `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            _builder(subject, subject, key.public_key(), now - DAY, now + days * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_key(directory / "ca-key.pem", key)
        cert_path = directory / CA_FILE
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(cert, key, cert_path)

    @classmethod
    def load(cls, directory: Path) -> Authority:
        """The CA `create` wrote in `directory`."""
        cert_path = directory / CA_FILE
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory}/ca-key.pem is not an EC key")
        return cls(cert, key, cert_path)

    def issue(
        self,
        directory: Path,
        name: str,
        *,
        ips: list[str] | None = None,
        dns: list[str] | None = None,
        server: bool = True,
        client: bool = True,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> TlsFiles:
        """A certificate for `name` (also its subject alternative names) in
        `directory` as cert.pem and key.pem, with a copy of ca.pem beside."""
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            _builder(
                self.cert.subject,
                subject,
                key.public_key(),
                not_before or now - DAY,
                not_after or now + 365 * DAY,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        names = _alt_names(ips or [], dns or [])
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        files = TlsFiles(directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE)
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(files.key, key)
        if files.ca != self.cert_path:
            files.ca.write_bytes(self.cert_path.read_bytes())
        return files


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _builder(
    issuer: x509.Name,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .issuer_name(issuer)
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _alt_names(ips: list[str], dns: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    return names


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600, never world-readable for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
