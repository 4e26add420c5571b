"""Runbook "A backend's client certificate was stolen: revoke it" (docs/runbooks.md), performed.

Against a real ``tuf-signer serve``: the CA publishes a CRL listing the stolen
certificate, the config names it (``server.tls.crl``), SIGHUP reloads it without
a restart, the stolen certificate is refused ``UNAUTHENTICATED`` and the refusal
is on the record, while a new certificate for the same identity signs, and the
record shows what the stolen one signed.
"""

from __future__ import annotations

import datetime
import json
import signal
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import DevSigner, payload, run


def _ca(tls: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((tls / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def publish_crl(tls: Path, serials: list[int]) -> Path:
    """Runbook step 2: the CA signs a CRL listing the stolen certificate(s)."""
    ca, key = _ca(tls)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=7))
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    path = tls / "ca.crl"
    path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


def reissue(tls: Path, name: str) -> tuple[Path, Path]:
    """Runbook step 4: a new key and certificate for the same identity (SAN URI)."""
    ca, ca_key = _ca(tls)
    old = x509.load_pem_x509_certificate((tls / f"{name}.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=90))
    )
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = tls / f"{name}-2.crt", tls / f"{name}-2.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_revoke_a_stolen_backend_certificate(dev_signer: DevSigner) -> None:
    tls = dev_signer.directory / "tls"
    sign = ("sign", "--key", "online", "-")
    dev_signer.as_("backend", *sign, stdin=payload("snapshot", 1))  # before the theft
    stolen = dev_signer.env("backend")  # the thief's copy of the credential
    run(*sign, stdin=payload("snapshot", 2), env=stolen)

    # Steps 2-3: publish the CRL, name it in the config, reload with SIGHUP.
    serial = x509.load_pem_x509_certificate((tls / "backend.crt").read_bytes()).serial_number
    publish_crl(tls, [serial])
    text = dev_signer.config.read_text()
    with_crl = text.replace('# crl = "tls/ca.crl"', 'crl = "tls/ca.crl"')
    assert with_crl != text
    dev_signer.config.write_text(with_crl)
    dev_signer.proc.send_signal(signal.SIGHUP)
    for _ in range(100):
        out = run(*sign, stdin=payload("snapshot", 3), env=stolen, check=False)
        if out.returncode != 0:
            break
        time.sleep(0.1)
    assert out.returncode == 1
    assert "UNAUTHENTICATED" in out.stderr
    assert f"serial 0x{serial:x}" in out.stderr
    dev_signer.as_("admin", "keys", "list")  # other identities are untouched

    # Step 4: the backend gets a new certificate, same identity; it signs at once.
    cert, key = reissue(tls, "backend")
    fresh = {**dev_signer.env("backend"), "TUF_SIGNER_CERT": str(cert), "TUF_SIGNER_KEY": str(key)}
    run(*sign, stdin=payload("snapshot", 3), env=fresh)
    again = run(*sign, stdin=payload("snapshot", 4), env=stolen, check=False)
    assert "UNAUTHENTICATED" in again.stderr

    # Step 5: what did the identity sign? Every grant is on the record, with its identity,
    # and the refused attempts of the stolen certificate are counted there too.
    assert dev_signer.stop() == 0
    records = [
        json.loads(line)["event"]
        for line in run("audit", "export", "--config", str(dev_signer.config)).stdout.splitlines()
    ]
    backend = "uri:spiffe://tuf-signer.dev/backend"
    granted = [
        (r["role"], r["metadata_version"])
        for r in records
        if r["identity"] == backend and r["outcome"] == "granted"
    ]
    assert granted == [("snapshot", 1), ("snapshot", 2), ("snapshot", 3)]
    refused = [r for r in records if r["outcome"] == "refused" and r["status"] == "UNAUTHENTICATED"]
    assert refused, "the stolen certificate's attempts must be on the record"
    assert dev_signer.proc.stderr is not None
    assert "reload" in dev_signer.proc.stderr.read().decode()
