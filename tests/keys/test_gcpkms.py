"""GcpKmsBackend against the fake KMS: the KMS mapping, integrity checks, faults, config.

The backend-generic cases (sign and verify, rotate, retire, restart) are in
test_backend_contract.py; these are the ones only a KMS has.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from securesystemslib.signer import Signature, SSlibKey

from tuf_signer.config import GcpKmsConfig, parse_config
from tuf_signer.errors import (
    BackendError,
    BackendPermissionError,
    BackendQuotaError,
    BackendUnavailableError,
    ConfigError,
)
from tuf_signer.keys import GcpKmsBackend, NewKey, crypto_key_id, kms_transport
from tuf_signer.model import Algorithm
from tuf_signer.testing.fake_kms import Corruption, FakeKms

ED = Algorithm.ED25519
CALL_TIMEOUT = 2.0  # seconds: short, so that "within the budget" is quick to test


@pytest.fixture
def ring() -> str:
    return f"ring-{secrets.token_hex(4)}"


@pytest.fixture
async def backend(kms: FakeKms, ring: str) -> AsyncIterator[GcpKmsBackend]:
    """A started backend in a key ring of its own."""
    started = kms.backend("kms", key_ring=ring, call_timeout=CALL_TIMEOUT)
    await started.start()
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
async def key(backend: GcpKmsBackend) -> NewKey:
    return await backend.create(ED, "tuf-signer/online/1/0000")


def verify(key: SSlibKey, data: bytes, signature: bytes) -> None:
    key.verify_signature(Signature(key.keyid, signature.hex()), data)


def delta(kms: FakeKms, before: dict[str, int], method: str) -> int:
    return kms.call_counts().get(method, 0) - before.get(method, 0)


# --- the mapping: one crypto key per tuf-signer key, one version per key version ---------


def _hashed(name: str, slug: str) -> str:
    return f"tuf-signer-{slug}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        pytest.param("tuf-signer/online/1/ab12", "tuf-signer-online", id="service-label"),
        pytest.param("tuf-signer/online/7/ffff", "tuf-signer-online", id="same-key-other-version"),
        pytest.param("tuf-signer/a_b-C/1/00", "tuf-signer-a_b-C", id="fits-the-alphabet"),
        pytest.param("free-form", "tuf-signer-free-form", id="free-form-label"),
        pytest.param("tuf-signer/a.b/1/00", _hashed("a.b", "a_b"), id="dot-is-slugged-and-hashed"),
        pytest.param(
            "tuf-signer/" + "x" * 60 + "/1/00",
            _hashed("x" * 60, "x" * 35),
            id="too-long-is-cut-and-hashed",
        ),
    ],
)
def test_crypto_key_id(label: str, expected: str) -> None:
    got = crypto_key_id(label)

    assert got == expected
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,63}", got)


def test_distinct_names_get_distinct_ids() -> None:
    names = ["a.b", "a_b", "a-b", "a/b", "x" * 60, "x" * 61]

    ids = {crypto_key_id(f"tuf-signer/{n}/1/00") for n in names}

    assert len(ids) == len(names)


async def test_versions_of_one_key_share_a_crypto_key_and_pin_their_version(
    kms: FakeKms, backend: GcpKmsBackend
) -> None:
    v1 = await backend.create(ED, "tuf-signer/online/1/aaaa")
    v2 = await backend.create(ED, "tuf-signer/online/2/bbbb")
    other = await backend.create(ED, "tuf-signer/other/1/cccc")

    crypto_key = f"{backend.key_ring}/cryptoKeys/tuf-signer-online"
    assert v1.handle == f"{crypto_key}/cryptoKeyVersions/1"
    assert v2.handle == f"{crypto_key}/cryptoKeyVersions/2"
    assert other.handle == f"{backend.key_ring}/cryptoKeys/tuf-signer-other/cryptoKeyVersions/1"
    assert kms.version_names(crypto_key) == [v1.handle, v2.handle]
    # A newer ENABLED version changes nothing for the pinned one.
    verify(v1.public_key, b"x", await backend.sign(v1.handle, ED, b"x"))


async def test_create_makes_the_key_ring_and_an_hsm_key_without_initial_version(
    kms: FakeKms, backend: GcpKmsBackend
) -> None:
    from google.cloud.kms_v1.types import resources

    before = kms.call_counts()

    new = await backend.create(Algorithm.ECDSA_P256, "tuf-signer/ec/1/00")

    assert delta(kms, before, "CreateKeyRing") == 1
    assert delta(kms, before, "CreateCryptoKey") == 2  # NOT_FOUND (no key ring yet), then OK
    assert delta(kms, before, "CreateCryptoKeyVersion") == 1
    assert new.handle.endswith("/cryptoKeys/tuf-signer-ec/cryptoKeyVersions/1")
    crypto_key = kms._keys[new.handle.split("/cryptoKeyVersions/")[0]]
    assert crypto_key.protection_level == resources.ProtectionLevel.HSM
    assert crypto_key.labels == {"managed-by": "tuf-signer"}


async def test_create_waits_for_key_generation(kms: FakeKms, ring: str) -> None:
    kms.generation_delay = 0.3
    backend = kms.backend("slow-gen", key_ring=ring)
    await backend.start()
    try:
        before = kms.call_counts()
        start = time.monotonic()
        new = await backend.create(ED, "tuf-signer/gen/1/00")
        took = time.monotonic() - start
        assert took >= 0.3
        assert delta(kms, before, "GetCryptoKeyVersion") >= 1
        verify(new.public_key, b"x", await backend.sign(new.handle, ED, b"x"))
    finally:
        kms.generation_delay = 0.0
        await backend.close()


async def test_create_gives_up_when_generation_outlasts_its_budget(kms: FakeKms, ring: str) -> None:
    kms.generation_delay = 5.0
    backend = kms.backend("slow-gen", key_ring=ring, create_timeout=0.5)
    await backend.start()
    try:
        start = time.monotonic()
        with pytest.raises(BackendUnavailableError, match="did not finish generating"):
            await backend.create(ED, "tuf-signer/gen/1/00")
        assert time.monotonic() - start < 1.5
    finally:
        kms.generation_delay = 0.0
        await backend.close()


@pytest.mark.parametrize(
    ("existing", "setting", "message"),
    [
        pytest.param(
            Algorithm.ECDSA_P256, {}, "algorithm EC_SIGN_P256_SHA256, not", id="other-algorithm"
        ),
        pytest.param(
            ED, {"protection_level": "SOFTWARE"}, "protection level HSM", id="other-level"
        ),
    ],
)
async def test_existing_crypto_key_of_another_kind_is_refused(
    kms: FakeKms,
    backend: GcpKmsBackend,
    ring: str,
    existing: Algorithm,
    setting: dict[str, Any],
    message: str,
) -> None:
    await backend.create(existing, "tuf-signer/taken/1/00")
    other = kms.backend("other", key_ring=ring, **setting)
    await other.start()
    try:
        with pytest.raises(BackendError, match=message):
            await other.create(ED, "tuf-signer/taken/2/00")
    finally:
        await other.close()


@pytest.mark.parametrize(
    "handle",
    [
        pytest.param("", id="empty"),
        pytest.param("00" * 16, id="pkcs11-handle"),
        pytest.param(
            "projects/test-project/locations/global/keyRings/elsewhere/cryptoKeys/"
            "k/cryptoKeyVersions/1",
            id="other-key-ring",
        ),
        pytest.param("{ring}/cryptoKeys/k", id="crypto-key-not-version"),
        pytest.param("{ring}/cryptoKeys/k/cryptoKeyVersions/0", id="version-zero"),
        pytest.param("{ring}/cryptoKeys/k/cryptoKeyVersions/1/x", id="trailing"),
        pytest.param("{ring}/cryptoKeys/a.b/cryptoKeyVersions/1", id="bad-key-id"),
    ],
)
async def test_malformed_handles_are_refused_before_any_call(
    kms: FakeKms, backend: GcpKmsBackend, handle: str
) -> None:
    handle = handle.format(ring=backend.key_ring)
    before = kms.call_counts()

    with pytest.raises(BackendError, match="malformed Cloud KMS key handle"):
        await backend.sign(handle, ED, b"x")

    assert kms.call_counts() == before


async def test_disabled_version_is_disabled_in_kms_and_loses_its_public_key(
    kms: FakeKms, backend: GcpKmsBackend, ring: str, key: NewKey
) -> None:
    await backend.disable(key.handle)
    await backend.disable(key.handle)  # again: still DISABLED, no error

    assert kms.version_state(key.handle) == "DISABLED"
    with pytest.raises(BackendError, match="is disabled"):
        await backend.sign(key.handle, ED, b"x")
    # KMS serves public keys of ENABLED versions only; the service keeps its own copy.
    fresh = kms.backend("fresh", key_ring=ring)
    await fresh.start()
    try:
        with pytest.raises(BackendError, match="current state is: DISABLED"):
            await fresh.public_key(key.handle, ED)
    finally:
        await fresh.close()


# --- integrity ------------------------------------------------------------------------------

INTEGRITY = [
    pytest.param(
        Corruption.SIGNATURE_CRC32C, "signature_crc32c does not match", id="signature-crc"
    ),
    pytest.param(
        Corruption.UNVERIFIED, "did not verify the request's data_crc32c", id="unverified"
    ),
    pytest.param(
        Corruption.SIGNATURE, "does not verify against the public key", id="bad-signature"
    ),
    pytest.param(Corruption.WRONG_NAME, "answer names", id="wrong-version-name"),
]


@pytest.mark.parametrize(("corruption", "message"), INTEGRITY)
async def test_a_damaged_answer_is_retried_and_never_returned(
    kms: FakeKms, backend: GcpKmsBackend, key: NewKey, corruption: Corruption, message: str
) -> None:
    kms.corrupt_next(corruption, 2)
    before = kms.call_counts()

    signature = await backend.sign(key.handle, ED, b"data")

    verify(key.public_key, b"data", signature)
    assert delta(kms, before, "AsymmetricSign") == 3


@pytest.mark.parametrize(("corruption", "message"), INTEGRITY)
async def test_damaged_answers_become_unavailable_after_the_bounded_retries(
    kms: FakeKms, backend: GcpKmsBackend, key: NewKey, corruption: Corruption, message: str
) -> None:
    kms.corrupt_next(corruption, 3)
    before = kms.call_counts()

    with pytest.raises(BackendUnavailableError, match=f"failed integrity checks 3 time.*{message}"):
        await backend.sign(key.handle, ED, b"data")

    assert delta(kms, before, "AsymmetricSign") == 3
    verify(key.public_key, b"data", await backend.sign(key.handle, ED, b"data"))


@pytest.mark.parametrize(
    "algorithm", [Algorithm.ECDSA_P256, Algorithm.RSA_3072_PSS], ids=["ecdsa-p256", "rsa-3072-pss"]
)
async def test_digest_algorithms_check_the_digest_checksum(
    kms: FakeKms, backend: GcpKmsBackend, algorithm: Algorithm
) -> None:
    new = await backend.create(algorithm, f"tuf-signer/digest-{algorithm.keytype}/1/00")
    kms.corrupt_next(Corruption.UNVERIFIED, 3)

    with pytest.raises(BackendUnavailableError, match="digest_crc32c"):
        await backend.sign(new.handle, algorithm, b"data")


@pytest.mark.parametrize(
    ("corruption", "message"),
    [
        pytest.param(Corruption.PEM_CRC32C, "pem_crc32c does not match", id="pem-crc"),
        pytest.param(Corruption.WRONG_NAME, "answer names", id="wrong-version-name"),
    ],
)
async def test_public_key_answers_are_checked_too(
    kms: FakeKms, ring: str, key: NewKey, corruption: Corruption, message: str
) -> None:
    fresh = kms.backend("fresh", key_ring=ring, integrity_attempts=2)
    await fresh.start()
    try:
        kms.corrupt_next(corruption, 1)
        assert await fresh.public_key(key.handle, ED) == key.public_key
        fresh._keys.clear()
        kms.corrupt_next(corruption, 2)
        with pytest.raises(BackendUnavailableError, match=f"2 time.*{message}"):
            await fresh.public_key(key.handle, ED)
    finally:
        await fresh.close()


# --- transient failures and deadlines -----------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED],
    ids=["unavailable", "deadline-exceeded"],
)
async def test_transient_failures_are_retried_within_the_budget(
    kms: FakeKms, backend: GcpKmsBackend, key: NewKey, code: grpc.StatusCode
) -> None:
    kms.fail_next(code, 3, method="AsymmetricSign")
    before = kms.call_counts()
    start = time.monotonic()

    signature = await backend.sign(key.handle, ED, b"data")

    assert time.monotonic() - start < CALL_TIMEOUT
    assert delta(kms, before, "AsymmetricSign") == 4
    verify(key.public_key, b"data", signature)


async def test_backoff_grows_and_is_jittered(kms: FakeKms, ring: str, key: NewKey) -> None:
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    backend = kms.backend("sleepy", key_ring=ring, call_timeout=30, sleep=record)
    await backend.start()
    try:
        kms.fail_next("UNAVAILABLE", 5, method="GetPublicKey")
        await backend.public_key(key.handle, ED)
    finally:
        await backend.close()

    assert len(sleeps) == 5
    # 0.05 s doubling, jittered by 0.5-1.5x (module constants).
    for n, slept in enumerate(sleeps):
        assert 0.025 * 2**n <= slept <= 0.075 * 2**n


@pytest.mark.parametrize(
    ("arrange", "attempts", "least"),
    [
        # Backoff stops once the next attempt could not start before the deadline.
        pytest.param(
            lambda k: k.fail_next("UNAVAILABLE", 10_000), range(3, 20), 0.3, id="unavailable"
        ),
        # One attempt that waits for the whole budget, then nothing is left.
        pytest.param(
            lambda k: k.set_latency(10.0, "AsymmetricSign"), [1], CALL_TIMEOUT, id="kms-hangs"
        ),
    ],
)
async def test_nothing_waits_past_the_call_budget(
    kms: FakeKms,
    backend: GcpKmsBackend,
    key: NewKey,
    arrange: Any,
    attempts: range | list[int],
    least: float,
) -> None:
    await backend.sign(key.handle, ED, b"warm")  # the public key is cached
    arrange(kms)
    before = kms.call_counts()
    start = time.monotonic()

    with pytest.raises(BackendUnavailableError, match="AsymmetricSign"):
        await backend.sign(key.handle, ED, b"data")

    elapsed = time.monotonic() - start
    assert least * 0.9 < elapsed < CALL_TIMEOUT + 1.0  # slack for a loaded test machine
    assert delta(kms, before, "AsymmetricSign") in attempts


async def test_create_version_is_not_retried(
    kms: FakeKms, backend: GcpKmsBackend, key: NewKey
) -> None:
    kms.fail_next("UNAVAILABLE", 1, method="CreateCryptoKeyVersion")
    before = kms.call_counts()

    with pytest.raises(BackendUnavailableError, match="CreateCryptoKeyVersion"):
        await backend.create(ED, "tuf-signer/online/2/0000")

    assert delta(kms, before, "CreateCryptoKeyVersion") == 1


# --- refusals: quota, permissions, everything else ------------------------------------------

REFUSALS = [
    pytest.param(
        lambda k: k.fail_next("RESOURCE_EXHAUSTED", 1, message="Quota exceeded for metric"),
        BackendQuotaError,
        "RESOURCE_EXHAUSTED",
        r"quota exhausted for AsymmetricSign .*Quota exceeded for metric",
        id="quota",
    ),
    pytest.param(
        lambda k: k.deny("cloudkms.cryptoKeyVersions.useToSign"),
        BackendPermissionError,
        "FAILED_PRECONDITION",
        r"denied AsymmetricSign .*cloudkms\.cryptoKeyVersions\.useToSign "
        r"\(e\.g\. roles/cloudkms\.signerVerifier\)",
        id="permission-denied",
    ),
    pytest.param(
        lambda k: k.fail_next("UNAUTHENTICATED", 1, message="Request had invalid credentials"),
        BackendPermissionError,
        "FAILED_PRECONDITION",
        r"rejected the credentials .*invalid credentials",
        id="unauthenticated",
    ),
    pytest.param(
        lambda k: k.fail_next("INVALID_ARGUMENT", 1, message="bad request"),
        BackendError,
        "INTERNAL",
        r"refused AsymmetricSign .*INVALID_ARGUMENT: bad request",
        id="other-status",
    ),
]


@pytest.mark.parametrize(("arrange", "error", "code", "message"), REFUSALS)
async def test_refusals_are_not_retried_and_keep_their_meaning(
    kms: FakeKms,
    backend: GcpKmsBackend,
    key: NewKey,
    arrange: Any,
    error: type[BackendError],
    code: str,
    message: str,
) -> None:
    arrange(kms)
    before = kms.call_counts()

    with pytest.raises(BackendError, match=message) as raised:
        await backend.sign(key.handle, ED, b"data")

    assert type(raised.value) is error
    assert raised.value.code == code
    assert delta(kms, before, "AsymmetricSign") == 1


@pytest.mark.parametrize(
    ("permission", "call", "named"),
    [
        pytest.param(
            "cloudkms.cryptoKeyVersions.viewPublicKey",
            "public_key",
            r"cloudkms\.cryptoKeyVersions\.viewPublicKey \(e\.g\. roles/cloudkms\.publicKeyViewer",
            id="view-public-key",
        ),
        pytest.param(
            "cloudkms.cryptoKeyVersions.create",
            "rotate",
            r"cloudkms\.cryptoKeyVersions\.create \(e\.g\. roles/cloudkms\.admin",
            id="rotate",
        ),
        pytest.param(
            "cloudkms.cryptoKeys.create",
            "create",
            r"cloudkms\.cryptoKeys\.create \(e\.g\. roles/cloudkms\.admin",
            id="create",
        ),
        pytest.param(
            "cloudkms.cryptoKeyVersions.update",
            "disable",
            r"cloudkms\.cryptoKeyVersions\.update \(e\.g\. roles/cloudkms\.admin",
            id="retire",
        ),
    ],
)
async def test_missing_permissions_are_named(
    kms: FakeKms, ring: str, key: NewKey, permission: str, call: str, named: str
) -> None:
    fresh = kms.backend("fresh", key_ring=ring)
    await fresh.start()
    calls = {
        "public_key": lambda: fresh.public_key(key.handle, ED),
        "rotate": lambda: fresh.create(ED, "tuf-signer/online/2/0000"),
        "create": lambda: fresh.create(ED, "tuf-signer/brand-new/1/0000"),
        "disable": lambda: fresh.disable(key.handle),
    }
    kms.deny(permission)
    try:
        with pytest.raises(BackendPermissionError, match=named):
            await calls[call]()
    finally:
        await fresh.close()


# --- start, health, connection -----------------------------------------------------------------


@pytest.mark.parametrize(
    "arrange",
    [
        pytest.param(lambda k: None, id="missing-key-ring"),
        pytest.param(lambda k: k.deny("cloudkms.keyRings.get"), id="no-keyRings-get"),
    ],
)
async def test_start_and_check_need_no_key_ring_access(
    kms: FakeKms, ring: str, arrange: Any
) -> None:
    arrange(kms)
    backend = kms.backend("signer-only", key_ring=ring)
    await backend.start()
    try:
        await backend.check()
    finally:
        await backend.close()


async def test_unreachable_kms_fails_start_and_check_within_the_budget(
    kms: FakeKms, ring: str
) -> None:
    down = FakeKms()
    down.start()
    address = down.address
    down.stop(grace=None)
    backend = GcpKmsBackend(
        "down",
        project="test-project",
        location="global",
        key_ring=ring,
        transport=kms_transport(address),
        call_timeout=1.0,
    )
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="GetKeyRing"):
        await backend.start()
    assert time.monotonic() - start < 2.0
    with pytest.raises(BackendUnavailableError, match="not started"):
        await backend.check()


async def test_check_reports_a_kms_that_stopped_answering(
    kms: FakeKms, backend: GcpKmsBackend
) -> None:
    await backend.check()
    kms.fail_next("UNAVAILABLE", 10_000, method="GetKeyRing")

    with pytest.raises(BackendUnavailableError, match="GetKeyRing"):
        await backend.check()
    kms.reset_faults()
    kms.fail_next("UNAUTHENTICATED", 1, method="GetKeyRing")
    with pytest.raises(BackendUnavailableError, match="rejected the credentials"):
        await backend.check()


async def test_missing_google_cloud_kms_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, ring: str
) -> None:
    monkeypatch.setitem(sys.modules, "google.cloud.kms_v1", None)
    backend = GcpKmsBackend(
        "no-lib",
        project="p-1",
        location="global",
        key_ring=ring,
        transport=kms_transport("127.0.0.1:1"),
    )

    with pytest.raises(ConfigError, match=re.escape("pip install 'tuf-signer[gcp]'")):
        await backend.start()


def test_repr_names_the_key_ring() -> None:
    backend = GcpKmsBackend(
        "kms", project="p-1", location="global", key_ring="r", transport=kms_transport("[::1]:1")
    )

    assert repr(backend) == (
        "GcpKmsBackend(name='kms', key_ring='projects/p-1/locations/global/keyRings/r')"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"project": "Bad Project"}, "project", id="project"),
        pytest.param({"location": "Global/"}, "location", id="location"),
        pytest.param({"key_ring": "a.b"}, "key_ring", id="key-ring"),
        pytest.param({"protection_level": "hsm"}, "protection_level", id="level-case"),
        pytest.param({"call_timeout": 0}, "call_timeout", id="call-timeout"),
        pytest.param({"integrity_attempts": 0}, "integrity_attempts", id="attempts"),
    ],
)
def test_constructor_refuses_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"project": "p-1", "location": "global", "key_ring": "r"} | kwargs

    with pytest.raises(ConfigError, match=message):
        GcpKmsBackend("kms", transport=kms_transport("127.0.0.1:1"), **args)


# --- credentials and transport -------------------------------------------------------------------


def _service_account_file(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "p-1",
                "private_key_id": "0" * 40,
                "private_key": pem,
                "client_email": "signer@p-1.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    path.chmod(0o600)
    return path


async def test_tls_transport_with_a_service_account_file(tmp_path: Path) -> None:
    from google.oauth2 import service_account

    sa = _service_account_file(tmp_path / "sa.json")

    transport = await kms_transport("kms.example.com:443", sa)()
    try:
        credentials = transport._credentials
        assert isinstance(credentials, service_account.Credentials)
        assert credentials.service_account_email == "signer@p-1.iam.gserviceaccount.com"
        assert transport._host == "kms.example.com:443"
    finally:
        await transport.close()


@pytest.mark.parametrize(
    ("endpoint", "file", "message"),
    [
        pytest.param(
            None, "missing.json", "cannot read credentials_file .*missing.json", id="missing-file"
        ),
        pytest.param(None, "user.json", "not a service-account key file", id="other-type"),
        pytest.param(None, "broken.json", "not a usable service-account key", id="broken-key"),
        pytest.param(None, None, "Application Default Credentials", id="no-adc"),
    ],
)
async def test_credentials_that_cannot_be_loaded_are_config_errors(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    endpoint: str | None,
    file: str | None,
    message: str,
) -> None:
    # ADC looks at this variable first; a missing file there fails at once, offline.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-adc.json"))
    (tmp_path / "user.json").write_text('{"type": "authorized_user"}')
    (tmp_path / "broken.json").write_text('{"type": "service_account", "private_key": "x"}')

    with pytest.raises(ConfigError, match=message):
        await kms_transport(endpoint, tmp_path / file if file else None)()


def test_credentials_are_refused_with_a_plaintext_endpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="credentials_file: not used with the plaintext"):
        kms_transport("127.0.0.1:9", tmp_path / "sa.json")


# --- config ---------------------------------------------------------------------------------------

BASE = {
    "server": {"listen": "127.0.0.1:0", "insecure": True},
    "audit": {"path": "audit.db"},
}


def _parse(tmp_path: Path, **kms: Any) -> GcpKmsConfig:
    table = {"type": "gcpkms", "project": "my-project", "location": "global", "key_ring": "r"}
    config = parse_config({**BASE, "backends": {"kms": table | kms}}, tmp_path / "c.toml")
    backend = config.backends["kms"]
    assert isinstance(backend, GcpKmsConfig)
    return backend


def test_config_defaults_and_paths(tmp_path: Path) -> None:
    cfg = _parse(tmp_path, credentials_file="sa.json", endpoint="kms.example.com:443")

    assert cfg == GcpKmsConfig(
        name="kms",
        project="my-project",
        location="global",
        key_ring="r",
        credentials_file=tmp_path / "sa.json",
        endpoint="kms.example.com:443",
        protection_level="HSM",
        call_timeout=10.0,
        create_timeout=120.0,
    )
    fake = _parse(tmp_path, endpoint="127.0.0.1:8443", protection_level="software", call_timeout=3)
    assert (fake.protection_level, fake.call_timeout, fake.credentials_file) == (
        "SOFTWARE",
        3,
        None,
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"project": None}, "backends.kms.project: missing required", id="no-project"),
        pytest.param({"project": "My Project"}, "backends.kms.project:", id="bad-project"),
        pytest.param({"location": 1}, "backends.kms.location: expected str", id="location-type"),
        pytest.param({"key_ring": "a/b"}, "backends.kms.key_ring:", id="bad-key-ring"),
        pytest.param(
            {"endpoint": "localhost"},
            "backends.kms.endpoint: expected HOST:PORT",
            id="endpoint-without-port",
        ),
        pytest.param(
            {"endpoint": "127.0.0.1:1", "credentials_file": "sa.json"},
            "backends.kms.credentials_file: not used with the plaintext",
            id="credentials-to-the-fake",
        ),
        pytest.param(
            {"protection_level": "external"}, "backends.kms.protection_level:", id="level"
        ),
        pytest.param(
            {"call_timeout": 0}, "backends.kms.call_timeout: must be between", id="zero-timeout"
        ),
        pytest.param(
            {"create_timeout": True}, "backends.kms.create_timeout: expected", id="bool-timeout"
        ),
        pytest.param({"pin_file": "x"}, "backends.kms.pin_file: unknown setting", id="pkcs11-key"),
    ],
)
def test_config_errors_name_the_setting(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    table: dict[str, Any] = {
        "type": "gcpkms",
        "project": "my-project",
        "location": "global",
        "key_ring": "r",
    }
    table.update(settings)
    table = {k: v for k, v in table.items() if v is not None}

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({**BASE, "backends": {"kms": table}}, tmp_path / "c.toml")


def test_unknown_backend_type_lists_gcpkms(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="supported: 'pkcs11', 'gcpkms'"):
        parse_config({**BASE, "backends": {"x": {"type": "vault"}}}, tmp_path / "c.toml")


async def test_concurrent_first_signs_fetch_the_public_key_safely(
    kms: FakeKms, ring: str, key: NewKey
) -> None:
    fresh = kms.backend("fresh", key_ring=ring)
    await fresh.start()
    try:
        signatures = await asyncio.gather(
            *(fresh.sign(key.handle, ED, b"%d" % i) for i in range(20))
        )
    finally:
        await fresh.close()

    for i, signature in enumerate(signatures):
        verify(key.public_key, b"%d" % i, signature)
