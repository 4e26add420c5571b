"""SignatureVerifier agrees with securesystemslib (issue 10, finding 10)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import Signature, SSlibKey

from tuf_signer.errors import BackendError, SignatureMismatchError
from tuf_signer.keys import SignatureVerifier, load_public_key
from tuf_signer.model import Algorithm, KeyState, KeyVersion

DATA = b'{"_type":"timestamp","version":1}' * 100
DIGEST = hashlib.sha256(DATA).digest()


def _pss(salt: int) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt)


def _sign(private: PrivateKeyTypes, salt: int = 32) -> bytes:
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign(DATA)
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return private.sign(DIGEST, ec.ECDSA(Prehashed(hashes.SHA256())))
    assert isinstance(private, rsa.RSAPrivateKey)
    return private.sign(DIGEST, _pss(salt), Prehashed(hashes.SHA256()))


_KEYS: dict[Algorithm, Callable[[], PrivateKeyTypes]] = {
    Algorithm.ED25519: ed25519.Ed25519PrivateKey.generate,
    Algorithm.ECDSA_P256: lambda: ec.generate_private_key(ec.SECP256R1()),
    Algorithm.RSA_3072_PSS: lambda: rsa.generate_private_key(65537, 3072),
}


@pytest.fixture(scope="module")
def keys() -> dict[Algorithm, tuple[PrivateKeyTypes, SSlibKey, KeyVersion]]:
    out = {}
    for algorithm, generate in _KEYS.items():
        private = generate()
        public = SSlibKey.from_crypto(private.public_key(), scheme=algorithm.scheme)  # type: ignore[arg-type]
        version = KeyVersion("k", 1, KeyState.ACTIVE, public.keyid, public.to_dict(), "h", "t")
        out[algorithm] = (private, public, version)
    return out


def _sslib_accepts(public: SSlibKey, signature: bytes) -> bool:
    try:
        public.verify_signature(Signature(public.keyid, signature.hex()), DATA)
    except UnverifiedSignatureError:
        return False
    return True


def _ours_accepts(version: KeyVersion, algorithm: Algorithm, signature: bytes) -> bool:
    try:
        SignatureVerifier().verify("b", version, algorithm, signature, DATA, DIGEST)
    except SignatureMismatchError:
        return False
    return True


CASES = [
    pytest.param(lambda s: s, True, id="f10-good"),
    pytest.param(lambda s: bytes([s[0] ^ 1]) + s[1:], False, id="f10-first-bit-flipped"),
    pytest.param(lambda s: s[:-1] + bytes([s[-1] ^ 0x80]), False, id="f10-last-bit-flipped"),
    pytest.param(lambda s: s[:-1], False, id="f10-truncated"),
    pytest.param(lambda s: b"", False, id="f10-empty"),
]


@pytest.mark.parametrize("algorithm", list(Algorithm), ids=[a.value for a in Algorithm])
@pytest.mark.parametrize(("damage", "accepted"), CASES)
def test_f10_agrees_with_securesystemslib(
    keys: dict[Algorithm, tuple[PrivateKeyTypes, SSlibKey, KeyVersion]],
    algorithm: Algorithm,
    damage: Callable[[bytes], bytes],
    accepted: bool,
) -> None:
    private, public, version = keys[algorithm]
    signature = damage(_sign(private))
    assert _sslib_accepts(public, signature) is accepted
    assert _ours_accepts(version, algorithm, signature) is accepted


@pytest.mark.parametrize("algorithm", list(Algorithm), ids=[a.value for a in Algorithm])
def test_f10_another_keys_signature_is_refused(
    keys: dict[Algorithm, tuple[PrivateKeyTypes, SSlibKey, KeyVersion]], algorithm: Algorithm
) -> None:
    _, public, version = keys[algorithm]
    other = _sign(_KEYS[algorithm]())
    assert not _sslib_accepts(public, other)
    with pytest.raises(
        SignatureMismatchError,
        match=r"^backend 'kms' returned a signature that does not verify against the "
        r"registered public key of key 'k' version 1$",
    ) as caught:
        SignatureVerifier().verify("kms", version, algorithm, other, DATA, DIGEST)
    assert caught.value.code == "UNAVAILABLE"


@pytest.mark.parametrize("salt", [0, 20, 64], ids=["salt-0", "salt-20", "salt-64"])
def test_f10_rsa_pss_salt_is_the_digest_length_only(
    keys: dict[Algorithm, tuple[PrivateKeyTypes, SSlibKey, KeyVersion]], salt: int
) -> None:
    # Deliberately stricter than securesystemslib (PSS.AUTO): every backend
    # signs with a 32-byte salt, and what we pass, securesystemslib passes too.
    private, public, version = keys[Algorithm.RSA_3072_PSS]
    signature = _sign(private, salt=salt)
    assert _sslib_accepts(public, signature)
    assert not _ours_accepts(version, Algorithm.RSA_3072_PSS, signature)


@pytest.mark.parametrize(
    ("public_key", "algorithm"),
    [
        pytest.param({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "zz"}},
                     Algorithm.ED25519, id="f10-unreadable-hex"),
        pytest.param({"keytype": "ed25519", "scheme": "ed25519", "keyval": {}},
                     Algorithm.ED25519, id="f10-no-public"),
        pytest.param({"keytype": "ecdsa", "scheme": "ecdsa-sha2-nistp256",
                      "keyval": {"public": "-----BEGIN PUBLIC KEY-----\nx\n"}},
                     Algorithm.ECDSA_P256, id="f10-bad-pem"),
        pytest.param({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "00" * 32}},
                     Algorithm.ECDSA_P256, id="f10-other-algorithm"),
    ],
)  # fmt: skip
def test_f10_unusable_registered_key_is_a_backend_error(
    public_key: dict[str, object], algorithm: Algorithm
) -> None:
    with pytest.raises(BackendError, match="registered"):
        load_public_key(public_key, algorithm)


def test_f10_loaded_keys_are_cached_per_keyid(
    keys: dict[Algorithm, tuple[PrivateKeyTypes, SSlibKey, KeyVersion]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private, _, version = keys[Algorithm.ED25519]
    verifier = SignatureVerifier()
    verifier.verify("b", version, Algorithm.ED25519, _sign(private), DATA, DIGEST)
    import tuf_signer.keys._verify as module

    def fail(*args: object) -> None:
        raise AssertionError("loaded again")

    monkeypatch.setattr(module, "load_public_key", fail)
    verifier.verify("b", version, Algorithm.ED25519, _sign(private), DATA, DIGEST)
