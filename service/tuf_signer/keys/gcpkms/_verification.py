"""Checking what Cloud KMS answers before anything of it is used.

Integrity (https://cloud.google.com/kms/docs/data-integrity-guidelines): a
response counts only if KMS says it verified the request's checksum, if
``signature_crc32c`` / ``pem_crc32c`` match what arrived, and if it names the
version asked for. Every signature is also verified against the version's
public key before it is returned: a misbehaving KMS yields an error, never a
bad signature. A failed check raises ``IntegrityError``, which the backend
retries a bounded number of times.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from securesystemslib.signer import SSlibKey

from tuf_signer.errors import BackendError
from tuf_signer.keys import _pubkey
from tuf_signer.keys.gcpkms._calls import short
from tuf_signer.model import Algorithm

if TYPE_CHECKING:
    from tuf_signer.keys.gcpkms._google import GoogleApis, PublicKey

__all__ = [
    "ALGORITHM_OF",
    "KMS_ALGORITHM",
    "IntegrityError",
    "VersionKey",
    "check_public_key",
    "check_signature",
    "wrong_algorithm",
]

log = logging.getLogger(__name__)

# KMS algorithm names (CryptoKeyVersion.CryptoKeyVersionAlgorithm) per algorithm.
# Ed25519 signs the data itself (PureEdDSA, RFC 8032); the others sign a SHA-256 digest.
KMS_ALGORITHM: Final = {
    Algorithm.ED25519: "EC_SIGN_ED25519",
    Algorithm.ECDSA_P256: "EC_SIGN_P256_SHA256",
    Algorithm.RSA_3072_PSS: "RSA_SIGN_PSS_3072_SHA256",
}
ALGORITHM_OF: Final = {v: k for k, v in KMS_ALGORITHM.items()}
_PSS_SALT = 32  # bytes; KMS RSA_SIGN_PSS_*_SHA256 uses the digest length, as securesystemslib


class IntegrityError(Exception):
    """A KMS answer that failed an integrity check; retried a bounded number of times."""


@dataclass(frozen=True)
class VersionKey:
    """A key version's public key, for TUF and for checking signatures."""

    algorithm: Algorithm
    sslib: SSlibKey
    verify: Callable[[bytes, bytes, bytes], None]  # (signature, data, digest); raises


def wrong_algorithm(name: str, found: Algorithm | None, wanted: Algorithm) -> str:
    """The refusal of key version ``name`` used as another algorithm's."""
    what = f"a {found.value} key" if found else "of an unsupported type"
    return f"key version {name} is {what}, not {wanted.value}"


def _verifier(
    public: PublicKeyTypes, algorithm: Algorithm
) -> Callable[[bytes, bytes, bytes], None]:
    """A signature check for ``public``, raising ``InvalidSignature``.

    Raises:
        BackendError: ``public`` is not a key of ``algorithm``'s type and size.
    """
    if algorithm is Algorithm.ED25519 and isinstance(public, ed25519.Ed25519PublicKey):
        ed = public

        def verify_ed25519(signature: bytes, data: bytes, digest: bytes) -> None:
            ed.verify(signature, data)

        return verify_ed25519
    if (
        algorithm is Algorithm.ECDSA_P256
        and isinstance(public, ec.EllipticCurvePublicKey)
        and isinstance(public.curve, ec.SECP256R1)
    ):
        ecdsa = ec.ECDSA(Prehashed(hashes.SHA256()))
        ecp = public

        def verify_ecdsa(signature: bytes, data: bytes, digest: bytes) -> None:
            ecp.verify(signature, digest, ecdsa)

        return verify_ecdsa
    if (
        algorithm is Algorithm.RSA_3072_PSS
        and isinstance(public, rsa.RSAPublicKey)
        and public.key_size == _pubkey.RSA_BITS
    ):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=_PSS_SALT)
        prehashed = Prehashed(hashes.SHA256())
        rsp = public

        def verify_rsa(signature: bytes, data: bytes, digest: bytes) -> None:
            rsp.verify(signature, digest, pss, prehashed)

        return verify_rsa
    raise BackendError(f"Cloud KMS returned a public key that is not a {algorithm.value} key")


def check_public_key(
    google: GoogleApis, response: PublicKey, name: str, algorithm: Algorithm
) -> VersionKey:
    """Check a GetPublicKey answer and build the key from its PEM.

    Raises:
        IntegrityError: wrong name, or the PEM does not match its CRC32C.
        BackendError: a key of another algorithm, or not a usable key.
    """
    if response.name != name:
        raise IntegrityError(f"answer names {short(response.name)!r}")
    pem = str(response.pem)
    pem_crc32c: int | None = response.pem_crc32c  # type: ignore[assignment]
    if pem_crc32c is None or google.crc32c(pem.encode()) != pem_crc32c:
        raise IntegrityError("pem_crc32c does not match the PEM received")
    kms_algorithm = google.resources.CryptoKeyVersion.CryptoKeyVersionAlgorithm(
        response.algorithm
    ).name
    found = ALGORITHM_OF.get(kms_algorithm)
    if found is not algorithm:
        raise BackendError(wrong_algorithm(name, found, algorithm))
    try:
        public = serialization.load_pem_public_key(pem.encode())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise BackendError(f"Cloud KMS returned an unreadable public key for {name}") from e
    verify = _verifier(public, algorithm)
    return VersionKey(algorithm, _pubkey.to_sslib_key(public, algorithm), verify)


def check_signature(
    google: GoogleApis,
    response: Any,
    name: str,
    key: VersionKey,
    data: bytes,
    digest: bytes,
    *,
    backend: str,
) -> bytes:
    """Check an AsymmetricSign answer; return the signature only if it verifies.

    Args:
        google: the Google libraries (for CRC32C).
        response: the AsymmetricSignResponse.
        name: the key version asked for.
        key: its public key.
        data: what was to be signed.
        digest: its SHA-256 (empty for Ed25519, which signs ``data``).
        backend: the backend's name, for the log.

    Raises:
        IntegrityError: a checksum was not verified or does not match,
            the answer names another version, or the signature does not verify.
    """
    if response.name != name:
        raise IntegrityError(f"answer names {short(response.name)!r}")
    verified = (
        response.verified_data_crc32c
        if key.algorithm is Algorithm.ED25519
        else response.verified_digest_crc32c
    )
    if not verified:
        field = "data_crc32c" if key.algorithm is Algorithm.ED25519 else "digest_crc32c"
        raise IntegrityError(f"KMS did not verify the request's {field}")
    signature = bytes(response.signature)
    signature_crc32c: int | None = response.signature_crc32c
    if signature_crc32c is None or google.crc32c(signature) != signature_crc32c:
        raise IntegrityError("signature_crc32c does not match the signature received")
    # The service checks every signature against the *registered* public
    # key too (keys._verify), which catches a KMS serving another key under
    # this name. This check, against the key KMS returned, stays: it runs
    # inside the integrity retry loop, so a damaged answer is asked again
    # instead of failing the request.
    try:
        key.verify(signature, data, digest)
    except InvalidSignature as e:
        # Not a transit error (the CRC matched): KMS itself produced it.
        log.error(
            "backend %r: Cloud KMS returned a signature from %s that does not verify "
            "against its public key; it is discarded",
            backend,
            name,
        )
        raise IntegrityError("the signature does not verify against the public key") from e
    return signature
