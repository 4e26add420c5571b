"""TLS settings: arguments over environment, both-or-neither, readable PEM files.

These need no server: they check what a client builds before it connects.
End-to-end mutual TLS is tested with the server's TLS listener.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tuf_signer.client import (
    CA_ENV,
    CERT_ENV,
    KEY_ENV,
    SERVER_ENV,
    AsyncClient,
    Client,
    TlsConfig,
    resolve_server,
)
from tuf_signer.errors import ConfigError, RequestError


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed CA certificate and a key, as PEM files (and a non-PEM file)."""
    d = tmp_path_factory.mktemp("pki")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    files = {
        "ca": d / "ca.crt",
        "cert": d / "client.crt",
        "key": d / "client.key",
        "junk": d / "junk.txt",
    }
    files["ca"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files["junk"].write_text("not a certificate\n")
    return files


# (arguments, environment, expected (ca, cert, key)); "A"/"E" name argument/env paths.
FROM_ENV = [
    ({}, {}, (None, None, None)),
    ({}, {CA_ENV: "E/ca"}, ("E/ca", None, None)),
    ({}, {CA_ENV: "E/ca", CERT_ENV: "E/c", KEY_ENV: "E/k"}, ("E/ca", "E/c", "E/k")),
    ({"ca": "A/ca"}, {CA_ENV: "E/ca"}, ("A/ca", None, None)),
    (
        {"ca": "A/ca", "cert": "A/c", "key": "A/k"},
        {CA_ENV: "E/ca", CERT_ENV: "E/c", KEY_ENV: "E/k"},
        ("A/ca", "A/c", "A/k"),
    ),
    ({"cert": "A/c"}, {CA_ENV: "E/ca", KEY_ENV: "E/k"}, ("E/ca", "A/c", "E/k")),
    ({}, {CA_ENV: "", CERT_ENV: "", KEY_ENV: ""}, (None, None, None)),
    ({"ca": ""}, {CA_ENV: "E/ca"}, ("E/ca", None, None)),
]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    FROM_ENV,
    ids=[
        "nothing-plaintext",
        "ca-from-env",
        "mtls-from-env",
        "argument-beats-env",
        "all-arguments-beat-env",
        "mixed-argument-and-env",
        "empty-env-is-unset",
        "empty-argument-is-unset",
    ],
)
def test_from_env(
    args: dict[str, str], env: dict[str, str], expected: tuple[str | None, ...]
) -> None:
    tls = TlsConfig.from_env(**args, environ=env)
    assert (tls.ca, tls.cert, tls.key) == tuple(Path(p) if p else None for p in expected)
    assert tls.secure is (expected[0] is not None)


@pytest.mark.parametrize(
    ("ca", "cert", "key", "match"),
    [
        ("ca", "cert", None, "TLS cert is set but key is not"),
        ("ca", None, "key", "TLS key is set but cert is not"),
        (None, "cert", "key", "client certificate needs a CA"),
    ],
    ids=["cert-without-key", "key-without-cert", "client-cert-without-ca"],
)
def test_contradictory_settings_are_refused(
    ca: str | None, cert: str | None, key: str | None, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        TlsConfig(
            ca=Path(ca) if ca else None,
            cert=Path(cert) if cert else None,
            key=Path(key) if key else None,
        )


def test_env_half_pair_is_refused_naming_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CA_ENV, "/x/ca.crt")
    monkeypatch.setenv(CERT_ENV, "/x/client.crt")
    with pytest.raises(ConfigError, match=r"\$TUF_SIGNER_CERT / \$TUF_SIGNER_KEY"):
        Client("127.0.0.1:1")


def test_plaintext_has_no_credentials() -> None:
    assert TlsConfig().credentials() is None


@pytest.mark.parametrize("mutual", [False, True], ids=["server-auth", "mutual"])
def test_credentials_from_pem_files(pki: dict[str, Path], mutual: bool) -> None:
    tls = TlsConfig(
        ca=pki["ca"], cert=pki["cert"] if mutual else None, key=pki["key"] if mutual else None
    )
    assert isinstance(tls.credentials(), grpc.ChannelCredentials)


@pytest.mark.parametrize(
    ("field", "bad", "match"),
    [
        ("ca", "missing", r"TLS ca \(TUF_SIGNER_CA\): cannot read .*missing"),
        ("ca", "junk", r"TLS ca \(TUF_SIGNER_CA\): .*junk.txt holds no PEM data"),
        ("cert", "missing", r"TLS cert \(TUF_SIGNER_CERT\): cannot read"),
        ("key", "junk", r"TLS key \(TUF_SIGNER_KEY\): .*holds no PEM data"),
    ],
    ids=["ca-missing", "ca-not-pem", "cert-missing", "key-not-pem"],
)
def test_unreadable_files_are_named(
    pki: dict[str, Path], tmp_path: Path, field: str, bad: str, match: str
) -> None:
    paths = {"ca": pki["ca"], "cert": pki["cert"], "key": pki["key"]}
    paths[field] = tmp_path / "missing" if bad == "missing" else pki["junk"]
    with pytest.raises(ConfigError, match=match):
        Client("127.0.0.1:1", **paths)


def test_client_takes_tls_from_env(pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CA_ENV, str(pki["ca"]))
    monkeypatch.setenv(CERT_ENV, str(pki["cert"]))
    monkeypatch.setenv(KEY_ENV, str(pki["key"]))
    with Client("127.0.0.1:1") as client:
        assert client.tls == TlsConfig(pki["ca"], pki["cert"], pki["key"])


def test_tls_and_paths_are_exclusive(pki: dict[str, Path]) -> None:
    with pytest.raises(RequestError, match="either tls= or ca="):
        Client("127.0.0.1:1", tls=TlsConfig(ca=pki["ca"]), ca=pki["ca"])


async def test_async_client_validates_the_same_way(pki: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="give both or neither"):
        AsyncClient("127.0.0.1:1", ca=pki["ca"], cert=pki["cert"])
    async with AsyncClient("127.0.0.1:1", ca=pki["ca"]) as client:
        assert client.tls.secure


@pytest.mark.parametrize(
    ("given", "env", "expected"),
    [
        ("h:1", "e:2", "h:1"),
        (None, "e:2", "e:2"),
        (None, None, "127.0.0.1:50051"),
    ],
    ids=["argument", "env", "default"],
)
def test_resolve_server(
    monkeypatch: pytest.MonkeyPatch, given: str | None, env: str | None, expected: str
) -> None:
    if env:
        monkeypatch.setenv(SERVER_ENV, env)
    assert resolve_server(given) == expected
