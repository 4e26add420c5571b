"""Development PKI for ``dev-init``: a CA, a server certificate, two client certificates.

ECDSA P-256 throughout (every TLS stack speaks it). Client identities are SAN
URIs (``uri:spiffe://tuf-signer.dev/NAME`` in an access rule). Every leaf is
CA:FALSE with one extended key usage, clientAuth or serverAuth: the server
refuses client certificates without clientAuth or with CA:TRUE. For development only:
the CA key is kept beside the certificates so more clients can be issued.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tuf_signer._files import PUBLIC, SECRET, write_new

DEV_IDENTITY_PREFIX = "spiffe://tuf-signer.dev/"
_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key on disk."""

    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_new(path, pem, SECRET)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tuf-signer development"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
    )


class DevCa:
    """A throwaway certificate authority writing into one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = _name("tuf-signer development CA")
        cert = (
            _builder(self._name, self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / "ca.crt"
        write_new(self.cert, cert.public_bytes(serialization.Encoding.PEM), PUBLIC)
        _write_key(directory / "ca.key", self._key)

    def issue(self, name: str, *, server: bool) -> Issued:
        """Issue ``NAME.crt``/``NAME.key``: a server cert for loopback, or a client cert.

        A client certificate carries the identity ``spiffe://tuf-signer.dev/NAME``.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName]
        if server:
            sans = [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            sans = [x509.UniformResourceIdentifier(DEV_IDENTITY_PREFIX + name)]
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            _builder(_name(name), self._name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        issued = Issued(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        write_new(issued.cert, cert.public_bytes(serialization.Encoding.PEM), PUBLIC)
        _write_key(issued.key, key)
        return issued
