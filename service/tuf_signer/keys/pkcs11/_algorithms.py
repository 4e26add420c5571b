"""What each ``Algorithm`` is in PKCS#11: key types, templates, mechanisms, attribute checks.

Every function that takes a python-pkcs11 object or session runs on the
PKCS#11 thread (``_thread``); ``PublicParts.to_crypto`` and
``finish_signature`` run anywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pkcs11
from pkcs11 import MGF, Attribute, KeyType, Mechanism, MechanismFlag
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_named_curve_parameters

from tuf_signer.errors import BackendError
from tuf_signer.keys import _pubkey
from tuf_signer.model import Algorithm

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

__all__ = [
    "REQUIRED_PRIVATE_ATTRIBUTES",
    "PublicParts",
    "algorithm_of",
    "check_private_key_attributes",
    "finish_signature",
    "generate_keypair",
    "key_hex",
    "public_parts",
    "sign",
    "wrong_algorithm",
]

_ED25519_OID = "1.3.101.112"  # RFC 8410
_P256_CURVE = "secp256r1"
_RSA_EXPONENT = b"\x01\x00\x01"  # 65537
_ED25519_PARAMS: Final = encode_named_curve_parameters(_ED25519_OID)
_P256_PARAMS: Final = encode_named_curve_parameters(_P256_CURVE)
# PKCS#11 v3.0 lets CKA_EC_PARAMS name an Edwards curve by OID or by
# PrintableString. SoftHSM 2.6 keeps the public key's as given (the OID) but
# reports the private key's as PrintableString "edwards25519".
_ED25519_PARAMS_ACCEPTED: Final = frozenset({_ED25519_PARAMS, b"\x13\x0cedwards25519"})
_RSA_SIGNATURE_BYTES = _pubkey.RSA_BITS // 8
_ED25519_SIGNATURE_BYTES = 64
_PSS_PARAMS = (Mechanism.SHA256, MGF.SHA256, 32)  # securesystemslib rsassa-pss-sha256

# Attributes a freshly generated private key must have (P1). PKCS#11 v2.40
# §4.9: ALWAYS_SENSITIVE and NEVER_EXTRACTABLE prove the key was never outside
# the token in clear.
REQUIRED_PRIVATE_ATTRIBUTES: Final[Mapping[Attribute, bool]] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.NEVER_EXTRACTABLE: True,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
}


def check_private_key_attributes(attrs: Mapping[Attribute, Any]) -> None:
    """Check a new private key against ``REQUIRED_PRIVATE_ATTRIBUTES`` (P1).

    Raises:
        BackendError: naming every attribute the token did not honour.
    """
    wrong = [
        f"CKA_{attr.name}={want}"
        for attr, want in REQUIRED_PRIVATE_ATTRIBUTES.items()
        if attr not in attrs or bool(attrs[attr]) is not want
    ]
    if wrong:
        raise BackendError("the token did not honour " + ", ".join(wrong))


def generate_keypair(
    session: pkcs11.Session, algorithm: Algorithm, key_id: bytes, label: str
) -> tuple[pkcs11.Object, pkcs11.Object]:
    """Generate a token key pair for ``algorithm``; returns (public, private).

    The private key is a token object with SENSITIVE, PRIVATE and SIGN set,
    EXTRACTABLE unset; the caller checks what the token made of that template.
    """
    private_template: dict[Attribute, Any] = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
    }
    public_template: dict[Attribute, Any] = {Attribute.TOKEN: True, Attribute.VERIFY: True}
    options: dict[str, Any] = {
        "id": key_id,
        "label": label,
        "store": True,
        "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
        "private_template": private_template,
    }
    if algorithm is Algorithm.RSA_3072_PSS:
        public_template[Attribute.PUBLIC_EXPONENT] = _RSA_EXPONENT
        pub, priv = session.generate_keypair(
            KeyType.RSA, _pubkey.RSA_BITS, public_template=public_template, **options
        )
    else:
        key_type, params = (
            (KeyType.EC_EDWARDS, _ED25519_PARAMS)
            if algorithm is Algorithm.ED25519
            else (KeyType.EC, _P256_PARAMS)
        )
        domain = session.create_domain_parameters(
            key_type, {Attribute.EC_PARAMS: params}, local=True
        )
        pub, priv = domain.generate_keypair(public_template=public_template, **options)
    return pub, priv


def algorithm_of(key: pkcs11.Object) -> Algorithm | None:
    """Which supported algorithm a key is for, from its type and domain parameters."""
    key_type = key[Attribute.KEY_TYPE]
    if key_type == KeyType.EC_EDWARDS:
        params = key[Attribute.EC_PARAMS]
        return Algorithm.ED25519 if params in _ED25519_PARAMS_ACCEPTED else None
    if key_type == KeyType.EC:
        params = key[Attribute.EC_PARAMS]
        return Algorithm.ECDSA_P256 if params == _P256_PARAMS else None
    if key_type == KeyType.RSA:
        modulus: bytes = key[Attribute.MODULUS]
        bits = int.from_bytes(modulus, "big").bit_length()
        return Algorithm.RSA_3072_PSS if bits == _pubkey.RSA_BITS else None
    return None


@dataclass(frozen=True)
class PublicParts:
    """Public-key attributes read on the PKCS#11 thread, converted elsewhere."""

    ec_point: bytes = b""
    modulus: bytes = b""
    public_exponent: bytes = b""

    def to_crypto(self, algorithm: Algorithm) -> PublicKeyTypes:
        if algorithm is Algorithm.ED25519:
            return _pubkey.ed25519_public_key(self.ec_point)
        if algorithm is Algorithm.ECDSA_P256:
            return _pubkey.ecdsa_p256_public_key(self.ec_point)
        return _pubkey.rsa_public_key(self.modulus, self.public_exponent)


def public_parts(obj: pkcs11.Object, algorithm: Algorithm) -> PublicParts:
    """Read a public key object's parts, refusing a key of another algorithm.

    Raises:
        BackendError: ``obj`` is not an ``algorithm`` key.
    """
    found = algorithm_of(obj)
    if found is not algorithm:
        raise BackendError(wrong_algorithm(key_hex(obj), found, algorithm))
    if algorithm is Algorithm.RSA_3072_PSS:
        return PublicParts(
            modulus=obj[Attribute.MODULUS], public_exponent=obj[Attribute.PUBLIC_EXPONENT]
        )
    return PublicParts(ec_point=obj[Attribute.EC_POINT])


def sign(key: pkcs11.types.SignMixin, algorithm: Algorithm, message: bytes, hashed: bool) -> bytes:
    """Sign in the token with ``algorithm``'s mechanism; returns the token's raw signature.

    Ed25519: CKM_EDDSA over ``message``. ECDSA P-256: CKM_ECDSA over its
    SHA-256 (SoftHSM has no CKM_ECDSA_SHA256), or over ``message`` itself when
    ``hashed`` says it already is that digest. RSA: CKM_SHA256_RSA_PKCS_PSS with
    MGF1-SHA-256 and a 32-byte salt.
    """
    if algorithm is Algorithm.ED25519:
        return key.sign(message, mechanism=Mechanism.EDDSA)
    if algorithm is Algorithm.ECDSA_P256:
        digest = message if hashed else hashlib.sha256(message).digest()
        return key.sign(digest, mechanism=Mechanism.ECDSA)
    return key.sign(message, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=_PSS_PARAMS)


def finish_signature(algorithm: Algorithm, signature: bytes) -> bytes:
    """Check a token signature's size and put it in securesystemslib's format.

    Raises:
        BackendError: the signature is malformed or of the wrong size.
    """
    if algorithm is Algorithm.ECDSA_P256:
        return _pubkey.ecdsa_raw_to_der(signature)
    expected = _ED25519_SIGNATURE_BYTES if algorithm is Algorithm.ED25519 else _RSA_SIGNATURE_BYTES
    if len(signature) != expected:
        raise BackendError(
            f"token returned a {algorithm.value} signature of {len(signature)} bytes, "
            f"not {expected}"
        )
    return signature


def wrong_algorithm(hex_id: str, found: Algorithm | None, wanted: Algorithm) -> str:
    """The refusal of a key (``hex_id``: its CKA_ID) used as another algorithm's."""
    what = f"a {found.value} key" if found else "of an unsupported type"
    return f"key {hex_id} is {what}, not {wanted.value}"


def key_hex(obj: pkcs11.Object) -> str:
    """A key object's CKA_ID in hex, or ``?`` when it cannot be read."""
    try:
        key_id: bytes = obj[Attribute.ID]
    except p11.PKCS11Error:
        return "?"
    return key_id.hex()
