"""TLS settings: arguments over environment, both-or-neither, readable PEM files.

These need no server: they check what a client builds before it connects.
End-to-end mutual TLS is tested with the server's TLS listener.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
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
    INSECURE_ENV,
    KEY_ENV,
    SERVER_ENV,
    AsyncClient,
    Client,
    TlsConfig,
    TufSignerSigner,
    resolve_server,
)
from tuf_signer.errors import ConfigError, RemoteError, RequestError


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


# --- finding 12: no silent plaintext to a remote host ----------------------------------

PLAINTEXT_TARGETS = [
    ("f12-plaintext-remote-refused", "signer.example:50051", False),
    ("f12-plaintext-private-address-refused", "10.1.2.3:50051", False),
    ("f12-plaintext-any-address-refused", "0.0.0.0:50051", False),
    ("f12-plaintext-dns-target-refused", "dns:///signer.example:50051", False),
    ("f12-plaintext-mixed-address-list-refused", "ipv4:127.0.0.1:1,10.0.0.1:1", False),
    ("f12-plaintext-ipv4-loopback-allowed", "127.0.0.1:50051", True),
    ("f12-plaintext-loopback-range-allowed", "127.8.0.1:50051", True),
    ("f12-plaintext-localhost-allowed", "localhost:50051", True),
    ("f12-plaintext-ipv6-loopback-allowed", "[::1]:50051", True),
    ("f12-plaintext-unix-socket-allowed", "unix:/run/tuf-signer.sock", True),
]


@pytest.mark.parametrize(
    ("server", "allowed"),
    [(s, a) for _, s, a in PLAINTEXT_TARGETS],
    ids=[i for i, _, _ in PLAINTEXT_TARGETS],
)
async def test_plaintext_only_to_loopback_unless_insecure(
    monkeypatch: pytest.MonkeyPatch, server: str, allowed: bool
) -> None:
    for name in (CA_ENV, CERT_ENV, KEY_ENV, INSECURE_ENV):
        monkeypatch.delenv(name, raising=False)
    if allowed:
        Client(server).close()
        async with AsyncClient(server):
            pass
        return
    match = (
        rf"no CA is set \(ca or \${CA_ENV}\).*plaintext.*not a loopback address.*"
        rf"insecure=True / {INSECURE_ENV}=1"
    )
    with pytest.raises(ConfigError, match=match):
        Client(server)
    with pytest.raises(ConfigError, match=match):
        AsyncClient(server)
    # Told explicitly, by argument or by the environment: allowed.
    Client(server, insecure=True).close()
    monkeypatch.setenv(INSECURE_ENV, "1")
    Client(server).close()


def test_signer_uri_refuses_plaintext_to_a_remote_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from securesystemslib.signer import SSlibKey

    for name in (CA_ENV, CERT_ENV, KEY_ENV, INSECURE_ENV):
        monkeypatch.delenv(name, raising=False)
    key = SSlibKey("ab" * 32, "ed25519", "ed25519", {"public": "cd" * 32})
    with pytest.raises(ConfigError, match=INSECURE_ENV):
        TufSignerSigner.from_priv_key_uri("tufsigner://signer.example:50051/online", key)


@pytest.mark.parametrize(
    ("value", "insecure"),
    [("1", True), ("true", True), ("YES", True), ("0", False), ("no", False), ("", False)],
    ids=["one", "true", "yes-upper", "zero", "no", "empty"],
)
def test_insecure_env_values(value: str, insecure: bool) -> None:
    assert TlsConfig.from_env(environ={INSECURE_ENV: value}).insecure is insecure


def test_insecure_env_garbage_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=rf"\${INSECURE_ENV}: expected 1 or 0"):
        TlsConfig.from_env(environ={INSECURE_ENV: "maybe"})


def test_insecure_contradicts_a_ca(pki: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=rf"insecure \(\${INSECURE_ENV}\) .* a CA is set"):
        Client("signer.example:1", ca=pki["ca"], insecure=True)
    with pytest.raises(RequestError, match="either tls= or"):
        Client("signer.example:1", tls=TlsConfig(), insecure=True)


def _local_address() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for UDP connect
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


@pytest.fixture
def listener() -> Iterator[tuple[str, list[bytes]]]:
    """A TCP listener on a non-loopback address that keeps what clients send."""
    address = _local_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    server = socket.create_server((address, 0))
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    received.append(conn.recv(1024))
                except OSError:
                    received.append(b"")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"{address}:{server.getsockname()[1]}", received
    finally:
        stop.set()
        thread.join()
        server.close()


def test_f12_no_plaintext_byte_reaches_a_remote_host(
    listener: tuple[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    target, received = listener
    for name in (CA_ENV, CERT_ENV, KEY_ENV, INSECURE_ENV):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="not a loopback address"), Client(target, timeout=1):
        pass  # never reached: the client refuses to open the channel
    assert received == []
    # The same call, told to go plaintext, does send the HTTP/2 preface in clear:
    # the refusal above is what kept it from the wire.
    with Client(target, timeout=1, insecure=True) as client, pytest.raises(RemoteError):
        client.public_keys()
    assert received and received[0].startswith(b"PRI * HTTP/2.0")
