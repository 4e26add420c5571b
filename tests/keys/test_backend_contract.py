"""The shared KeyBackend suite: every implementation passes the same cases (STYLE 4).

Backends under test:

- ``pkcs11``: Pkcs11Backend on the session's SoftHSM token;
- ``gcpkms``: GcpKmsBackend on the fake KMS (``tuf_signer.testing.fake_kms``),
  in a key ring of its own;
- ``gcpkms-real``: GcpKmsBackend on a real Cloud KMS key ring, only when
  ``TUF_SIGNER_TEST_GCP_KEY_RING=projects/P/locations/L/keyRings/R`` is set and
  credentials are found (Application Default Credentials, or a file named by
  ``TUF_SIGNER_TEST_GCP_CREDENTIALS``); otherwise skipped with that reason.
  It adds versions to crypto keys named ``tuf-signer-contract-*`` (a fixed set,
  since KMS never deletes crypto keys) and disables them at the end.
  ``TUF_SIGNER_TEST_GCP_PROTECTION_LEVEL`` (default ``SOFTWARE``) picks the
  protection level of the keys it creates.

Backend-specific behaviour (PKCS#11 attributes, KMS integrity checks and
faults) is tested in test_pkcs11.py and test_gcpkms.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signature, SSlibKey

from tuf_signer.errors import BackendError, BackendUnavailableError, ConfigError
from tuf_signer.keys import GcpKmsBackend, KeyBackend, NewKey, kms_transport
from tuf_signer.model import Algorithm
from tuf_signer.testing.fake_kms import FakeKms

ALGORITHMS = [
    pytest.param(Algorithm.ED25519, id="ed25519"),
    pytest.param(Algorithm.ECDSA_P256, id="ecdsa-p256"),
    pytest.param(Algorithm.RSA_3072_PSS, id="rsa-3072-pss"),
]
REAL_KMS_RING = "TUF_SIGNER_TEST_GCP_KEY_RING"
REAL_KMS_CREDENTIALS = "TUF_SIGNER_TEST_GCP_CREDENTIALS"
REAL_KMS_PROTECTION = "TUF_SIGNER_TEST_GCP_PROTECTION_LEVEL"


@dataclass
class Kind:
    """One backend implementation over one store (a token, a key ring).

    Attributes:
        make: a new, not started backend with that name over the store.
        missing_handle: well-formed, but no such key.
        malformed_handle: not a handle this backend could ever issue.
        created: handles made by the suite (the real KMS run disables them).
    """

    id: str
    make: Callable[[str], KeyBackend]
    missing_handle: str
    malformed_handle: str
    created: list[str] = field(default_factory=list)

    def label(self, purpose: str, algorithm: Algorithm, version: int = 1) -> str:
        """A label as the service makes them; one tuf-signer key per (purpose, algorithm)."""
        name = f"contract-{purpose}-{algorithm.name.lower().replace('_', '-')}"
        return f"tuf-signer/{name}/{version}/{secrets.token_hex(4)}"

    async def create(self, backend: KeyBackend, algorithm: Algorithm, label: str) -> NewKey:
        new = await backend.create(algorithm, label)
        self.created.append(new.handle)
        return new


def _fake_kind(fake: FakeKms) -> Kind:
    ring = f"contract-{secrets.token_hex(4)}"
    base = f"projects/test-project/locations/global/keyRings/{ring}"
    return Kind(
        id="gcpkms",
        make=lambda name: fake.backend(name, key_ring=ring, call_timeout=5),
        missing_handle=f"{base}/cryptoKeys/tuf-signer-none/cryptoKeyVersions/1",
        malformed_handle=f"{base}/cryptoKeys/tuf-signer-none",
    )


def _real_kind() -> Iterator[Kind]:
    from tuf_signer.keys.gcpkms._transport import load_credentials

    ring = os.environ[REAL_KMS_RING]  # the parameter is skipped without it
    match = re.fullmatch(r"projects/([^/]+)/locations/([^/]+)/keyRings/([^/]+)", ring)
    if match is None:
        pytest.fail(f"{REAL_KMS_RING}={ring!r} is not projects/P/locations/L/keyRings/R")
    credentials = os.environ.get(REAL_KMS_CREDENTIALS) or None
    try:
        load_credentials(credentials)
    except ConfigError as e:
        pytest.skip(f"real Cloud KMS suite: {e.reason}")
    project, location, ring_id = match.groups()
    kind = Kind(
        id="gcpkms-real",
        make=lambda name: GcpKmsBackend(
            name,
            project=project,
            location=location,
            key_ring=ring_id,
            transport=kms_transport(None, credentials),
            protection_level=os.environ.get(REAL_KMS_PROTECTION, "SOFTWARE").upper(),
            call_timeout=30,
            create_timeout=300,
        ),
        missing_handle=f"{ring}/cryptoKeys/tuf-signer-contract-none/cryptoKeyVersions/1",
        malformed_handle=f"{ring}/cryptoKeys/tuf-signer-contract-none",
    )
    yield kind

    async def disable_created() -> None:
        backend = kind.make("cleanup")
        await backend.start()
        try:
            for handle in kind.created:
                try:
                    await backend.disable(handle)
                except BackendError as e:
                    print(f"could not disable {handle}: {e.reason}")
        finally:
            await backend.close()

    asyncio.run(disable_created())


@pytest.fixture(
    scope="module",
    params=[
        "pkcs11",
        "gcpkms",
        pytest.param(
            "gcpkms-real",
            marks=pytest.mark.skipif(
                not os.environ.get(REAL_KMS_RING),
                reason=f"real Cloud KMS suite: set {REAL_KMS_RING}=projects/P/locations/L/"
                f"keyRings/R and credentials (ADC or {REAL_KMS_CREDENTIALS}=FILE) to run it",
            ),
        ),
    ],
)
def kind(request: pytest.FixtureRequest) -> Iterator[Kind]:
    if request.param == "pkcs11":
        hsm = request.getfixturevalue("softhsm")
        yield Kind(
            id="pkcs11",
            make=lambda name: hsm.backend(name),
            missing_handle=os.urandom(16).hex(),
            malformed_handle="not-hex",
        )
    elif request.param == "gcpkms":
        yield _fake_kind(request.getfixturevalue("fake_kms"))
    else:
        yield from _real_kind()


@pytest.fixture(scope="module")
def keys(kind: Kind) -> dict[Algorithm, NewKey]:
    """One key per algorithm for the module (RSA-3072 generation is slow)."""

    async def create_all() -> dict[Algorithm, NewKey]:
        backend = kind.make("setup")
        await backend.start()
        try:
            return {
                alg: await kind.create(backend, alg, kind.label("shared", alg)) for alg in Algorithm
            }
        finally:
            await backend.close()

    return asyncio.run(create_all())


@pytest.fixture
async def backend(kind: Kind) -> AsyncIterator[KeyBackend]:
    """A started backend of the kind, closed afterwards."""
    started = kind.make("test")
    await started.start()
    try:
        yield started
    finally:
        await started.close()


def verify(key: SSlibKey, data: bytes, signature: bytes) -> None:
    key.verify_signature(Signature(key.keyid, signature.hex()), data)


# --- create and read ------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_create_returns_a_tuf_key_with_the_default_keyid(
    kind: Kind, backend: KeyBackend, algorithm: Algorithm
) -> None:
    new = await kind.create(backend, algorithm, kind.label("create", algorithm))

    assert new.public_key.keytype == algorithm.keytype
    assert new.public_key.scheme == algorithm.scheme
    canonical = encode_canonical(new.public_key.to_dict())
    assert isinstance(canonical, str)
    assert new.public_key.keyid == hashlib.sha256(canonical.encode()).hexdigest()
    assert await backend.public_key(new.handle, algorithm) == new.public_key


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_public_key_is_stable_across_reads_and_restarts(
    kind: Kind, keys: dict[Algorithm, NewKey], algorithm: Algorithm
) -> None:
    created = keys[algorithm]
    first = kind.make("first")
    await first.start()
    try:
        read = [await first.public_key(created.handle, algorithm) for _ in range(2)]
    finally:
        await first.close()
    restarted = kind.make("restarted")
    await restarted.start()
    try:
        after_restart = await restarted.public_key(created.handle, algorithm)
    finally:
        await restarted.close()

    assert {k.keyid for k in [*read, after_restart]} == {created.public_key.keyid}
    assert after_restart.to_dict() == created.public_key.to_dict()


# --- sign --------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"_type":"timestamp","version":1}', id="small"),
        pytest.param(os.urandom(60 * 1024), id="60KiB"),
    ],
)
async def test_signature_verifies_with_securesystemslib(
    backend: KeyBackend, keys: dict[Algorithm, NewKey], algorithm: Algorithm, data: bytes
) -> None:
    key = keys[algorithm]

    signature = await backend.sign(key.handle, algorithm, data)

    verify(key.public_key, data, signature)
    with pytest.raises(UnverifiedSignatureError):
        verify(key.public_key, data + b"x", signature)


async def test_concurrent_signs_all_verify(
    backend: KeyBackend, keys: dict[Algorithm, NewKey]
) -> None:
    jobs = [(alg, f"{i} {alg.value}".encode()) for i in range(20) for alg in Algorithm]

    signatures = await asyncio.gather(
        *(backend.sign(keys[alg].handle, alg, data) for alg, data in jobs)
    )

    for (alg, data), signature in zip(jobs, signatures, strict=True):
        verify(keys[alg].public_key, data, signature)


async def test_sign_batch_gives_one_result_or_error_per_item(
    kind: Kind, backend: KeyBackend, keys: dict[Algorithm, NewKey]
) -> None:
    items = [
        (keys[Algorithm.ED25519].handle, Algorithm.ED25519, b"one"),
        (kind.missing_handle, Algorithm.ED25519, b"two"),
        (keys[Algorithm.ECDSA_P256].handle, Algorithm.ECDSA_P256, b"three"),
    ]

    results = await backend.sign_batch(items)

    assert len(results) == 3
    first, missing, third = results
    assert isinstance(first, bytes) and isinstance(third, bytes)
    verify(keys[Algorithm.ED25519].public_key, b"one", first)
    verify(keys[Algorithm.ECDSA_P256].public_key, b"three", third)
    assert type(missing) is BackendError


async def test_sign_batch_with_the_callers_digests_signs_the_same_data(
    backend: KeyBackend, keys: dict[Algorithm, NewKey]
) -> None:
    """The service passes each payload's SHA-256; every algorithm still signs ``data``."""
    algorithms = list(keys)
    data = [b"payload-%d" % i for i in range(len(algorithms))]
    items = [(keys[alg].handle, alg, d) for alg, d in zip(algorithms, data, strict=True)]

    results = await backend.sign_batch(items, [hashlib.sha256(d).digest() for d in data])

    assert len(results) == len(algorithms) == 3
    for alg, d, signature in zip(algorithms, data, results, strict=True):
        assert isinstance(signature, bytes), signature
        verify(keys[alg].public_key, d, signature)


# --- rotate, activate, retire ------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_rotation_adds_a_version_and_each_handle_stays_pinned(
    kind: Kind, backend: KeyBackend, algorithm: Algorithm
) -> None:
    """RotateKey creates version n of the same key; activation is the service's state."""
    v1 = await kind.create(backend, algorithm, kind.label("rotate", algorithm, 1))
    v2 = await kind.create(backend, algorithm, kind.label("rotate", algorithm, 2))

    # Both exist at once (v2 PENDING, v1 ACTIVE in the service); each handle
    # signs with its own key, never "the latest".
    sig1 = await backend.sign(v1.handle, algorithm, b"payload")
    sig2 = await backend.sign(v2.handle, algorithm, b"payload")

    assert v1.handle != v2.handle
    assert v1.public_key.keyid != v2.public_key.keyid
    verify(v1.public_key, b"payload", sig1)
    verify(v2.public_key, b"payload", sig2)
    with pytest.raises(UnverifiedSignatureError):
        verify(v2.public_key, b"payload", sig1)
    with pytest.raises(UnverifiedSignatureError):
        verify(v1.public_key, b"payload", sig2)


async def test_retired_version_never_signs_again_even_after_restart(
    kind: Kind, backend: KeyBackend
) -> None:
    alg = Algorithm.ED25519
    old = await kind.create(backend, alg, kind.label("retire", alg, 1))
    new = await kind.create(backend, alg, kind.label("retire", alg, 2))
    await backend.sign(old.handle, alg, b"before")

    await backend.disable(old.handle)

    with pytest.raises(BackendError) as in_process:
        await backend.sign(old.handle, alg, b"after")
    restarted = kind.make("restarted")
    await restarted.start()
    try:
        with pytest.raises(BackendError) as after_restart:
            await restarted.sign(old.handle, alg, b"after restart")
        verify(new.public_key, b"x", await restarted.sign(new.handle, alg, b"x"))
    finally:
        await restarted.close()
    for raised in (in_process, after_restart):
        assert not isinstance(raised.value, BackendUnavailableError)


# --- lifecycle -----------------------------------------------------------------------------


async def test_start_check_close_and_restart(kind: Kind, keys: dict[Algorithm, NewKey]) -> None:
    key = keys[Algorithm.ED25519]
    backend = kind.make("lifecycle")
    with pytest.raises(BackendUnavailableError, match="not started"):
        await backend.check()

    await backend.start()
    await backend.start()  # idempotent
    await backend.check()
    await backend.close()
    await backend.close()  # idempotent
    with pytest.raises(BackendUnavailableError, match="not started"):
        await backend.sign(key.handle, Algorithm.ED25519, b"x")
    await backend.start()
    try:
        await backend.check()
        verify(key.public_key, b"x", await backend.sign(key.handle, Algorithm.ED25519, b"x"))
    finally:
        await backend.close()


# --- errors ----------------------------------------------------------------------------------

OPERATIONS: dict[str, Callable[[KeyBackend, str], Awaitable[object]]] = {
    "sign": lambda b, h: b.sign(h, Algorithm.ED25519, b"x"),
    "public_key": lambda b, h: b.public_key(h, Algorithm.ED25519),
    "disable": lambda b, h: b.disable(h),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("which", ["missing", "malformed"])
async def test_unknown_or_malformed_handle_is_a_backend_error(
    kind: Kind, backend: KeyBackend, operation: str, which: str
) -> None:
    handle = kind.missing_handle if which == "missing" else kind.malformed_handle

    with pytest.raises(BackendError) as raised:
        await OPERATIONS[operation](backend, handle)

    assert type(raised.value) is BackendError  # INTERNAL, not UNAVAILABLE


@pytest.mark.parametrize(
    ("key_algorithm", "asked"),
    [
        pytest.param(Algorithm.ED25519, Algorithm.ECDSA_P256, id="ed25519-as-ecdsa"),
        pytest.param(Algorithm.ECDSA_P256, Algorithm.ED25519, id="ecdsa-as-ed25519"),
        pytest.param(Algorithm.RSA_3072_PSS, Algorithm.ED25519, id="rsa-as-ed25519"),
    ],
)
async def test_key_of_another_algorithm_is_refused(
    backend: KeyBackend, keys: dict[Algorithm, NewKey], key_algorithm: Algorithm, asked: Algorithm
) -> None:
    handle = keys[key_algorithm].handle
    message = f"is a {key_algorithm.value} key, not {asked.value}"

    with pytest.raises(BackendError, match=message):
        await backend.sign(handle, asked, b"x")
    with pytest.raises(BackendError, match=message):
        await backend.public_key(handle, asked)
