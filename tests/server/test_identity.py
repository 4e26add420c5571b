"""Finding 6 and 12: typed identities, client-certificate checks and revocation (P2).

Every row issues a real certificate from the server's client CA (or a
stranger's), talks to a real mutual-TLS server on a loopback port, and checks
the status, the reason and what went on the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tuf_signer.audit import AuditRecord
from tuf_signer.config import load_config
from tuf_signer.errors import ConfigError
from tuf_signer.model import Outcome
from tuf_signer.server import SignerServer
from tuf_signer.server._identity import Authenticator, IdentitySettings, Revocation
from tuf_signer.v1 import signer_pb2 as pb

from .conftest import ADMIN, BACKEND, Clock, Payloads, TlsHarness, make_pki, write_tls_config

ADMIN_URI = ADMIN.removeprefix("uri:")
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
OK = grpc.StatusCode.OK
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
NOW = datetime.datetime.now(datetime.UTC)


# --- a client CA that issues whatever a test needs --------------------------------------


@dataclass
class Ca:
    """The dev CA of a test PKI, loaded back from ``DIR/tls`` (or ``DIR/stranger``)."""

    directory: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def load(cls, directory: Path) -> Ca:
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(
            directory, key, x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        )

    def issue(self, name: str, spec: CertSpec) -> x509.Certificate:
        """Write ``NAME.crt``/``NAME.key`` for ``spec``; returns the certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, spec.cn)] if spec.cn is not None else []
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(spec.serial or x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + spec.valid_for)
            .add_extension(x509.BasicConstraints(ca=spec.ca, path_length=None), critical=True)
        )
        sans: list[x509.GeneralName] = [
            *(x509.UniformResourceIdentifier(u) for u in spec.uris),
            *(x509.DNSName(d) for d in spec.dns),
        ]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if spec.eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(spec.eku)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        (self.directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (self.directory / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert

    def crl(self, serials: Sequence[int], encoding: str = "pem") -> bytes:
        """A CRL of this CA revoking ``serials``."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(NOW - datetime.timedelta(minutes=5))
            .next_update(NOW + datetime.timedelta(days=1))
        )
        for serial in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(NOW - datetime.timedelta(minutes=1))
                .build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        der = encoding == "der"
        return crl.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)


@dataclass(frozen=True)
class CertSpec:
    """What a test certificate says."""

    uris: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    cn: str | None = None
    ca: bool = False
    eku: tuple[x509.ObjectIdentifier, ...] | None = (CLIENT_AUTH,)
    serial: int | None = None
    valid_for: datetime.timedelta = datetime.timedelta(days=1)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


# --- a server over that CA ---------------------------------------------------------------


@dataclass
class Server:
    """A mutual-TLS server, its CA, and what the test issued."""

    h: TlsHarness
    ca: Ca
    certs: dict[str, x509.Certificate] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return self.h.pki.directory

    async def refusals(self, before: int, status: grpc.StatusCode) -> list[AuditRecord]:
        """Records with ``status`` after ``before``, counted refusals' summaries included."""
        assert self.h.server.service is not None
        await self.h.server.service.flush_refusals()
        return [r for r in self.h.records()[before:] if r.event.status == status.name]


@contextlib.asynccontextmanager
async def tls_server(
    directory: Path,
    softhsm: Any,
    *,
    tls: str = "",
    certs: dict[str, CertSpec] | None = None,
    prepare: Callable[[Ca, dict[str, x509.Certificate]], None] | None = None,
) -> AsyncIterator[Server]:
    """Start a server whose ``[server.tls]`` has the extra lines ``tls``.

    ``certs`` are issued by the client CA before the server starts; ``prepare``
    then writes whatever else the config names (a CRL, a deny list).
    """
    pki = make_pki(directory)
    ca = Ca.load(directory / "tls")
    issued = {name: ca.issue(name, spec) for name, spec in (certs or {}).items()}
    for name in ("backend", "admin"):
        issued[name] = x509.load_pem_x509_certificate(
            (directory / "tls" / f"{name}.crt").read_bytes()
        )
    if prepare is not None:
        prepare(ca, issued)
    path = write_tls_config(directory, softhsm)
    text = path.read_text()
    path.write_text(
        text.replace('client_ca = "tls/ca.crt"\n', f'client_ca = "tls/ca.crt"\n{tls}\n')
    )
    clock = Clock()
    server = SignerServer(load_config(path), clock=clock)
    await server.start()
    h = TlsHarness(path, pki, server, clock, Payloads(clock))
    try:
        await h.admin("admin").CreateKey(
            pb.CreateKeyRequest(
                name="k",
                roles=[pb.RoleRule(pattern="timestamp", max_validity_seconds=86400)],
                activate=True,
            )
        )
        yield Server(h, ca, issued)
    finally:
        for ch in h.channels:
            await ch.close()
        await server.stop(grace=5)


async def _list_keys(s: Server, client: str) -> None:
    await s.h.admin(client).ListKeys(pb.ListKeysRequest(), timeout=10)


async def _sign(s: Server, client: str, version: int = 1) -> pb.SignResponse:
    payload = s.h.payloads.timestamp(version)
    response: pb.SignResponse = await s.h.signer(client).Sign(
        pb.SignRequest(key="k", payload=payload), timeout=10
    )
    return response


# --- finding 6: who a certificate names, and which certificates are clients -------------


@dataclass(frozen=True)
class Impostor:
    """A certificate that tries the admin's rights (ListKeys), and what it must get."""

    cert: CertSpec
    code: grpc.StatusCode
    reason: str  # a substring of the status details and of the record's reason
    recorded_identity: str
    tls: str = ""


CN_ON = "allow_cn_identity = true"
SINGLE_URI = "require_single_uri = true"
IMPOSTORS = {
    # Before: both were given key-admin, as 'spiffe://tuf-signer.dev/admin'.
    "f6-cn-impersonates-uri": Impostor(
        CertSpec(cn=ADMIN_URI),
        UNAUTHENTICATED,
        "no SAN URI or DNS name (the subject CN is not used: "
        "[server.tls] allow_cn_identity is off)",
        "",
    ),
    "f6-cn-impersonates-uri-cn-on": Impostor(
        CertSpec(cn=ADMIN_URI),
        DENIED,
        f"identity 'cn:{ADMIN_URI}' has no access rule",
        f"cn:{ADMIN_URI}",
        tls=CN_ON,
    ),
    "f6-dns-impersonates-uri": Impostor(
        CertSpec(dns=(ADMIN_URI,), cn="admin"),
        DENIED,
        f"identity 'dns:{ADMIN_URI}' has no access rule",
        f"dns:{ADMIN_URI}",
    ),
    # Before: accepted as clients.
    "f6-ca-true-leaf": Impostor(
        CertSpec(uris=(ADMIN_URI,), ca=True),
        UNAUTHENTICATED,
        "the client certificate is a CA certificate (basicConstraints CA:TRUE)",
        "",
    ),
    "f6-no-eku": Impostor(
        CertSpec(uris=(ADMIN_URI,), eku=None),
        UNAUTHENTICATED,
        "the client certificate has no extendedKeyUsage; it needs clientAuth",
        "",
    ),
    # BoringSSL itself refuses this one at the handshake ("unsupported certificate
    # purpose"): nothing reaches the service. The identity step refuses it too
    # (f6-eku-without-client-auth in VERDICTS), should the TLS stack change.
    "f6-eku-without-client-auth": Impostor(
        CertSpec(uris=(ADMIN_URI,), eku=(ExtendedKeyUsageOID.CODE_SIGNING,)),
        grpc.StatusCode.UNAVAILABLE,
        "",
        "",
    ),
    "f6-control-chars-in-san-uri": Impostor(
        CertSpec(uris=(ADMIN_URI + "\x1b[2K",)),
        UNAUTHENTICATED,
        f"identity 'uri:{ADMIN_URI}\\x1b[2K' holds control",
        "",
    ),
    "f6-overlong-san-uri": Impostor(
        CertSpec(uris=(ADMIN_URI + "/" + "a" * 1100,)),
        UNAUTHENTICATED,
        "is longer than 1024 characters",
        "",
    ),
    "f6-single-uri-required-two": Impostor(
        CertSpec(uris=(ADMIN_URI, BACKEND.removeprefix("uri:"))),
        UNAUTHENTICATED,
        "carries 2 SAN URIs; exactly one is required ([server.tls] require_single_uri)",
        "",
        tls=SINGLE_URI,
    ),
    "f6-single-uri-required-dns-only": Impostor(
        CertSpec(dns=("admin.example",)),
        UNAUTHENTICATED,
        "carries 0 SAN URIs; exactly one is required",
        "",
        tls=SINGLE_URI,
    ),
    # The genuine article, typed, for contrast: the first SAN URI names it.
    "f6-uri-first-then-dns": Impostor(
        CertSpec(uris=(ADMIN_URI,), dns=("other.example",), cn="other"),
        OK,
        "",
        ADMIN,
        tls=SINGLE_URI,
    ),
}


@pytest.mark.parametrize("case", list(IMPOSTORS.values()), ids=list(IMPOSTORS))
async def test_certificate_identity_and_fitness(
    tmp_path: Path, softhsm: Any, case: Impostor
) -> None:
    async with tls_server(
        tmp_path / "signer", softhsm, tls=case.tls, certs={"impostor": case.cert}
    ) as s:
        before = len(s.h.records())
        if case.code == OK:
            await _list_keys(s, "impostor")
            assert {r.event.identity for r in s.h.records()[before:]} <= {case.recorded_identity}
            return
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _list_keys(s, "impostor")
        assert info.value.code() == case.code
        if case.code == grpc.StatusCode.UNAVAILABLE:  # refused by the TLS handshake
            assert await s.refusals(before, UNAUTHENTICATED) == []
            assert len(s.h.records()) == before
            return
        assert case.reason in info.value.details()
        (record,) = await s.refusals(before, case.code)
        assert record.event.identity == case.recorded_identity
        assert record.event.outcome is Outcome.REFUSED
        assert case.reason in record.event.reason
        assert not any(r.event.outcome is Outcome.GRANTED for r in s.h.records()[before:])
        # The real admin is still served.
        await _list_keys(s, "admin")


async def test_dns_identity_is_typed_and_lower_case(tmp_path: Path, softhsm: Any) -> None:
    rule = (
        '\n[[authz.rules]]\nidentity = "dns:repo.example"\noperations = ["sign"]\n'
        'keys = ["k"]\nroles = ["timestamp"]\n'
    )

    async with tls_server(
        tmp_path / "signer", softhsm, certs={"repo": CertSpec(dns=("Repo.Example",))}
    ) as s:
        s.h.config_path.write_text(s.h.config_path.read_text() + rule)
        assert s.h.server.reload()
        before = len(s.h.records())
        await _sign(s, "repo")
        assert [r.event.identity for r in s.h.records()[before:]] == ["dns:repo.example"]


# --- the identity step without a server (pure verdicts) --------------------------------


def _pem(ca: Ca, spec: CertSpec) -> bytes:
    return ca.issue("unit", spec).public_bytes(serialization.Encoding.PEM)


VERDICTS = [
    (
        "f6-uri-typed",
        CertSpec(uris=("spiffe://x/y",), dns=("b.example",), cn="c"),
        {},
        "uri:spiffe://x/y",
        "",
    ),
    ("f6-dns-typed", CertSpec(dns=("b.example",), cn="c"), {}, "dns:b.example", ""),
    ("f6-cn-off-by-default", CertSpec(cn="repo-backend"), {}, "", "no SAN URI or DNS name"),
    (
        "f6-cn-typed-when-on",
        CertSpec(cn="Repo Backend"),
        {"allow_cn_identity": True},
        "cn:Repo Backend",
        "",
    ),
    (
        "f6-cn-cannot-be-anonymous",  # the plaintext listener's identity is untyped
        CertSpec(cn="anonymous"),
        {"allow_cn_identity": True},
        "cn:anonymous",
        "",
    ),
    ("f6-nothing-named", CertSpec(), {"allow_cn_identity": True}, "", "and no subject CN"),
    (
        "f6-cn-control-chars",
        CertSpec(cn="a\x00b"),
        {"allow_cn_identity": True},
        "",
        "holds control",
    ),
    (
        "f6-eku-without-client-auth",
        CertSpec(uris=("spiffe://x/y",), eku=(ExtendedKeyUsageOID.SERVER_AUTH,)),
        {},
        "",
        "extendedKeyUsage does not include clientAuth",
    ),
    (
        "f6-ca-true-leaf",
        CertSpec(uris=("spiffe://x/y",), ca=True),
        {},
        "",
        "basicConstraints CA:TRUE",
    ),
    (
        "f6-expired-leaf",
        CertSpec(uris=("spiffe://x/y",), valid_for=-datetime.timedelta(minutes=1)),
        {},
        "uri:spiffe://x/y",
        "outside its validity period",
    ),
]


@pytest.mark.parametrize(
    ("spec", "settings", "identity", "refusal"),
    [v[1:] for v in VERDICTS],
    ids=[v[0] for v in VERDICTS],
)
def test_verdict_on_a_certificate(
    tmp_path: Path, spec: CertSpec, settings: dict[str, bool], identity: str, refusal: str
) -> None:
    make_pki(tmp_path)
    ca = Ca.load(tmp_path / "tls")
    caller = Authenticator(IdentitySettings(**settings)).caller_from_pem(_pem(ca, spec))
    assert caller.identity == identity
    if refusal:
        assert caller.refusal is not None
        assert refusal in caller.refusal.reason
        assert caller.refusal.code == "UNAUTHENTICATED"
    else:
        assert caller.refusal is None


def test_garbage_certificate_has_no_identity() -> None:
    caller = Authenticator().caller_from_pem(b"not a certificate")
    assert caller.identity == ""
    assert caller.refusal is not None
    assert "does not parse" in caller.refusal.reason


def test_verdict_follows_the_clock_and_the_lists(tmp_path: Path) -> None:
    make_pki(tmp_path)
    ca = Ca.load(tmp_path / "tls")
    cert = ca.issue("unit", CertSpec(uris=("spiffe://x/y",)))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    now = [NOW.timestamp()]
    auth = Authenticator(clock=lambda: now[0])
    assert auth.caller_from_pem(pem).refusal is None
    now[0] += 2 * 86400  # the cached parse does not cache the verdict
    refusal = auth.caller_from_pem(pem).refusal
    assert refusal is not None and "validity period" in refusal.reason
    now[0] = NOW.timestamp()
    auth.update(IdentitySettings(), Revocation(fingerprints=frozenset({fingerprint(cert)})))
    refusal = auth.caller_from_pem(pem).refusal
    assert refusal is not None
    assert refusal.reason.startswith(f"certificate revoked (serial 0x{cert.serial_number:x}")


# --- revocation: CRL and deny list, at start and on SIGHUP ------------------------------


def _write_crl(name: str = "ca.crl", encoding: str = "pem", stranger: bool = False):
    def prepare(ca: Ca, certs: dict[str, x509.Certificate]) -> None:
        issuer = Ca.load(ca.directory.parent / "stranger") if stranger else ca
        data = issuer.crl([certs["backend"].serial_number], encoding)
        (ca.directory / name).write_bytes(data)

    return prepare


def _write_deny_list(pick: Callable[[x509.Certificate], str]):
    def prepare(ca: Ca, certs: dict[str, x509.Certificate]) -> None:
        (ca.directory / "deny.txt").write_text(
            "# revoked: the backend's certificate, stolen\n"
            f"{pick(certs['backend'])}   # ticket 42\n\n"
        )

    return prepare


REVOKED = {
    "f6-revoked-crl": ('crl = "tls/ca.crl"', _write_crl()),
    "f6-revoked-crl-der": ('crl = "tls/ca.crl"', _write_crl(encoding="der")),
    "f6-revoked-deny-list-serial": (
        'deny_list = "tls/deny.txt"',
        _write_deny_list(lambda c: f"{c.serial_number:x}"),
    ),
    "f6-revoked-deny-list-serial-colons": (
        'deny_list = "tls/deny.txt"',
        _write_deny_list(lambda c: ":".join(f"{b:02X}" for b in c.serial_number.to_bytes(20))),
    ),
    "f6-revoked-deny-list-fingerprint": (
        'deny_list = "tls/deny.txt"',
        _write_deny_list(fingerprint),
    ),
}


@pytest.mark.parametrize(("tls", "prepare"), list(REVOKED.values()), ids=list(REVOKED))
async def test_revoked_certificate_is_refused(
    tmp_path: Path, softhsm: Any, tls: str, prepare: Callable[..., None]
) -> None:
    async with tls_server(tmp_path / "signer", softhsm, tls=tls, prepare=prepare) as s:
        before = len(s.h.records())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _sign(s, "backend")
        serial = f"0x{s.certs['backend'].serial_number:x}"
        assert info.value.code() == UNAUTHENTICATED
        assert info.value.details().startswith(f"certificate revoked (serial {serial}")
        (record,) = await s.refusals(before, UNAUTHENTICATED)
        assert record.event.identity == BACKEND
        assert f"certificate revoked (serial {serial}" in record.event.reason
        assert record.event.signature == ""
        # Nothing was signed: the other certificates are untouched.
        await _list_keys(s, "admin")


@pytest.mark.parametrize(
    ("tls", "prepare", "match"),
    [
        (
            'crl = "tls/ca.crl"',
            _write_crl(stranger=True),
            r"server.tls.crl: the CRL in .*ca.crl .* is not signed by a CA in server.tls.client_ca",
        ),
        (
            'crl = "tls/ca.crl"',
            lambda ca, certs: (ca.directory / "ca.crl").write_text("not a CRL\n"),
            r"server.tls.crl: .*ca.crl is not a PEM or DER CRL",
        ),
        ('crl = "tls/missing.crl"', None, r"server.tls.crl: .*missing.crl does not exist"),
        (
            'deny_list = "tls/deny.txt"',
            lambda ca, certs: (ca.directory / "deny.txt").write_text("# ok\nzz-not-hex\n"),
            r"server.tls.deny_list: .*deny.txt line 2: expected a serial number",
        ),
    ],
    ids=["f6-crl-from-another-ca", "f6-crl-garbage", "f6-crl-missing", "f6-deny-list-garbage"],
)
async def test_server_refuses_to_start_with_a_bad_revocation_list(
    tmp_path: Path, softhsm: Any, tls: str, prepare: Callable[..., None] | None, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        async with tls_server(tmp_path / "signer", softhsm, tls=tls, prepare=prepare):
            pass


async def test_f6_sighup_revokes(
    tmp_path: Path, softhsm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate accepted a moment ago is refused after SIGHUP: nothing cached outlives it."""

    def empty(ca: Ca, certs: dict[str, x509.Certificate]) -> None:
        (ca.directory / "deny.txt").write_text("# nothing revoked yet\n")
        (ca.directory / "ca.crl").write_bytes(ca.crl([]))

    tls = 'deny_list = "tls/deny.txt"\ncrl = "tls/ca.crl"'
    async with tls_server(tmp_path / "signer", softhsm, tls=tls, prepare=empty) as s:
        tls_dir = s.directory / "tls"
        assert (await _sign(s, "backend", 1)).metadata_version == 1
        serial = s.certs["backend"].serial_number
        # SIGHUP, delivered the way `serve` wires it.
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, s.h.server.reload)
        try:
            (tls_dir / "ca.crl").write_bytes(s.ca.crl([serial]))
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(50):
                try:
                    await _sign(s, "backend", 2)
                except grpc.aio.AioRpcError as e:
                    refused = e
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("SIGHUP did not revoke the certificate")
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
        assert refused.code() == UNAUTHENTICATED
        assert refused.details().startswith(f"certificate revoked (serial 0x{serial:x}")

        # A broken list keeps the previous lists in force and names the setting.
        (tls_dir / "ca.crl").write_bytes(b"garbage")
        with caplog.at_level(logging.ERROR):
            assert not s.h.server.reload()
        assert "keeping the previous revocation lists: server.tls.crl" in caplog.text
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _sign(s, "backend", 2)
        assert info.value.code() == UNAUTHENTICATED

        # Lifting the revocation (a fixed, empty CRL) lets it back in.
        (tls_dir / "ca.crl").write_bytes(s.ca.crl([]))
        assert s.h.server.reload()
        assert (await _sign(s, "backend", 2)).metadata_version == 2

        # The deny list is reloaded the same way.
        (tls_dir / "deny.txt").write_text(f"{serial:x}\n")
        assert s.h.server.reload()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _sign(s, "backend", 3)
        assert info.value.code() == UNAUTHENTICATED
