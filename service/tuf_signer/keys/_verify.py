"""Check a backend's signature against the public key the registry holds (issue 10, finding 10).

Every backend's answer is checked here, the same way, before it is recorded or
returned: a faulty HSM, or a KMS serving another key under a version's name,
must not get a signature out that TUF clients would refuse.

Verification agrees with securesystemslib's ``SSlibKey.verify_signature`` for
the three schemes we sign with (tests check both on real signatures), but uses
``cryptography`` directly with the loaded key objects cached per keyid:
securesystemslib loads the PEM and hashes the payload again on every call
(ECDSA P-256 ~108 us vs ~60 us, RSA-3072 ~89 us vs ~42 us per 54 KB bin on the
reference machine; Ed25519 ~166 us either way, the curve's own hashing).

RSA-PSS is checked with salt length = digest length (32), which is what every
backend here signs with: a subset of what securesystemslib accepts
(``PSS.AUTO``), so a signature passing here passes there, and also passes
clients that fix the salt length to the digest length.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from tuf_signer.errors import BackendError, SignatureMismatchError
from tuf_signer.keys._pubkey import RSA_BITS
from tuf_signer.model import Algorithm, KeyVersion

log = logging.getLogger(__name__)

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_PREHASHED = Prehashed(hashes.SHA256())
_ECDSA = ec.ECDSA(_PREHASHED)

_PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def load_public_key(public_key: Mapping[str, Any], algorithm: Algorithm) -> _PublicKey:
    """Load a TUF key dict (``SSlibKey.to_dict()``) of ``algorithm`` as a cryptography key.

    Raises:
        BackendError: the dict is not a key of that algorithm (scheme, type,
            curve or size), or its value cannot be read.
    """
    if public_key.get("scheme") != algorithm.scheme or public_key.get("keytype") != (
        algorithm.keytype
    ):
        raise BackendError(f"the registered public key is not a {algorithm.value} key")
    keyval = public_key.get("keyval")
    value = keyval.get("public") if isinstance(keyval, Mapping) else None
    if not isinstance(value, str):
        raise BackendError("the registered public key has no keyval.public")
    try:
        if algorithm is Algorithm.ED25519:
            return ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(value))
        loaded = serialization.load_pem_public_key(value.encode())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise BackendError(f"the registered {algorithm.value} public key is unreadable") from e
    if algorithm is Algorithm.ECDSA_P256:
        if isinstance(loaded, ec.EllipticCurvePublicKey) and isinstance(loaded.curve, ec.SECP256R1):
            return loaded
    elif isinstance(loaded, rsa.RSAPublicKey) and loaded.key_size == RSA_BITS:
        return loaded
    raise BackendError(f"the registered public key is not a {algorithm.value} key")


def _verify(key: _PublicKey, signature: bytes, data: bytes, digest: bytes) -> None:
    """Raise ``InvalidSignature`` unless ``signature`` is ``key``'s over ``data``."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, data)  # PureEdDSA over the payload
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, digest, _ECDSA)  # DER, over SHA-256(data)
    else:
        key.verify(signature, digest, _PSS, _PREHASHED)


class SignatureVerifier:
    """Verifies signatures against registered key versions; loaded keys cached per keyid.

    A key version's public key never changes once registered (its keyid is
    the hash of it), so the cache needs no invalidation; it is bounded anyway.

    Args:
        max_keys: loaded keys kept (oldest dropped first).
    """

    def __init__(self, max_keys: int = 4096) -> None:
        self._keys: dict[str, _PublicKey] = {}
        self._max_keys = max_keys

    def _key(self, version: KeyVersion, algorithm: Algorithm) -> _PublicKey:
        key = self._keys.get(version.keyid)
        if key is None:
            key = load_public_key(version.public_key, algorithm)
            if len(self._keys) >= self._max_keys:
                self._keys.pop(next(iter(self._keys)))
            self._keys[version.keyid] = key
        return key

    def verify(
        self,
        backend: str,
        version: KeyVersion,
        algorithm: Algorithm,
        signature: bytes,
        data: bytes,
        digest: bytes,
    ) -> None:
        """Check ``signature`` over ``data`` (SHA-256 ``digest``) with ``version``'s public key.

        Raises:
            SignatureMismatchError: it does not verify (logged at ERROR).
            BackendError: the registered key cannot be loaded as ``algorithm``.
        """
        key = self._key(version, algorithm)
        try:
            _verify(key, signature, data, digest)
        except (InvalidSignature, ValueError):  # ValueError: not even well-formed
            reason = (
                f"backend {backend!r} returned a signature that does not verify against the "
                f"registered public key of key {version.key_name!r} version {version.version}"
            )
            log.error("%s (keyid %s); it is discarded", reason, version.keyid)
            raise SignatureMismatchError(reason) from None
