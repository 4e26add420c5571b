"""Who is calling: the typed identity in the client's TLS certificate (P2).

The TLS handshake has already checked that the certificate chains to the
configured client CA. This step, run on every call, names the caller and
refuses certificates that must not act as clients:

- the identity is typed by the field it comes from: the first SAN URI
  (``uri:…``), else the first SAN DNS name (``dns:…``, lower case), else the
  subject CN (``cn:…``) only when ``[server.tls] allow_cn_identity`` is on;
  with ``require_single_uri`` the certificate must carry exactly one SAN URI;
- a CA certificate (basicConstraints CA:TRUE) or one whose extendedKeyUsage
  lacks clientAuth is refused (RFC 5280 §4.2.1.9, §4.2.1.12), as is one outside
  its validity period;
- a revoked certificate (``[server.tls] crl`` / ``deny_list``) is refused.

What a certificate says is parsed once per PEM and cached; the verdict is
decided per call against the settings and revocation lists in force, so a
reload (SIGHUP) takes effect on the next call.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tuf_signer.errors import UnauthenticatedError, shown
from tuf_signer.policy import ANONYMOUS, check_identity


@dataclass(frozen=True)
class IdentitySettings:
    """How a certificate names its holder (``[server.tls]``).

    Attributes:
        allow_cn_identity: fall back to the subject CN (``cn:…``) when the
            certificate has no SAN URI or DNS name.
        require_single_uri: the certificate must carry exactly one SAN URI.
    """

    allow_cn_identity: bool = False
    require_single_uri: bool = False


@dataclass(frozen=True)
class Revocation:
    """Revoked client certificates, from a CRL and a deny list.

    Attributes:
        crl: (issuer, serial) pairs listed by the CRLs.
        serials: serial numbers on the deny list (any issuer).
        fingerprints: SHA-256 fingerprints (lower-case hex of the DER) on the deny list.
    """

    crl: frozenset[tuple[x509.Name, int]] = frozenset()
    serials: frozenset[int] = frozenset()
    fingerprints: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.crl) + len(self.serials) + len(self.fingerprints)


@dataclass(frozen=True)
class Certificate:
    """What the identity step needs from one client certificate (parsed once).

    Attributes:
        uris: SAN URIs, in certificate order.
        dns_names: SAN DNS names, in certificate order.
        cn: the first subject CN, if any.
        serial: the serial number.
        issuer: the issuer name.
        fingerprint: SHA-256 of the DER encoding, lower-case hex.
        not_before: start of validity, POSIX seconds.
        not_after: end of validity, POSIX seconds.
        defect: why it can never be a client certificate ("" when it can).
    """

    uris: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    cn: str | None = None
    serial: int = 0
    issuer: x509.Name = field(default_factory=lambda: x509.Name([]))
    fingerprint: str = ""
    not_before: float = 0.0
    not_after: float = 0.0
    defect: str = ""


@dataclass(frozen=True)
class Caller:
    """The verdict of the identity step for one call.

    Attributes:
        identity: the typed identity (``anonymous`` on a plaintext listener);
            for a refused certificate, the identity it claims if that is a
            valid one, else "".
        refusal: why the caller is refused, or None when it is accepted.
    """

    identity: str
    refusal: UnauthenticatedError | None = None


def _serial(serial: int) -> str:
    return f"0x{serial:x}"


def _defect(cert: x509.Certificate) -> str:
    """Why ``cert`` may not be a client certificate, whatever it names ("" if none)."""
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    if ca:
        return "the client certificate is a CA certificate (basicConstraints CA:TRUE)"
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "the client certificate has no extendedKeyUsage; it needs clientAuth"
    if ExtendedKeyUsageOID.CLIENT_AUTH not in list(usages):
        return "the client certificate's extendedKeyUsage does not include clientAuth"
    return ""


@functools.lru_cache(maxsize=1024)
def certificate_from_pem(pem: bytes) -> Certificate:
    """Parse what the identity step needs from a PEM certificate (cached per PEM)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        san: x509.SubjectAlternativeName | None
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return Certificate(
            uris=tuple(san.get_values_for_type(x509.UniformResourceIdentifier)) if san else (),
            dns_names=tuple(san.get_values_for_type(x509.DNSName)) if san else (),
            cn=str(names[0].value) if names else None,
            serial=cert.serial_number,
            issuer=cert.issuer,
            fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            defect=_defect(cert),
        )
    except ValueError:
        # Unparsable, or an extension that does not decode (duplicates...).
        return Certificate(defect="the client certificate does not parse")


def _claimed(cert: Certificate, settings: IdentitySettings) -> Caller:
    """The identity the certificate names under ``settings`` (a refusal if none)."""
    if settings.require_single_uri and len(cert.uris) != 1:
        return Caller(
            "",
            UnauthenticatedError(
                f"the client certificate carries {len(cert.uris)} SAN URIs; exactly one is "
                "required ([server.tls] require_single_uri)"
            ),
        )
    if cert.uris:
        identity = "uri:" + cert.uris[0]
    elif cert.dns_names:
        identity = "dns:" + cert.dns_names[0].lower()
    elif cert.cn is not None and settings.allow_cn_identity:
        identity = "cn:" + cert.cn
    else:
        why = (
            "and no subject CN"
            if settings.allow_cn_identity
            else "(the subject CN is not used: [server.tls] allow_cn_identity is off)"
        )
        return Caller(
            "",
            UnauthenticatedError(f"the client certificate has no SAN URI or DNS name {why}"),
        )
    try:
        check_identity(identity)
    except UnauthenticatedError as e:
        return Caller("", UnauthenticatedError(f"the client certificate's {e.reason}"))
    return Caller(identity)


def judge(
    cert: Certificate, settings: IdentitySettings, revocation: Revocation, now: float
) -> Caller:
    """The verdict on one client certificate at POSIX time ``now``."""
    if cert.defect:
        return Caller("", UnauthenticatedError(cert.defect))
    claimed = _claimed(cert, settings)
    if claimed.refusal is not None:
        return claimed
    identity = claimed.identity
    if not cert.not_before <= now <= cert.not_after:
        return Caller(
            identity,
            UnauthenticatedError(
                f"the client certificate (serial {_serial(cert.serial)}) is outside its "
                "validity period"
            ),
        )
    if (
        cert.serial in revocation.serials
        or cert.fingerprint in revocation.fingerprints
        or (bool(revocation.crl) and (cert.issuer, cert.serial) in revocation.crl)
    ):
        return Caller(
            identity,
            UnauthenticatedError(
                f"certificate revoked (serial {_serial(cert.serial)}, identity {shown(identity)})"
            ),
        )
    return claimed


class Authenticator:
    """The identity step: names each caller and refuses unfit certificates.

    Args:
        settings: how a certificate names its holder.
        revocation: revoked certificates.
        clock: POSIX seconds (tests inject their own).
    """

    def __init__(
        self,
        settings: IdentitySettings | None = None,
        revocation: Revocation | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings or IdentitySettings()
        self._revocation = revocation or Revocation()
        self._clock = clock

    @property
    def revocation(self) -> Revocation:
        """The revocation lists in force."""
        return self._revocation

    def update(self, settings: IdentitySettings, revocation: Revocation) -> None:
        """Put new settings and revocation lists in force (from the next call on)."""
        self._settings = settings
        self._revocation = revocation

    def caller_of(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        """The verdict on the caller of one call."""
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert")
        if pems:
            return self.caller_from_pem(next(iter(pems)))
        if b"ssl" in auth.get("transport_security_type", ()):
            return Caller("", UnauthenticatedError("the caller presented no client certificate"))
        return Caller(ANONYMOUS)

    def caller_from_pem(self, pem: bytes) -> Caller:
        """The verdict on a client certificate in PEM form."""
        return judge(certificate_from_pem(pem), self._settings, self._revocation, self._clock())

    def identity_of(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The caller's identity; "" when the identity step refuses it."""
        caller = self.caller_of(context)
        return "" if caller.refusal is not None else caller.identity


_DEFAULT = Authenticator()


def caller_of(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    """The verdict under the default settings (no CN fallback, nothing revoked)."""
    return _DEFAULT.caller_of(context)


def identity_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's identity under the default settings; "" when refused.

    The server uses its own ``Authenticator`` (its configured settings and
    revocation lists); this is for code that has none.
    """
    return _DEFAULT.identity_of(context)
