"""Every signature is checked against the registered public key (issue 10, finding 10).

A backend's answer is verified in the service, the same way for every backend,
before it is recorded or returned: a mismatch is UNAVAILABLE, on the record as
a refusal without the signature, logged at ERROR, and the role state does not
move. Two faulty backends: a (fake) Cloud KMS that serves another key under a
version's name, and the real PKCS#11 backend on SoftHSM wrapped to flip a bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from securesystemslib.signer import Signature, SSlibKey

from tuf_signer.audit import AuditRecord, SqliteAuditStore, verify_store
from tuf_signer.errors import BackendError
from tuf_signer.keys import Pkcs11Backend, SignatureVerifier
from tuf_signer.model import Algorithm, KeyState, KeyVersion, Outcome
from tuf_signer.server import _wiring
from tuf_signer.testing.fake_kms import FakeKms
from tuf_signer.v1 import signer_pb2 as pb

from .conftest import Clock, Harness, start_harness, stop_harness, write_kms_config

ROLES = [("timestamp", 86400), ("snapshot", 86400)]
MISMATCH = (
    r"^backend '{backend}' returned a signature that does not verify against the registered "
    r"public key of key 'k' version 1$"
)
ALGORITHMS = [
    pytest.param(pb.ED25519, Algorithm.ED25519, id="ed25519"),
    pytest.param(pb.ECDSA_P256, Algorithm.ECDSA_P256, id="ecdsa-p256"),
    pytest.param(pb.RSA_3072_PSS, Algorithm.RSA_3072_PSS, id="rsa-3072-pss"),
]


async def _create(h: Harness, algorithm: int = pb.ED25519, backend: str = "") -> pb.KeyVersionInfo:
    r = await h.admin.CreateKey(
        pb.CreateKeyRequest(
            name="k",
            algorithm=algorithm,
            backend=backend,
            roles=[pb.RoleRule(pattern=p, max_validity_seconds=s) for p, s in ROLES],
            activate=True,
        )
    )
    (version,) = r.key.versions
    return version


def _key_version(info: pb.KeyVersionInfo) -> KeyVersion:
    return KeyVersion(
        key_name=info.key,
        version=info.version,
        state=KeyState.ACTIVE,
        keyid=info.keyid,
        public_key=json.loads(info.public_key_json),
        handle="",
        created_at="",
    )


def _last_sign(records: Sequence[AuditRecord]) -> AuditRecord:
    return [r for r in records if r.event.operation == "sign"][-1]


def _assert_refused_on_record(h: Harness, backend: str, version: int = 1) -> None:
    record = _last_sign(h.records())
    event = record.event
    assert (event.outcome, event.status, event.signature) == (Outcome.REFUSED, "UNAVAILABLE", "")
    assert re.fullmatch(MISMATCH.format(backend=backend)[1:-1], event.reason), event.reason
    assert event.metadata_version == version
    with SqliteAuditStore(h.config.audit.path) as store:
        verify_store(store)


async def _role_states(h: Harness) -> list[tuple[str, int]]:
    r = await h.signer.GetRoleState(pb.GetRoleStateRequest(key="k"))
    return [(s.role, s.version) for s in r.states]


# --- agreement with securesystemslib, on each backend's real signatures ---------------


@pytest.mark.parametrize(("algorithm", "model"), ALGORITHMS)
async def test_f10_real_signatures_pass_securesystemslib_and_ours(
    harness: Harness, algorithm: int, model: Algorithm
) -> None:
    info = await _create(harness, algorithm, backend="softhsm")
    payload = harness.payloads.timestamp(1)
    resp = await harness.sign("k", payload)
    sig = bytes.fromhex(resp.signature.sig)
    public = SSlibKey.from_dict(info.keyid, json.loads(info.public_key_json))
    public.verify_signature(Signature(info.keyid, sig.hex()), payload)  # raises if not
    verifier = SignatureVerifier()
    digest = hashlib.sha256(payload).digest()
    verifier.verify("softhsm", _key_version(info), model, sig, payload, digest)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(BackendError, match="does not verify"):
        verifier.verify("softhsm", _key_version(info), model, flipped, payload, digest)


# --- a PKCS#11 backend (real SoftHSM) that corrupts some signatures ----------------------


class FlippingPkcs11Backend(Pkcs11Backend):
    """The real backend, but a bit of the signature of chosen payloads is flipped."""

    corrupt: ClassVar[set[str]] = set()  # SHA-256 hex of the payloads to corrupt

    async def sign_batch(
        self,
        items: Sequence[tuple[str, Algorithm, bytes]],
        digests: Sequence[bytes] | None = None,
    ) -> list[bytes | BackendError]:
        results = await super().sign_batch(items, digests)
        out: list[bytes | BackendError] = []
        for (_, _, data), result in zip(items, results, strict=True):
            if isinstance(result, bytes) and hashlib.sha256(data).hexdigest() in self.corrupt:
                result = result[:-1] + bytes([result[-1] ^ 0x80])
            out.append(result)
        return out


@pytest.fixture
def flipping(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    monkeypatch.setattr(_wiring, "Pkcs11Backend", FlippingPkcs11Backend)
    FlippingPkcs11Backend.corrupt = set()
    yield FlippingPkcs11Backend.corrupt
    FlippingPkcs11Backend.corrupt = set()


@pytest.fixture
async def flipping_harness(
    flipping: set[str], config_path: Path, clock: Clock
) -> AsyncIterator[Harness]:
    h = await start_harness(config_path, clock)
    try:
        yield h
    finally:
        await stop_harness(h)


@pytest.mark.parametrize(
    "algorithm", [p.values[0] for p in ALGORITHMS], ids=[p.id for p in ALGORITHMS]
)
async def test_f10_pkcs11_corrupted_signature_refused_in_sign(
    flipping_harness: Harness,
    flipping: set[str],
    algorithm: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = flipping_harness
    await _create(h, algorithm)
    payload = h.payloads.timestamp(1)
    flipping.add(hashlib.sha256(payload).hexdigest())
    with (
        caplog.at_level(logging.ERROR),
        pytest.raises(grpc.aio.AioRpcError) as refused,
    ):
        await h.sign("k", payload)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert re.fullmatch(MISMATCH.format(backend="softhsm")[1:-1], refused.value.details() or "")
    assert any(
        r.levelno == logging.ERROR and "does not verify" in r.getMessage() for r in caplog.records
    )
    _assert_refused_on_record(h, "softhsm")
    assert await _role_states(h) == []  # the role state did not move
    # The same payload, signed right this time, is granted: nothing was consumed.
    flipping.clear()
    granted = await h.sign("k", payload)
    assert granted.metadata_version == 1 and not granted.replayed
    assert await _role_states(h) == [("timestamp", 1)]


async def test_f10_pkcs11_corrupted_signature_refused_in_batch(
    flipping_harness: Harness, flipping: set[str]
) -> None:
    h = flipping_harness
    info = await _create(h)
    good, bad = h.payloads.timestamp(1), h.payloads.snapshot(1)
    flipping.add(hashlib.sha256(bad).hexdigest())
    response = await h.signer.SignBatch(
        pb.SignBatchRequest(
            requests=[pb.SignRequest(key="k", payload=good), pb.SignRequest(key="k", payload=bad)]
        )
    )
    ok, refused = response.results
    assert ok.code == 0
    public = SSlibKey.from_dict(info.keyid, json.loads(info.public_key_json))
    public.verify_signature(Signature(info.keyid, ok.response.signature.sig), good)
    assert (refused.status, refused.response.signature.sig) == ("UNAVAILABLE", "")
    assert re.fullmatch(MISMATCH.format(backend="softhsm")[1:-1], refused.reason)
    _assert_refused_on_record(h, "softhsm")
    assert await _role_states(h) == [("timestamp", 1)]  # snapshot did not move


# --- a Cloud KMS that serves another key under the version's name -----------------------


@pytest.fixture
def kms_config_path(tmp_path: Path, softhsm: Any, kms: FakeKms) -> Path:
    return write_kms_config(tmp_path / "signer", softhsm, kms.address, 2.0)


@pytest.mark.parametrize(
    "algorithm", [p.values[0] for p in ALGORITHMS], ids=[p.id for p in ALGORITHMS]
)
async def test_f10_kms_serving_another_key_is_refused(
    kms_config_path: Path, clock: Clock, kms: FakeKms, algorithm: int
) -> None:
    h = await start_harness(kms_config_path, clock)
    try:
        await _create(h, algorithm, backend="kms")
        version_name = kms.version_names()[-1]  # the one just created
    finally:
        await stop_harness(h)
    # KMS now answers with another key pair under the same version name; a
    # fresh server (no cached public key) gets answers that agree with
    # themselves, so only the registered key can tell.
    kms.swap_key(version_name)
    h = await start_harness(kms_config_path, clock)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await h.sign("k", h.payloads.timestamp(1))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert re.fullmatch(MISMATCH.format(backend="kms")[1:-1], refused.value.details() or "")
        _assert_refused_on_record(h, "kms")
        assert await _role_states(h) == []
    finally:
        await stop_harness(h)
