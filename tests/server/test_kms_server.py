"""A real tuf-signer serving a Cloud KMS backend (the fake KMS) next to SoftHSM.

The server config is the one of conftest.py plus a ``[backends.kms]`` of type
``gcpkms`` pointing at the fake KMS, so every test here runs both backends in
one server. KMS faults go through the whole Sign path: status, reason and the
audit record.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from securesystemslib.signer import Signature, SSlibKey

from tuf_signer.audit import SqliteAuditStore, verify_store
from tuf_signer.model import Outcome
from tuf_signer.testing.fake_kms import Corruption, FakeKms
from tuf_signer.v1 import signer_pb2 as pb

from .conftest import TEST_BINS, TEST_ROLES, Harness, bin_role, write_config, write_kms_config

CALL_TIMEOUT = 2.0  # seconds: backends.kms.call_timeout in these tests
ROLES = TEST_ROLES  # timestamp, snapshot and the declared TEST_BINS


@pytest.fixture
def config_path(tmp_path: Path, softhsm: Any, kms: FakeKms) -> Path:
    """conftest's server config (SoftHSM) plus a KMS backend in a key ring of its own."""
    return write_kms_config(tmp_path / "signer", softhsm, kms.address, CALL_TIMEOUT)


async def create_key(
    h: Harness, name: str, algorithm: int = pb.ED25519, backend: str = "kms"
) -> pb.KeyVersionInfo:
    r = await h.admin.CreateKey(
        pb.CreateKeyRequest(
            name=name,
            algorithm=algorithm,
            backend=backend,
            roles=[pb.RoleRule(pattern=p, max_validity_seconds=s) for p, s in ROLES],
            activate=True,
            bins=pb.BinsDelegation(prefix=TEST_BINS.prefix, bit_length=TEST_BINS.bit_length),
        )
    )
    assert r.key.backend == backend
    (version,) = r.key.versions
    return version


def public_key(info: pb.KeyVersionInfo) -> SSlibKey:
    return SSlibKey.from_dict(info.keyid, json.loads(info.public_key_json))


def verify(info: pb.KeyVersionInfo, resp: pb.SignResponse, payload: bytes) -> None:
    """Raises unless the signature verifies with securesystemslib under ``info``'s key."""
    assert resp.signature.keyid == info.keyid
    public_key(info).verify_signature(Signature(resp.signature.keyid, resp.signature.sig), payload)


def sign_calls(kms: FakeKms) -> int:
    return kms.call_counts().get("AsymmetricSign", 0)


@pytest.mark.parametrize(
    ("algorithm", "scheme"),
    [
        (pb.ED25519, "ed25519"),
        (pb.ECDSA_P256, "ecdsa-sha2-nistp256"),
        (pb.RSA_3072_PSS, "rsassa-pss-sha256"),
    ],
    ids=["ed25519", "ecdsa-p256", "rsa-3072-pss"],
)
async def test_sign_and_verify_each_algorithm_through_kms(
    harness: Harness, kms: FakeKms, algorithm: int, scheme: str
) -> None:
    v1 = await create_key(harness, "k", algorithm)
    assert json.loads(v1.public_key_json)["scheme"] == scheme
    before = sign_calls(kms)

    for role, payload in [
        ("", harness.payloads.timestamp(1)),
        ("", harness.payloads.snapshot(1)),
        ("bins-07", harness.payloads.targets(1, role="bins-07")),
    ]:
        verify(v1, await harness.sign("k", payload, role=role), payload)

    assert sign_calls(kms) - before == 3
    signs = [r.event for r in harness.records() if r.event.operation == "sign"]
    assert [(e.outcome, e.key_version) for e in signs] == [(Outcome.GRANTED, 1)] * 3


async def test_kms_and_softhsm_keys_served_at_once(harness: Harness, kms: FakeKms) -> None:
    keys = {
        "in-kms": await create_key(harness, "in-kms", backend="kms"),
        "in-hsm": await create_key(harness, "in-hsm", backend="softhsm"),
        "ec-in-kms": await create_key(harness, "ec-in-kms", pb.ECDSA_P256, backend="kms"),
    }
    before = sign_calls(kms)
    jobs = [
        (name, bin_role(i), harness.payloads.targets(1, salt=f"{name}{i}", role=bin_role(i)))
        for name in keys
        for i in range(30)
    ]

    results = await asyncio.gather(*(harness.sign(k, p, role=r) for k, r, p in jobs))

    for (name, _, payload), resp in zip(jobs, results, strict=True):
        verify(keys[name], resp, payload)
    assert sign_calls(kms) - before == 60  # the SoftHSM key never reaches KMS
    listed = (await harness.signer.GetPublicKeys(pb.GetPublicKeysRequest())).keys
    assert {k.name: k.backend for k in listed} == {
        "in-kms": "kms",
        "in-hsm": "softhsm",
        "ec-in-kms": "kms",
    }
    store = SqliteAuditStore(harness.config.audit.path)
    try:
        assert verify_store(store).records == len(harness.records())
    finally:
        store.close()


# --- KMS faults through the whole Sign path ------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One KMS misbehaviour and what the Sign caller must see.

    Attributes:
        arrange: switches the fault on.
        code: the gRPC status of the Sign; OK when it must still succeed.
        match: a substring of the reason (refusals only).
        kms_signs: AsymmetricSign calls the one Sign may make.
    """

    arrange: Callable[[FakeKms], None]
    code: grpc.StatusCode
    match: str
    kms_signs: range


OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
FAULTS = {
    "checksum-mismatch-once-is-retried": Fault(
        lambda k: k.corrupt_next(Corruption.SIGNATURE_CRC32C, 1), OK, "", range(2, 3)
    ),
    "checksum-mismatch-retried-then-refused": Fault(
        lambda k: k.corrupt_next(Corruption.SIGNATURE_CRC32C, 3),
        UNAVAILABLE,
        "failed integrity checks 3 time(s): signature_crc32c does not match",
        range(3, 4),
    ),
    "request-checksum-not-verified": Fault(
        lambda k: k.corrupt_next(Corruption.UNVERIFIED, 3),
        UNAVAILABLE,
        "did not verify the request's data_crc32c",
        range(3, 4),
    ),
    "corrupted-signature-once-is-replaced": Fault(
        lambda k: k.corrupt_next(Corruption.SIGNATURE, 1), OK, "", range(2, 3)
    ),
    "corrupted-signature-never-returned": Fault(
        lambda k: k.corrupt_next(Corruption.SIGNATURE, 3),
        UNAVAILABLE,
        "does not verify against the public key",
        range(3, 4),
    ),
    "unavailable-then-success": Fault(
        lambda k: k.fail_next(UNAVAILABLE, 2, method="AsymmetricSign"), OK, "", range(3, 4)
    ),
    "deadline-exceeded-then-success": Fault(
        lambda k: k.fail_next("DEADLINE_EXCEEDED", 1, method="AsymmetricSign"), OK, "", range(2, 3)
    ),
    "unavailable-past-the-budget": Fault(
        lambda k: k.fail_next(UNAVAILABLE, 10_000, method="AsymmetricSign"),
        UNAVAILABLE,
        "Cloud KMS unavailable: AsymmetricSign",
        range(3, 30),
    ),
    "kms-hangs": Fault(
        lambda k: k.set_latency(30.0, method="AsymmetricSign"),
        UNAVAILABLE,
        "Cloud KMS unavailable: AsymmetricSign",
        range(1, 2),
    ),
    "quota-exhausted": Fault(
        lambda k: k.fail_next("RESOURCE_EXHAUSTED", 1, message="Quota exceeded for metric"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Cloud KMS quota exhausted for AsymmetricSign",
        range(1, 2),
    ),
    "permission-denied": Fault(
        lambda k: k.deny("cloudkms.cryptoKeyVersions.useToSign"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "grant IAM permission cloudkms.cryptoKeyVersions.useToSign",
        range(1, 2),
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
async def test_kms_fault_gives_its_status_and_is_on_the_record(
    harness: Harness, kms: FakeKms, fault: Fault
) -> None:
    v1 = await create_key(harness, "k")
    await harness.sign("k", harness.payloads.timestamp(1))  # the public key is now cached
    payload = harness.payloads.timestamp(2)
    fault.arrange(kms)
    before = sign_calls(kms)
    start = time.monotonic()

    try:
        resp: pb.SignResponse | None = await harness.sign("k", payload)
        code, details = OK, ""
    except grpc.aio.AioRpcError as e:
        resp, code, details = None, e.code(), e.details() or ""

    elapsed = time.monotonic() - start
    kms.reset_faults()
    assert (code, fault.match in details) == (fault.code, True), details
    assert elapsed < CALL_TIMEOUT + 1.0, "nothing waits past the KMS call budget"
    assert sign_calls(kms) - before in fault.kms_signs
    event = harness.records()[-1].event
    assert (event.operation, event.metadata_version, event.key_version) == ("sign", 2, 1)
    assert event.status == code.name
    if resp is not None:
        verify(v1, resp, payload)
        assert event.outcome is Outcome.GRANTED
        assert event.signature == resp.signature.sig
    else:
        assert event.outcome is Outcome.REFUSED
        assert event.reason == details
        assert event.signature == "", "a refusal carries no signature"
        # Nothing was lost: once KMS behaves, the same request is signed.
        verify(v1, await harness.sign("k", payload), payload)


# --- rotation on KMS ----------------------------------------------------------------------------


async def test_rotation_on_kms_pins_versions_and_disables_retired_ones(
    harness: Harness, kms: FakeKms, restart: Callable[[Harness], Any]
) -> None:
    v1 = await create_key(harness, "k")
    rotated = (await harness.admin.RotateKey(pb.RotateKeyRequest(key="k"))).version
    v1_handle, v2_handle = kms.version_names()[-2:]
    crypto_key = v1_handle.rsplit("/cryptoKeyVersions/", 1)[0]

    # One crypto key, one KMS version per key version; v2 is ENABLED in KMS
    # but PENDING here, so v1 still signs: the service pins the version.
    assert kms.version_names(crypto_key) == [v1_handle, v2_handle]
    assert kms.version_state(v2_handle) == "ENABLED"
    payload = harness.payloads.timestamp(1)
    verify(v1, await harness.sign("k", payload), payload)

    await harness.admin.ActivateKeyVersion(
        pb.ActivateKeyVersionRequest(key="k", version=2, expected_keyid=rotated.keyid)
    )
    payload = harness.payloads.timestamp(2)
    verify(rotated, await harness.sign("k", payload, keyid=rotated.keyid), payload)

    # A rotation abandoned before activation: RetireKeyVersion disables it in KMS.
    v3 = (await harness.admin.RotateKey(pb.RotateKeyRequest(key="k"))).version
    v3_handle = kms.version_names(crypto_key)[-1]
    await harness.admin.RetireKeyVersion(pb.RetireKeyVersionRequest(key="k", version=3))
    assert kms.version_state(v3_handle) == "DISABLED"
    listed = (await harness.signer.GetPublicKeys(pb.GetPublicKeysRequest(key="k"))).keys[0]
    assert {v.version: v.state for v in listed.versions} == {
        1: pb.RETIRED,
        2: pb.ACTIVE,
        3: pb.RETIRED,
    }

    # After a restart (empty public-key cache) the keys and signing are unchanged,
    # and the disabled version's public key is still published (from the registry).
    h2 = await restart(harness)
    relisted = (await h2.signer.GetPublicKeys(pb.GetPublicKeysRequest(key="k"))).keys[0]
    assert [v.public_key_json for v in relisted.versions] == [
        v.public_key_json for v in listed.versions
    ]
    assert relisted.versions[2].keyid == v3.keyid
    payload = h2.payloads.timestamp(3)
    verify(rotated, await h2.sign("k", payload), payload)


async def test_a_credentials_file_others_can_read_stops_the_server(
    tmp_path: Path, softhsm: Any, clock: Any
) -> None:
    from tuf_signer.config import load_config
    from tuf_signer.errors import ConfigError
    from tuf_signer.server import SignerServer

    path = write_config(tmp_path / "signer", softhsm)
    (path.parent / "sa.json").write_text("{}")
    (path.parent / "sa.json").chmod(0o644)
    with path.open("a") as config:
        config.write(
            """
[backends.kms]
type = "gcpkms"
project = "test-project"
location = "global"
key_ring = "r"
endpoint = "kms.invalid:443"
credentials_file = "sa.json"
"""
        )
    server = SignerServer(load_config(path), clock=clock)

    with pytest.raises(ConfigError, match=r"backends\.kms\.credentials_file: .*chmod 600"):
        await server.start()
