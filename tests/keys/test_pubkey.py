"""Conversions from PKCS#11 attribute bytes to securesystemslib formats (no HSM)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tuf_signer.errors import BackendError
from tuf_signer.keys import _pubkey
from tuf_signer.model import Algorithm

ED25519_RAW = (
    ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
)
P256_POINT = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"\x04\x00", b"", id="empty"),
        pytest.param(b"\x04\x03abc", b"abc", id="short-form"),
        pytest.param(b"\x04\x81\x80" + b"x" * 128, b"x" * 128, id="long-form"),
        pytest.param(b"\x04\x82\x01\x00" + b"y" * 256, b"y" * 256, id="long-form-2"),
    ],
)
def test_der_octet_string_parses(data: bytes, expected: bytes) -> None:
    assert _pubkey.der_octet_string(data) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "not a DER OCTET STRING", id="empty"),
        pytest.param(b"\x03\x01a", "not a DER OCTET STRING", id="bit-string"),
        pytest.param(b"\x04\x05abc", "does not match", id="truncated"),
        pytest.param(b"\x04\x02abc", "does not match", id="trailing"),
        pytest.param(b"\x04\x81\x03abc", "non-minimal", id="non-minimal"),
        pytest.param(b"\x04\x80", "bad DER length", id="indefinite"),
        pytest.param(b"\x04\x85\x01\x00\x00\x00\x00", "bad DER length", id="too-long"),
    ],
)
def test_der_octet_string_refuses(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _pubkey.der_octet_string(data)


@pytest.mark.parametrize(
    "ec_point",
    [
        pytest.param(b"\x04\x20" + ED25519_RAW, id="der"),
        pytest.param(ED25519_RAW, id="raw"),
    ],
)
def test_ed25519_point(ec_point: bytes) -> None:
    key = _pubkey.ed25519_public_key(ec_point)

    assert key.public_bytes(Encoding.Raw, PublicFormat.Raw) == ED25519_RAW


@pytest.mark.parametrize(
    "ec_point",
    [
        pytest.param(b"\x04\x21" + ED25519_RAW + b"\x00", id="33-bytes"),
        pytest.param(b"\x04\x1f" + ED25519_RAW[:31], id="31-bytes"),
        pytest.param(ED25519_RAW[:31], id="raw-short"),
        pytest.param(b"\x05\x20" + ED25519_RAW, id="wrong-tag"),
    ],
)
def test_ed25519_point_refuses(ec_point: bytes) -> None:
    with pytest.raises(BackendError, match="Ed25519 public key"):
        _pubkey.ed25519_public_key(ec_point)


@pytest.mark.parametrize(
    "ec_point",
    [
        pytest.param(b"\x04\x41" + P256_POINT, id="der"),
        pytest.param(P256_POINT, id="raw"),
    ],
)
def test_p256_point(ec_point: bytes) -> None:
    key = _pubkey.ecdsa_p256_public_key(ec_point)

    assert key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint) == P256_POINT


@pytest.mark.parametrize(
    ("ec_point", "message"),
    [
        pytest.param(b"\x04\x41\x04" + b"\x01" * 64, "not on the curve", id="off-curve"),
        pytest.param(b"\x04\x40" + P256_POINT[:64], "not on the curve", id="short"),
        pytest.param(P256_POINT[:64], "malformed", id="raw-short"),
    ],
)
def test_p256_point_refuses(ec_point: bytes, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        _pubkey.ecdsa_p256_public_key(ec_point)


def test_rsa_public_key_requires_3072_bits() -> None:
    numbers = rsa.generate_private_key(65537, 2048).public_key().public_numbers()

    with pytest.raises(BackendError, match="2048 bits, not 3072"):
        _pubkey.rsa_public_key(numbers.n.to_bytes(256, "big"), b"\x01\x00\x01")


def test_rsa_public_key_rejects_bad_numbers() -> None:
    with pytest.raises(BackendError, match="invalid RSA public numbers"):
        _pubkey.rsa_public_key((1 << 3071 | 1).to_bytes(384, "big"), b"\x01")


def test_to_sslib_key_refuses_a_key_of_another_type() -> None:
    key = _pubkey.ed25519_public_key(ED25519_RAW)

    with pytest.raises(BackendError):
        _pubkey.to_sslib_key(key, Algorithm.ECDSA_P256)


@pytest.mark.parametrize(
    ("r", "s"),
    [
        pytest.param(1, 2, id="small"),
        pytest.param(2**255 + 7, 2**256 - 1, id="high-bits"),
    ],
)
def test_ecdsa_raw_to_der(r: int, s: int) -> None:
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")

    assert decode_dss_signature(_pubkey.ecdsa_raw_to_der(raw)) == (r, s)


def test_ecdsa_raw_to_der_refuses_other_lengths() -> None:
    with pytest.raises(BackendError, match="63 bytes, not 64"):
        _pubkey.ecdsa_raw_to_der(b"\x01" * 63)
