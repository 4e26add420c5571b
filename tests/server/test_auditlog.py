"""The transparency log's proofs over gRPC (issue 13, "Proofs"): a real server on loopback.

The server's own checkpointer is not what is under test here: checkpoints are
signed into the store by a software key (``tests/audit/_logkeys``) and the
``AuditLog`` servicer is given that key's origin and verifier key
(``proof_log``). What the RPCs hand out is verified with our verifiers and with
Go's ``sumdb`` (``gocheck_proof``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from tests.audit._logkeys import (
    ORIGIN,
    SoftwareLogKey,
    SoftwareWitness,
    build_go_proof,
    serve_log,
)
from tuf_signer.audit import (
    Consistency,
    SqliteAuditStore,
    format_consistency,
    merkle_inclusion,
    parse_consistency,
    record_leaf,
)
from tuf_signer.audit._checkpoint import open_checkpoint, parse_tlog_proof, verify_tlog_proof
from tuf_signer.audit._merkle import leaf_hash, verify_consistency
from tuf_signer.errors import ConfigError
from tuf_signer.model import Outcome
from tuf_signer.server._grpc import AuditLogServicer
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

from .conftest import ADMIN, BACKEND, Clock, Harness, TlsHarness, start_harness, stop_harness

SIGNED = 5  # timestamps 1..5: records 2..6 after the key's creation (record 1)
SIZES = (4, 6)  # the checkpoints; record 7 (a sign after them) is not covered


@pytest.fixture
def log_key() -> SoftwareLogKey:
    return SoftwareLogKey.generate()


@pytest.fixture
def proof_log(monkeypatch: pytest.MonkeyPatch, log_key: SoftwareLogKey) -> SoftwareLogKey:
    """Servers started from now on serve ``log_key``'s log on AuditLog, whatever their config."""
    serve_log(monkeypatch, log_key.key)
    return log_key


@pytest.fixture(scope="module")
def go_proof(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict[str, Any]]]:
    return build_go_proof(tmp_path_factory)


def _store(config: Any) -> SqliteAuditStore:
    return SqliteAuditStore(config.audit.path)


async def _fill(h: Harness, log_key: SoftwareLogKey) -> list[pb.SignResponse]:
    """Key ``k``, SIGNED timestamps, checkpoints of SIZES, then one more timestamp."""
    await h.create_key("k")
    signed = [await h.sign("k", h.payloads.timestamp(v)) for v in range(1, SIGNED + 1)]
    store = _store(h.config)
    try:
        for size in SIZES:
            log_key.checkpoint(store, size)
    finally:
        store.close()
    signed.append(await h.sign("k", h.payloads.timestamp(SIGNED + 1)))
    return signed


@pytest.fixture
async def logged(
    proof_log: SoftwareLogKey, config_path: Any, clock: Clock
) -> AsyncIterator[tuple[Harness, pb_grpc.AuditLogStub, list[pb.SignResponse]]]:
    h = await start_harness(config_path, clock)
    try:
        signed = await _fill(h, proof_log)
        yield h, pb_grpc.AuditLogStub(h.channel), signed
    finally:
        await stop_harness(h)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- happy paths ------------------------------------------------------------------------------


async def test_a_client_proves_its_own_signature(
    logged: tuple[Harness, pb_grpc.AuditLogStub, list[pb.SignResponse]],
    log_key: SoftwareLogKey,
    go_proof: Callable[..., list[dict[str, Any]]],
) -> None:
    h, audit, signed = logged
    payload = h.payloads.timestamp(3)
    response = signed[2]
    assert response.audit_seq == 4
    # Where is my signature? Its record, by payload digest, as the tree's leaf.
    digest = hashlib.sha256(payload).hexdigest()
    found = await audit.FindRecords(pb.FindRecordsRequest(payload_sha256=digest))
    assert [(r.seq, r.leaf) for r in found.records] == [
        (4, record_leaf(r)) for r in h.records() if r.seq == 4
    ]
    leaf = found.records[0].leaf
    assert f'"signature": "{response.signature.sig}"'.encode() in leaf
    # Its proof, against the newest checkpoint, verifies with the verifier key alone.
    proof = (await audit.ProveInclusion(pb.ProveInclusionRequest(seq=response.audit_seq))).proof
    signed_cp = verify_tlog_proof(
        parse_tlog_proof(proof),
        leaf_hash=leaf_hash(leaf),
        origin=ORIGIN,
        log_key=log_key.key,
        verify_inclusion=merkle_inclusion,
    )
    assert signed_cp.checkpoint.size == 6
    # Against the older checkpoint too; and Go's sumdb agrees on both.
    older = (await audit.ProveInclusion(pb.ProveInclusionRequest(seq=4, tree_size=4))).proof
    assert parse_tlog_proof(older).checkpoint == _store(h.config).checkpoint_at(ORIGIN, 4).note
    answers = go_proof(
        *(
            {"op": "inclusion", "proof": _b64(p), "leaf": _b64(leaf), "vkey": log_key.key.text()}
            for p in (proof, older)
        )
    )
    assert [(a.get("error"), a["index"], a["size"]) for a in answers] == [
        (None, 3, 6),
        (None, 3, 4),
    ]
    # A record it does not prove: Go says no.
    (wrong,) = go_proof(
        {
            "op": "inclusion",
            "proof": _b64(proof),
            "leaf": _b64(record_leaf(h.records()[1])),
            "vkey": log_key.key.text(),
        }
    )
    assert wrong.get("error")


async def test_checkpoints_with_their_cosignatures(
    logged: tuple[Harness, pb_grpc.AuditLogStub, list[pb.SignResponse]], log_key: SoftwareLogKey
) -> None:
    h, audit, _ = logged
    witness = SoftwareWitness.generate()
    store = _store(h.config)
    line = witness.cosign(store, ORIGIN, 6)
    store.close()
    newest = await audit.GetCheckpoint(pb.GetCheckpointRequest())
    assert (newest.size, newest.verifier_key) == (6, log_key.key.text())
    assert newest.checkpoint.endswith(line.encode() + b"\n")
    signed = open_checkpoint(
        newest.checkpoint, origin=ORIGIN, log_key=log_key.key, cosigners=[witness.key], quorum=1
    )
    assert signed.checkpoint.size == 6
    older = await audit.GetCheckpoint(pb.GetCheckpointRequest(size=4))
    assert older.size == 4
    assert (
        open_checkpoint(older.checkpoint, origin=ORIGIN, log_key=log_key.key).checkpoint.size == 4
    )


async def test_consistency_between_checkpoints(
    logged: tuple[Harness, pb_grpc.AuditLogStub, list[pb.SignResponse]],
    log_key: SoftwareLogKey,
    go_proof: Callable[..., list[dict[str, Any]]],
) -> None:
    h, audit, _ = logged
    old = (await audit.GetCheckpoint(pb.GetCheckpointRequest(size=4))).checkpoint
    proof = await audit.ProveConsistency(pb.ProveConsistencyRequest(from_size=4))
    new_root = open_checkpoint(proof.checkpoint, origin=ORIGIN, log_key=log_key.key).checkpoint
    old_root = open_checkpoint(old, origin=ORIGIN, log_key=log_key.key).checkpoint
    assert new_root.size == 6 and list(proof.hashes)
    verify_consistency(4, 6, list(proof.hashes), old_root.root_hash, new_root.root_hash)
    same = await audit.ProveConsistency(pb.ProveConsistencyRequest(from_size=4, to_size=6))
    assert same == proof
    text = format_consistency(Consistency(tuple(proof.hashes), proof.checkpoint))
    assert parse_consistency(text) == (tuple(proof.hashes), proof.checkpoint)
    (answer,) = go_proof(
        {"op": "consistency", "proof": _b64(text), "old": _b64(old), "vkey": log_key.key.text()}
    )
    assert (answer.get("error"), answer["old_size"], answer["size"]) == (None, 4, 6)
    # From a size that is no checkpoint (the caller's own): fine, to the newest.
    three = await audit.ProveConsistency(pb.ProveConsistencyRequest(from_size=3))
    verify_consistency(3, 6, list(three.hashes), _store(h.config).tree_hash(3), new_root.root_hash)


async def test_find_records_answers_at_most_100_oldest_first(
    proof_log: SoftwareLogKey, config_path: Any, clock: Clock
) -> None:
    h = await start_harness(config_path, clock)
    try:
        await h.create_key("k")
        payload = h.payloads.timestamp(1)
        for _ in range(103):  # the same payload again: replays, all on the record
            await h.sign("k", payload)
        found = await pb_grpc.AuditLogStub(h.channel).FindRecords(
            pb.FindRecordsRequest(payload_sha256=hashlib.sha256(payload).hexdigest())
        )
        assert [r.seq for r in found.records] == list(range(2, 102))
        none = await pb_grpc.AuditLogStub(h.channel).FindRecords(
            pb.FindRecordsRequest(payload_sha256="0" * 64)
        )
        assert list(none.records) == []
    finally:
        await stop_harness(h)


# --- bad requests: a status and a reason, and on the record ------------------------------------

C = grpc.StatusCode
BAD = {
    "seq-0": (
        "ProveInclusion", pb.ProveInclusionRequest(), C.INVALID_ARGUMENT,
        "^seq must be between 1 and 2\\*\\*63-1, got 0$",
    ),
    "seq-2^64-1": (
        "ProveInclusion", pb.ProveInclusionRequest(seq=2**64 - 1), C.INVALID_ARGUMENT,
        "between 1 and 2\\*\\*63-1",
    ),
    "seq-not-yet-covered": (
        "ProveInclusion",
        pb.ProveInclusionRequest(seq=7),
        C.FAILED_PRECONDITION,
        r"^record 7 is not covered by a checkpoint yet \(the newest covers 6\); "
        r"retry after audit.checkpoint_interval_seconds$",
    ),
    "seq-beyond-the-log": (
        "ProveInclusion", pb.ProveInclusionRequest(seq=8), C.OUT_OF_RANGE, "beyond the log's 7",
    ),
    "seq-above-the-size": (
        "ProveInclusion", pb.ProveInclusionRequest(seq=5, tree_size=4), C.OUT_OF_RANGE,
        "record 5 is not in the tree of size 4",
    ),
    "size-not-a-checkpoint": (
        "ProveInclusion", pb.ProveInclusionRequest(seq=1, tree_size=5), C.NOT_FOUND,
        r"no checkpoint of tree size 5 is stored \(the newest is of size 6",
    ),
    "size-beyond-the-log": (
        "ProveInclusion", pb.ProveInclusionRequest(seq=1, tree_size=99), C.OUT_OF_RANGE,
        "tree size 99 is beyond the log's 7 records",
    ),
    "from-0": (
        "ProveConsistency", pb.ProveConsistencyRequest(to_size=6), C.INVALID_ARGUMENT,
        "from size must be between 1",
    ),
    "from-above-to": (
        "ProveConsistency", pb.ProveConsistencyRequest(from_size=6, to_size=4),
        C.INVALID_ARGUMENT, "from size 6 is above to size 4",
    ),
    "from-not-yet-covered": (
        "ProveConsistency", pb.ProveConsistencyRequest(from_size=7), C.FAILED_PRECONDITION,
        r"tree size 7 is not covered by a checkpoint yet \(the newest is of size 6\); retry",
    ),
    "from-beyond-the-log": (
        "ProveConsistency", pb.ProveConsistencyRequest(from_size=8), C.OUT_OF_RANGE,
        "tree size 8 is beyond the log's 7 records",
    ),
    "to-beyond-the-log": (
        "ProveConsistency", pb.ProveConsistencyRequest(from_size=1, to_size=99), C.OUT_OF_RANGE,
        "beyond the log",
    ),
    "checkpoint-not-stored": (
        "GetCheckpoint", pb.GetCheckpointRequest(size=5), C.NOT_FOUND,
        "no checkpoint of tree size 5",
    ),
    "checkpoint-beyond-the-log": (
        "GetCheckpoint", pb.GetCheckpointRequest(size=99), C.OUT_OF_RANGE, "beyond the log",
    ),
    "digest-empty": (
        "FindRecords", pb.FindRecordsRequest(), C.INVALID_ARGUMENT, "is not 64 lowercase hex",
    ),
    "digest-uppercase": (
        "FindRecords", pb.FindRecordsRequest(payload_sha256="AB" * 32), C.INVALID_ARGUMENT,
        r"^payload_sha256 'ABAB[AB]*'\.\.\. is not 64 lowercase hex digits \(a SHA-256\)$",
    ),
    "digest-escape": (
        "FindRecords", pb.FindRecordsRequest(payload_sha256="\x1b[2J" + "a" * 60),
        C.INVALID_ARGUMENT, r"'\\x1b\[2Ja+'\.\.\. is not 64",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("method", "request_", "status", "reason"), BAD.values(), ids=BAD.keys())
async def test_bad_requests_are_refused_and_recorded(
    logged: tuple[Harness, pb_grpc.AuditLogStub, list[pb.SignResponse]],
    method: str,
    request_: Any,
    status: grpc.StatusCode,
    reason: str,
) -> None:
    h, audit, _ = logged
    before = len(h.records())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(audit, method)(request_)
    assert caught.value.code() == status
    assert caught.value.details() is not None
    assert re.search(reason, caught.value.details()), caught.value.details()
    (record,) = h.records()[before:]
    event = record.event
    assert (event.operation, event.outcome, event.status) == (
        "read-audit",
        Outcome.REFUSED,
        status.name,
    )
    assert event.reason == caught.value.details()


async def test_granted_reads_are_not_recorded(
    logged: tuple[Harness, pb_grpc.AuditLogStub, list[pb.SignResponse]],
) -> None:
    h, audit, _ = logged
    before = len(h.records())
    await audit.GetCheckpoint(pb.GetCheckpointRequest())
    await audit.ProveInclusion(pb.ProveInclusionRequest(seq=1))
    await audit.ProveConsistency(pb.ProveConsistencyRequest(from_size=1))
    await audit.FindRecords(pb.FindRecordsRequest(payload_sha256="0" * 64))
    assert len(h.records()) == before


async def test_a_store_that_does_not_match_its_checkpoint_gives_no_proof(
    logged: tuple[Harness, pb_grpc.AuditLogStub, list[pb.SignResponse]],
) -> None:
    h, audit, _ = logged
    # The newest checkpoint is signed by another key (a replaced audit key, a forged row).
    store = _store(h.config)
    SoftwareLogKey.generate().checkpoint(store, 7)
    store.close()
    for call in (
        audit.GetCheckpoint(pb.GetCheckpointRequest()),
        audit.ProveInclusion(pb.ProveInclusionRequest(seq=1)),
        audit.ProveConsistency(pb.ProveConsistencyRequest(from_size=1)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == C.DATA_LOSS
        assert "checkpoint of tree size 7 does not match the store" in str(caught.value.details())
    # The checkpoints the audit key signed still prove what they cover.
    assert (await audit.ProveInclusion(pb.ProveInclusionRequest(seq=1, tree_size=6))).proof


# --- the log off, and who may ask ----------------------------------------------------------------


async def test_with_the_log_off_proofs_say_so(harness: Harness) -> None:
    await harness.create_key("k")
    await harness.sign("k", harness.payloads.timestamp(1))
    audit = pb_grpc.AuditLogStub(harness.channel)
    for call in (
        audit.GetCheckpoint(pb.GetCheckpointRequest()),
        audit.ProveInclusion(pb.ProveInclusionRequest(seq=1)),
        audit.ProveConsistency(pb.ProveConsistencyRequest(from_size=1)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == C.FAILED_PRECONDITION
        assert "the transparency log is off on this server" in str(caught.value.details())
    # Records by digest need no checkpoint.
    digest = hashlib.sha256(harness.payloads.timestamp(1)).hexdigest()
    found = await audit.FindRecords(pb.FindRecordsRequest(payload_sha256=digest))
    assert [r.seq for r in found.records] == [2]


@pytest.fixture
async def tls_logged(proof_log: SoftwareLogKey, tls_harness: TlsHarness) -> TlsHarness:
    """The mutual-TLS harness (key ``k``), serving ``proof_log``, with a checkpoint.

    ``proof_log`` comes first: pytest sets a fixture's arguments up in order.
    """
    h = tls_harness
    await h.signer("backend").Sign(pb.SignRequest(key="k", payload=h.payloads.timestamp(1)))
    store = SqliteAuditStore(h.server.config.audit.path)
    proof_log.checkpoint(store)
    store.close()
    return h


CALLS = {
    "GetCheckpoint": pb.GetCheckpointRequest(),
    "ProveInclusion": pb.ProveInclusionRequest(seq=1),
    "ProveConsistency": pb.ProveConsistencyRequest(from_size=1),
    "FindRecords": pb.FindRecordsRequest(payload_sha256="0" * 64),
}


@pytest.mark.parametrize("method", CALLS)
async def test_only_read_audit_callers_get_proofs(tls_logged: TlsHarness, method: str) -> None:
    h = tls_logged
    await getattr(h.audit("admin"), method)(CALLS[method])  # ADMIN may read-audit
    before = len(h.records())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(h.audit("backend"), method)(CALLS[method])
    assert caught.value.code() == C.PERMISSION_DENIED
    assert BACKEND in str(caught.value.details()) and "read-audit" in str(caught.value.details())
    (record,) = h.records()[before:]
    assert (record.event.identity, record.event.outcome) == (BACKEND, Outcome.REFUSED)
    assert ADMIN not in record.event.identity


@pytest.mark.parametrize(
    ("origin", "vkey", "match"),
    [
        pytest.param(ORIGIN, None, "needs both", id="origin-only"),
        pytest.param(None, "x", "needs both", id="key-only"),
        pytest.param(ORIGIN, "not a key", "does not parse", id="malformed"),
        pytest.param("other.test/log", None, "named 'other.test/log'", id="other-origin"),
    ],
)
def test_the_servicer_refuses_a_key_that_is_not_the_logs(
    log_key: SoftwareLogKey, origin: str | None, vkey: str | None, match: str
) -> None:
    if origin == "other.test/log":
        vkey = log_key.key.text()
    with pytest.raises(ConfigError, match=match):
        AuditLogServicer(object(), origin=origin, verifier_key=vkey)  # type: ignore[arg-type]
