"""The fake KMS, spoken to by Google's own sync client, in process and as its own process."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import google_crc32c
import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from google.api_core import exceptions as gexc
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service.transports import (
    KeyManagementServiceGrpcTransport,
)
from google.cloud.kms_v1.types import resources

from tuf_signer.model import Algorithm
from tuf_signer.testing.fake_kms import Corruption, FakeKms, RemoteFakeKms

LOCATION = "projects/test-project/locations/global"
TIMEOUT = 5.0  # seconds per call: a failure must not hang (docs/design.md §4)
State = resources.CryptoKeyVersion.CryptoKeyVersionState

ALGORITHMS = [
    pytest.param("EC_SIGN_ED25519", id="ed25519"),
    pytest.param("EC_SIGN_P256_SHA256", id="ecdsa-p256"),
    pytest.param("RSA_SIGN_PSS_3072_SHA256", id="rsa-3072-pss"),
]


def crc(data: bytes) -> int:
    return int(google_crc32c.value(data))


@pytest.fixture(scope="module")
def client(fake_kms: FakeKms) -> Iterator[kms_v1.KeyManagementServiceClient]:
    channel = grpc.insecure_channel(fake_kms.address)
    yield kms_v1.KeyManagementServiceClient(
        transport=KeyManagementServiceGrpcTransport(channel=channel)
    )
    channel.close()


class Kms:
    """Google's sync client with retry=None and a timeout on every call."""

    def __init__(self, client: kms_v1.KeyManagementServiceClient) -> None:
        self.client = client

    def __getattr__(self, method: str) -> Callable[..., Any]:
        rpc = getattr(self.client, method)
        return lambda **request: rpc(request=request, retry=None, timeout=TIMEOUT)


@pytest.fixture
def api(kms: FakeKms, client: kms_v1.KeyManagementServiceClient) -> Kms:
    return Kms(client)


_ring_counter = iter(range(1_000_000))


def new_key(api: Kms, algorithm: str, skip_initial: bool = True, level: str = "HSM") -> str:
    """A fresh key ring and crypto key; returns the crypto key name."""
    ring_id = f"ring-{os.getpid()}-{next(_ring_counter)}"
    ring = api.create_key_ring(parent=LOCATION, key_ring_id=ring_id, key_ring={}).name
    key = api.create_crypto_key(
        parent=ring,
        crypto_key_id="key",
        crypto_key={
            "purpose": resources.CryptoKey.CryptoKeyPurpose.ASYMMETRIC_SIGN,
            "version_template": {"algorithm": algorithm, "protection_level": level},
        },
        skip_initial_version_creation=skip_initial,
    )
    return str(key.name)


def verify(pem: str, algorithm: str, signature: bytes, data: bytes) -> None:
    """Raises InvalidSignature unless ``signature`` is good for ``data``."""
    public = serialization.load_pem_public_key(pem.encode())
    digest = hashlib.sha256(data).digest()
    if algorithm == "EC_SIGN_ED25519":
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(signature, data)
    elif algorithm == "EC_SIGN_P256_SHA256":
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        assert public.key_size == 3072
        public.verify(
            signature,
            digest,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            Prehashed(hashes.SHA256()),
        )


def sign_request(name: str, algorithm: str, data: bytes) -> dict[str, Any]:
    if algorithm == "EC_SIGN_ED25519":
        return {"name": name, "data": data, "data_crc32c": crc(data)}
    digest = hashlib.sha256(data).digest()
    return {"name": name, "digest": {"sha256": digest}, "digest_crc32c": crc(digest)}


# --- the protocol ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_create_read_and_sign_like_kms(api: Kms, algorithm: str) -> None:
    key = new_key(api, algorithm)
    version = api.create_crypto_key_version(parent=key, crypto_key_version={})
    assert version.name == f"{key}/cryptoKeyVersions/1"
    assert version.state == State.ENABLED
    assert version.algorithm.name == algorithm

    public = api.get_public_key(name=version.name)
    signed = api.asymmetric_sign(**sign_request(version.name, algorithm, b"payload"))

    assert public.name == version.name and public.algorithm.name == algorithm
    assert public.pem_crc32c == crc(public.pem.encode())
    assert signed.name == version.name
    assert signed.signature_crc32c == crc(signed.signature)
    assert signed.verified_data_crc32c is (algorithm == "EC_SIGN_ED25519")
    assert signed.verified_digest_crc32c is (algorithm != "EC_SIGN_ED25519")
    verify(public.pem, algorithm, signed.signature, b"payload")


def test_versions_are_numbered_per_key_and_listed(api: Kms) -> None:
    key = new_key(api, "EC_SIGN_ED25519", skip_initial=False)  # version 1 made with the key
    api.create_crypto_key_version(parent=key, crypto_key_version={})
    ring = key.rsplit("/cryptoKeys/", 1)[0]

    versions = api.list_crypto_key_versions(parent=key)
    keys = api.list_crypto_keys(parent=ring)
    rings = api.list_key_rings(parent=LOCATION)

    assert [v.name.rsplit("/", 1)[1] for v in versions] == ["1", "2"]
    assert [k.name for k in keys] == [key]
    assert ring in {r.name for r in rings}
    got = api.get_crypto_key(name=key)
    assert got.version_template.algorithm.name == "EC_SIGN_ED25519"
    assert got.version_template.protection_level.name == "HSM"


def test_disabled_version_neither_signs_nor_shows_its_key_until_enabled(api: Kms) -> None:
    key = new_key(api, "EC_SIGN_ED25519")
    name = api.create_crypto_key_version(parent=key, crypto_key_version={}).name
    mask = {"paths": ["state"]}

    disabled = api.update_crypto_key_version(
        crypto_key_version={"name": name, "state": State.DISABLED}, update_mask=mask
    )
    with pytest.raises(gexc.FailedPrecondition, match="not enabled, current state is: DISABLED"):
        api.asymmetric_sign(**sign_request(name, "EC_SIGN_ED25519", b"x"))
    with pytest.raises(gexc.FailedPrecondition, match="DISABLED"):
        api.get_public_key(name=name)
    api.update_crypto_key_version(
        crypto_key_version={"name": name, "state": State.ENABLED}, update_mask=mask
    )

    assert disabled.state == State.DISABLED
    assert api.asymmetric_sign(**sign_request(name, "EC_SIGN_ED25519", b"x")).signature


def test_new_version_is_pending_until_generated(kms: FakeKms, api: Kms) -> None:
    key = new_key(api, "EC_SIGN_P256_SHA256")
    kms.generation_delay = 0.3
    try:
        name = api.create_crypto_key_version(parent=key, crypto_key_version={}).name
        pending = api.get_crypto_key_version(name=name)
        with pytest.raises(gexc.FailedPrecondition, match="PENDING_GENERATION"):
            api.get_public_key(name=name)
        time.sleep(0.35)
        ready = api.get_crypto_key_version(name=name)
    finally:
        kms.generation_delay = 0.0

    assert pending.state == State.PENDING_GENERATION
    assert ready.state == State.ENABLED
    assert ready.generate_time.timestamp() >= pending.create_time.timestamp()


ED = "EC_SIGN_ED25519"
REFUSALS = {
    "request-data-checksum-mismatch": (
        lambda n: {"name": n, "data": b"x", "data_crc32c": crc(b"y")},
        gexc.InvalidArgument,
        "checksum in field data_crc32c",
    ),
    "ed25519-given-a-digest": (
        lambda n: {"name": n, "digest": {"sha256": bytes(32)}},
        gexc.InvalidArgument,
        "requires data",
    ),
    "data-and-digest": (
        lambda n: {"name": n, "data": b"x", "digest": {"sha256": bytes(32)}},
        gexc.InvalidArgument,
        "Only one of",
    ),
    "unknown-version": (
        lambda n: {"name": n[:-1] + "9", "data": b"x"},
        gexc.NotFound,
        "not found",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS.values()), ids=list(REFUSALS))
def test_sign_refusals(api: Kms, case: tuple[Callable[[str], Any], type, str]) -> None:
    build, error, message = case
    key = new_key(api, ED)
    name = api.create_crypto_key_version(parent=key, crypto_key_version={}).name

    with pytest.raises(error, match=message):
        api.asymmetric_sign(**build(name))


def test_p256_needs_a_sha256_digest(api: Kms) -> None:
    key = new_key(api, "EC_SIGN_P256_SHA256")
    name = api.create_crypto_key_version(parent=key, crypto_key_version={}).name

    with pytest.raises(gexc.InvalidArgument, match="SHA-256 digest of 32 bytes"):
        api.asymmetric_sign(name=name, digest={"sha256": bytes(31)})
    with pytest.raises(gexc.InvalidArgument, match="checksum in field digest_crc32c"):
        api.asymmetric_sign(name=name, digest={"sha256": bytes(32)}, digest_crc32c=1)


ADMIN_REFUSALS = {
    "ring-exists": (
        lambda api, key: api.create_key_ring(
            parent=LOCATION, key_ring_id=key.split("/")[5], key_ring={}
        ),
        gexc.AlreadyExists,
    ),
    "key-exists": (
        lambda api, key: api.create_crypto_key(
            parent=key.rsplit("/cryptoKeys/", 1)[0],
            crypto_key_id="key",
            crypto_key={"purpose": "ASYMMETRIC_SIGN", "version_template": {"algorithm": ED}},
        ),
        gexc.AlreadyExists,
    ),
    "key-in-missing-ring": (
        lambda api, key: api.create_crypto_key(
            parent=f"{LOCATION}/keyRings/missing",
            crypto_key_id="key",
            crypto_key={"purpose": "ASYMMETRIC_SIGN", "version_template": {"algorithm": ED}},
        ),
        gexc.NotFound,
    ),
    "bad-key-id": (
        lambda api, key: api.create_crypto_key(
            parent=key.rsplit("/cryptoKeys/", 1)[0],
            crypto_key_id="a.b",
            crypto_key={"purpose": "ASYMMETRIC_SIGN", "version_template": {"algorithm": ED}},
        ),
        gexc.InvalidArgument,
    ),
    "unsupported-purpose": (
        lambda api, key: api.create_crypto_key(
            parent=key.rsplit("/cryptoKeys/", 1)[0],
            crypto_key_id="enc",
            crypto_key={"purpose": "ENCRYPT_DECRYPT"},
        ),
        gexc.InvalidArgument,
    ),
    "update-other-field": (
        lambda api, key: api.update_crypto_key_version(
            crypto_key_version={"name": f"{key}/cryptoKeyVersions/1"},
            update_mask={"paths": ["algorithm"]},
        ),
        gexc.InvalidArgument,
    ),
    "version-of-missing-key": (
        lambda api, key: api.create_crypto_key_version(parent=key + "x", crypto_key_version={}),
        gexc.NotFound,
    ),
}


@pytest.mark.parametrize("case", list(ADMIN_REFUSALS.values()), ids=list(ADMIN_REFUSALS))
def test_admin_refusals(api: Kms, case: tuple[Callable[[Kms, str], Any], type]) -> None:
    call, error = case
    key = new_key(api, ED, skip_initial=False)

    with pytest.raises(error):
        call(api, key)


# --- fault switches -----------------------------------------------------------------------


def test_failures_hit_the_next_calls_of_their_method(kms: FakeKms, api: Kms) -> None:
    key = new_key(api, ED)
    name = api.create_crypto_key_version(parent=key, crypto_key_version={}).name
    kms.fail_next(grpc.StatusCode.UNAVAILABLE, 2, method="AsymmetricSign")
    kms.fail_next("RESOURCE_EXHAUSTED", 1, message="Quota exceeded for quota metric")
    before = kms.call_counts()

    read = lambda: api.get_public_key(name=name)  # noqa: E731
    sign = lambda: api.asymmetric_sign(**sign_request(name, ED, b"x"))  # noqa: E731
    outcomes = []
    for call in [read, read, sign, sign, sign, sign]:
        try:
            call()
            outcomes.append("ok")
        except gexc.GoogleAPICallError as e:
            outcomes.append(type(e).__name__)

    # Each call takes the oldest pending failure that applies to its method.
    assert outcomes == ["ResourceExhausted", "ok"] + ["ServiceUnavailable"] * 2 + ["ok"] * 2
    after = kms.call_counts()
    assert after["AsymmetricSign"] - before.get("AsymmetricSign", 0) == 4
    assert after["GetPublicKey"] - before.get("GetPublicKey", 0) == 2


def test_latency_is_cut_by_the_callers_deadline(kms: FakeKms, api: Kms) -> None:
    key = new_key(api, ED)
    name = api.create_crypto_key_version(parent=key, crypto_key_version={}).name
    kms.set_latency(3.0, method="AsymmetricSign")
    start = time.monotonic()

    with pytest.raises(gexc.DeadlineExceeded):
        api.client.asymmetric_sign(request=sign_request(name, ED, b"x"), retry=None, timeout=0.3)

    assert time.monotonic() - start < 1.5
    api.get_public_key(name=name)  # other methods are not slowed


def test_denied_permission_is_named_like_kms_does(kms: FakeKms, api: Kms) -> None:
    key = new_key(api, ED)
    name = api.create_crypto_key_version(parent=key, crypto_key_version={}).name
    kms.deny("cloudkms.cryptoKeyVersions.useToSign")

    with pytest.raises(gexc.PermissionDenied, match=re.escape(f"'{name}'")) as info:
        api.asymmetric_sign(**sign_request(name, ED, b"x"))
    kms.allow("cloudkms.cryptoKeyVersions.useToSign")

    assert "Permission 'cloudkms.cryptoKeyVersions.useToSign' denied" in str(info.value)
    assert api.asymmetric_sign(**sign_request(name, ED, b"x")).signature
    with pytest.raises(ValueError, match="unknown permission"):
        kms.deny("cloudkms.everything")


def _sign_answer(api: Kms, name: str) -> Any:
    return api.asymmetric_sign(**sign_request(name, ED, b"x"))


CORRUPTIONS: dict[Corruption, Callable[[Any, str], bool]] = {
    # Each predicate says whether an answer shows the damage.
    Corruption.SIGNATURE: lambda r, pem: (
        r.signature_crc32c == crc(r.signature) and not _verifies(pem, r.signature)
    ),
    Corruption.SIGNATURE_CRC32C: lambda r, pem: r.signature_crc32c != crc(r.signature),
    Corruption.UNVERIFIED: lambda r, pem: not r.verified_data_crc32c,
    Corruption.WRONG_NAME: lambda r, pem: not r.name.endswith("/cryptoKeyVersions/1"),
}


def _verifies(pem: str, signature: bytes) -> bool:
    try:
        verify(pem, ED, signature, b"x")
    except Exception:
        return False
    return True


@pytest.mark.parametrize("corruption", list(CORRUPTIONS), ids=lambda c: c.value)
def test_corruption_damages_exactly_the_next_answers(
    kms: FakeKms, api: Kms, corruption: Corruption
) -> None:
    key = new_key(api, ED)
    name = api.create_crypto_key_version(parent=key, crypto_key_version={}).name
    pem = api.get_public_key(name=name).pem
    damaged = CORRUPTIONS[corruption]
    kms.corrupt_next(corruption, 2)

    answers = [_sign_answer(api, name) for _ in range(3)]

    assert [damaged(a, pem) for a in answers] == [True, True, False]


def test_pem_checksum_corruption(kms: FakeKms, api: Kms) -> None:
    key = new_key(api, ED)
    name = api.create_crypto_key_version(parent=key, crypto_key_version={}).name
    kms.corrupt_next(Corruption.PEM_CRC32C)

    bad, good = api.get_public_key(name=name), api.get_public_key(name=name)

    assert bad.pem == good.pem
    assert bad.pem_crc32c != crc(bad.pem.encode())
    assert good.pem_crc32c == crc(good.pem.encode())


def test_only_loopback() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        FakeKms("0.0.0.0")


# --- as its own process -----------------------------------------------------------------------


@pytest.fixture
def fake_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tuf_signer.testing.fake_kms", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("FAKE_KMS_ADDRESS="), line
        yield process, line.split("=", 1)[1]
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


async def test_runs_as_its_own_process(fake_process: tuple[subprocess.Popen[str], str]) -> None:
    from tuf_signer.keys import GcpKmsBackend, kms_transport

    process, address = fake_process
    backend = GcpKmsBackend(
        "remote",
        project="test-project",
        location="global",
        key_ring="remote",
        transport=kms_transport(address),
        call_timeout=5,
    )
    await backend.start()
    with RemoteFakeKms(address) as remote:
        try:
            new = await backend.create(Algorithm.ED25519, "tuf-signer/remote/1/00")
            remote.fail_next(grpc.StatusCode.UNAVAILABLE, 1, method="AsymmetricSign")
            signature = await backend.sign(new.handle, Algorithm.ED25519, b"data")
            await backend.disable(new.handle)
            counts = remote.call_counts()
            state = remote.version_state(new.handle)
        finally:
            await backend.close()

    assert counts["AsymmetricSign"] == 2  # one injected failure, one retry
    assert state == "DISABLED"
    ed25519.Ed25519PublicKey.from_public_bytes(
        bytes.fromhex(new.public_key.keyval["public"])
    ).verify(signature, b"data")
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
