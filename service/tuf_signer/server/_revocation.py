"""Revoked client certificates: a CRL and a deny list, read at start and on SIGHUP.

A CRL must be signed by a CA in ``[server.tls] client_ca`` (RFC 5280 §6.3.3):
an unsigned or foreign list could otherwise revoke, or fail to revoke, anyone.
The deny list is for what a CA cannot (yet) say: one certificate per line, by
serial number or SHA-256 fingerprint of its DER encoding, in hex.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from tuf_signer.config import TlsConfig
from tuf_signer.errors import ConfigError
from tuf_signer.server._identity import Revocation

log = logging.getLogger(__name__)

_CRL_PEM = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)
_HEX = re.compile(r"[0-9a-f]+")
_MAX_SERIAL_HEX = 40  # RFC 5280 §4.1.2.2: at most 20 octets
_FINGERPRINT_HEX = 64  # SHA-256


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{setting}: cannot read {path}: {e.strerror}") from e


def _crls(data: bytes, path: Path) -> list[x509.CertificateRevocationList]:
    try:
        if b"-----BEGIN" in data:
            blocks = _CRL_PEM.findall(data)
            if not blocks:
                raise ValueError("no X509 CRL block")
            return [x509.load_pem_x509_crl(block) for block in blocks]
        return [x509.load_der_x509_crl(data)]
    except ValueError as e:
        raise ConfigError(f"server.tls.crl: {path} is not a PEM or DER CRL ({e})") from None


def load_crl(path: Path, client_ca: Path) -> frozenset[tuple[x509.Name, int]]:
    """The (issuer, serial) pairs revoked by the CRLs in ``path``.

    Raises:
        ConfigError: naming ``server.tls.crl``: the file cannot be read or
            parsed, or a CRL is not signed by a CA in ``client_ca``.
    """
    try:
        cas = x509.load_pem_x509_certificates(_read(client_ca, "server.tls.client_ca"))
    except ValueError as e:
        raise ConfigError(f"server.tls.client_ca: {client_ca} holds no PEM certificate") from e
    revoked: set[tuple[x509.Name, int]] = set()
    now = datetime.now(UTC)
    for crl in _crls(_read(path, "server.tls.crl"), path):
        if not any(
            ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
            for ca in cas
        ):
            raise ConfigError(
                f"server.tls.crl: the CRL in {path} (issuer {crl.issuer.rfc4514_string()!r}) "
                "is not signed by a CA in server.tls.client_ca"
            )
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            # Still applied: a stale list revokes no less than it did.
            log.warning(
                "server.tls.crl: the CRL of %s in %s was due for an update at %s",
                crl.issuer.rfc4514_string(),
                path,
                crl.next_update_utc.isoformat(),
            )
        revoked.update((crl.issuer, entry.serial_number) for entry in crl)
    return frozenset(revoked)


def load_deny_list(path: Path) -> tuple[frozenset[int], frozenset[str]]:
    """The serial numbers and SHA-256 fingerprints listed in ``path``.

    One entry per line, in hex (colons allowed, case ignored); ``#`` starts a
    comment. 64 hex digits are a fingerprint, up to 40 a serial number.

    Raises:
        ConfigError: naming ``server.tls.deny_list`` and the line at fault.
    """
    try:
        text = _read(path, "server.tls.deny_list").decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"server.tls.deny_list: {path} is not UTF-8 text") from None
    serials: set[int] = set()
    fingerprints: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip().lower().replace(":", "")
        if not entry:
            continue
        if _HEX.fullmatch(entry) and len(entry) == _FINGERPRINT_HEX:
            fingerprints.add(entry)
        elif _HEX.fullmatch(entry) and len(entry) <= _MAX_SERIAL_HEX:
            serials.add(int(entry, 16))
        else:
            raise ConfigError(
                f"server.tls.deny_list: {path} line {number}: expected a serial number "
                f"(up to {_MAX_SERIAL_HEX} hex digits) or a SHA-256 fingerprint "
                f"({_FINGERPRINT_HEX} hex digits), got {line.strip()[:80]!r}"
            )
    return frozenset(serials), frozenset(fingerprints)


def load_revocation(tls: TlsConfig | None) -> Revocation:
    """Everything ``[server.tls]`` revokes (nothing without TLS or lists).

    Raises:
        ConfigError: a list cannot be read, does not parse, or (a CRL) is not
            signed by the client CA; names the setting.
    """
    if tls is None:
        return Revocation()
    crl = load_crl(tls.crl, tls.client_ca) if tls.crl is not None else frozenset()
    serials, fingerprints = (
        load_deny_list(tls.deny_list) if tls.deny_list is not None else (frozenset(), frozenset())
    )
    return Revocation(crl=crl, serials=serials, fingerprints=fingerprints)
