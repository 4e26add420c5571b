"""HTTPS: a witness with ``tls_cert`` and ``tls_key`` serves the same protocol over TLS."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.witness.conftest import Log, make_witness
from tuf_signer._files import SECRET, write_new
from tuf_signer.witness import WitnessUnavailable, add_checkpoint, fetch_checkpoint

ORIGIN = "log.test/a"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_new(key_path, pem, SECRET)
    return cert_path, key_path


def test_the_protocol_over_https(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = Log(ORIGIN)
    cert, key = _self_signed(tmp_path)
    w = make_witness(
        tmp_path / "w",
        [log],
        settings=f'tls_cert = "{cert}"\ntls_key = "{key}"\ntimeout_seconds = 1',
    )
    w.start()
    try:
        url = w.url.replace("http://", "https://")
        # The client trusts the system's CAs; this one is made to trust the test certificate.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        lines = add_checkpoint(url, 0, (), log.checkpoint(3), timeout=5)
        assert lines.startswith(f"\u2014 {w.vkey.name} ".encode())
        assert fetch_checkpoint(url, ORIGIN, timeout=5) is not None
        # Plain HTTP on the TLS port, and a TLS client that does not trust the certificate:
        # each fails alone, and the witness goes on serving.
        host, port = w.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert not s.recv(100).startswith(b"HTTP/1.1 ")
        monkeypatch.delenv("SSL_CERT_FILE")
        with pytest.raises(WitnessUnavailable, match="SSLCertVerificationError"):
            fetch_checkpoint(url, ORIGIN, timeout=5)
        context = ssl.create_default_context(cafile=str(cert))
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as s,
        ):
            s.sendall(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 404 ")
        assert w.alive()
    finally:
        w.stop()


def test_a_readable_tls_key_is_refused(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    key.chmod(0o644)
    w = make_witness(
        tmp_path / "w", [Log(ORIGIN)], settings=f'tls_cert = "{cert}"\ntls_key = "{key}"'
    )
    with pytest.raises(AssertionError, match=r"witness\.tls_key: .* accessible to group or others"):
        w.start()
