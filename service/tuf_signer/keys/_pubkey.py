"""Turn PKCS#11 public-key attributes and signatures into securesystemslib's formats.

Pure functions, no PKCS#11 calls: every input is bytes read from a token, and
every malformed input raises ``BackendError`` (the token gave us nonsense).
"""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from securesystemslib.signer import SSlibKey

from tuf_signer.errors import BackendError
from tuf_signer.model import Algorithm

__all__ = [
    "der_octet_string",
    "ecdsa_p256_public_key",
    "ecdsa_raw_to_der",
    "ed25519_public_key",
    "rsa_public_key",
    "to_sslib_key",
]

_ED25519_LEN = 32
_P256_FIELD_LEN = 32
_P256_POINT_LEN = 1 + 2 * _P256_FIELD_LEN  # 0x04 || X || Y
RSA_BITS = 3072


def der_octet_string(data: bytes) -> bytes:
    """Return the contents of one DER OCTET STRING that fills all of ``data``.

    PKCS#11 (Current Mechanisms, EC and Edwards public key objects) defines
    CKA_EC_POINT as the DER encoding of an ECPoint, which is an OCTET STRING.

    Raises:
        ValueError: ``data`` is not exactly one definite-length OCTET STRING.
    """
    if len(data) < 2 or data[0] != 0x04:
        raise ValueError("not a DER OCTET STRING")
    first = data[1]
    if first < 0x80:
        length, start = first, 2
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or len(data) < 2 + n:
            raise ValueError("bad DER length")
        length, start = int.from_bytes(data[2 : 2 + n], "big"), 2 + n
        if length < 0x80 or data[2] == 0:
            raise ValueError("non-minimal DER length")
    if start + length != len(data):
        raise ValueError("DER length does not match the data")
    return data[start:]


def ed25519_public_key(ec_point: bytes) -> ed25519.Ed25519PublicKey:
    """Parse an Ed25519 CKA_EC_POINT: DER OCTET STRING of 32 bytes, or raw 32 bytes.

    Raises:
        BackendError: the value is neither.
    """
    raw = ec_point
    if len(ec_point) != _ED25519_LEN:
        try:
            raw = der_octet_string(ec_point)
        except ValueError as e:
            raise BackendError(f"token returned a malformed Ed25519 public key: {e}") from e
    if len(raw) != _ED25519_LEN:
        raise BackendError(f"token returned an Ed25519 public key of {len(raw)} bytes, not 32")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def ecdsa_p256_public_key(ec_point: bytes) -> ec.EllipticCurvePublicKey:
    """Parse a P-256 CKA_EC_POINT (DER OCTET STRING around an uncompressed point).

    A bare uncompressed point is accepted too: some tokens omit the wrapper.

    Raises:
        BackendError: the value is not a point on P-256.
    """
    point = ec_point
    if not (len(ec_point) == _P256_POINT_LEN and ec_point[0] == 0x04):
        try:
            point = der_octet_string(ec_point)
        except ValueError as e:
            raise BackendError(f"token returned a malformed P-256 public key: {e}") from e
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise BackendError("token returned a P-256 public key that is not on the curve") from e


def rsa_public_key(modulus: bytes, public_exponent: bytes) -> rsa.RSAPublicKey:
    """Build an RSA-3072 public key from CKA_MODULUS and CKA_PUBLIC_EXPONENT.

    Raises:
        BackendError: the numbers are invalid or the modulus is not 3072 bits.
    """
    n = int.from_bytes(modulus, "big")
    e = int.from_bytes(public_exponent, "big")
    if n.bit_length() != RSA_BITS:
        raise BackendError(f"token returned an RSA key of {n.bit_length()} bits, not {RSA_BITS}")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as err:
        raise BackendError("token returned invalid RSA public numbers") from err


def to_sslib_key(public: PublicKeyTypes, algorithm: Algorithm) -> SSlibKey:
    """Wrap a public key as a TUF key, keyid computed as securesystemslib does by default.

    Raises:
        BackendError: securesystemslib rejects the key, or it is not of the
            algorithm's key type.
    """
    try:
        key = SSlibKey.from_crypto(public, scheme=algorithm.scheme)
    except ValueError as e:
        raise BackendError(f"cannot express the token's public key as {algorithm.scheme}") from e
    if key.keytype != algorithm.keytype:
        raise BackendError(f"token key is of type {key.keytype}, not {algorithm.keytype}")
    return key


def ecdsa_raw_to_der(signature: bytes) -> bytes:
    """Convert a PKCS#11 ECDSA P-256 signature (r || s, PKCS#11 v2.40 §2.3.1) to DER.

    securesystemslib's ``ecdsa-sha2-nistp256`` verifies DER ``Ecdsa-Sig-Value``.

    Raises:
        BackendError: the signature is not 64 bytes.
    """
    if len(signature) != 2 * _P256_FIELD_LEN:
        raise BackendError(f"token returned an ECDSA signature of {len(signature)} bytes, not 64")
    r = int.from_bytes(signature[:_P256_FIELD_LEN], "big")
    s = int.from_bytes(signature[_P256_FIELD_LEN:], "big")
    return encode_dss_signature(r, s)
