"""The transparency log at run time (issue 13): checkpoints, witness, fail-closed, self-check.

A real signer (in process, real SoftHSM and SQLite) and a real witness process
(`tuf-signer witness serve`) over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import free_port
from tests.witnesses import ORIGIN, SOON, WITNESS, WitnessProcess, audit_key, set_log
from tuf_signer.audit import Entry, SqliteAuditStore, record_leaf
from tuf_signer.audit._checkpoint import open_checkpoint, parse_tlog_proof, verify_tlog_proof
from tuf_signer.audit._merkle import leaf_hash
from tuf_signer.audit._note import parse_verifier_key
from tuf_signer.audit._proofs import merkle_inclusion
from tuf_signer.errors import ConfigError
from tuf_signer.server._log import WITNESS_HEALTH
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc
from tuf_signer.witness import create_witness

from .conftest import Clock, Harness, start_harness, stop_harness, write_config


@dataclass
class Setup:
    config: Path
    witness: WitnessProcess
    log_vkey: str


@pytest.fixture
async def setup(tmp_path: Path, softhsm: Any) -> AsyncIterator[Setup]:
    handle, log_vkey = await audit_key(softhsm)
    port = free_port()
    witness_config, witness_vkey = create_witness(
        tmp_path / "witness", WITNESS, f"127.0.0.1:{port}", [(ORIGIN, log_vkey)]
    )
    witness = WitnessProcess(witness_config, port, witness_vkey)
    config = write_config(tmp_path / "signer", softhsm)
    set_log(config, handle, witness, "checkpoint_interval_seconds = 0.2\n")
    witness.start()
    try:
        yield Setup(config, witness, log_vkey)
    finally:
        witness.stop()


def _with(config: Path, line: str) -> None:
    text = config.read_text()
    config.write_text(text.replace('origin = "', line + '\norigin = "', 1))


async def _until(condition: Callable[[], Any], what: str) -> Any:
    """Poll ``condition`` (a function, or one returning an awaitable) until it is truthy."""
    end = time.monotonic() + SOON
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < end, f"{what}: not within {SOON:g} s"
        await asyncio.sleep(0.05)


def _witnessed_size(h: Harness) -> int:
    store = SqliteAuditStore(h.config.audit.path)
    try:
        newest = store.latest_witnessed(ORIGIN)
        return 0 if newest is None else newest.size
    finally:
        store.close()


async def _health(h: Harness, service: str = "") -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(h.channel)
    r = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


async def test_checkpoints_are_signed_cosigned_and_verify(setup: Setup, clock: Clock) -> None:
    h = await start_harness(setup.config, clock)
    try:
        await h.create_key("k")
        for version in (1, 2, 3):
            await h.sign("k", h.payloads.timestamp(version))
        size = len(h.records())
        await _until(lambda: _witnessed_size(h) >= size, "the witness cosigned every record")
        store = SqliteAuditStore(h.config.audit.path)
        try:
            stored = store.latest_witnessed(ORIGIN)
            assert stored is not None
            signed = open_checkpoint(
                stored.note,
                origin=ORIGIN,
                log_key=parse_verifier_key(setup.log_vkey),
                cosigners=[parse_verifier_key(setup.witness.vkey)],
                quorum=1,
            )
            assert signed.checkpoint.root_hash == store.tree_hash(stored.size)
        finally:
            store.close()
        assert h.server.log is not None and h.server.log.key.text() == setup.log_vkey
        assert await _health(h, WITNESS_HEALTH) == "SERVING"
        # The running server answers proofs of its own records, with that checkpoint.
        audit = pb_grpc.AuditLogStub(h.channel)
        got = await audit.GetCheckpoint(pb.GetCheckpointRequest())
        assert got.verifier_key == setup.log_vkey
        seq = h.records()[-1].seq
        await _until(lambda: _witnessed_size(h) >= seq, "the last record cosigned")
        await h.server.log.tick()
        proof = parse_tlog_proof(
            (await audit.ProveInclusion(pb.ProveInclusionRequest(seq=seq))).proof
        )
        verify_tlog_proof(
            proof,
            leaf_hash=leaf_hash(record_leaf(h.records()[seq - 1])),
            origin=ORIGIN,
            log_key=parse_verifier_key(setup.log_vkey),
            verify_inclusion=merkle_inclusion,
            cosigners=[parse_verifier_key(setup.witness.vkey)],
            quorum=1,
        )
    finally:
        await stop_harness(h)


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ("max_unwitnessed_records = 4", "audit.max_unwitnessed_records = 4"),
        (
            "max_unwitnessed_seconds = 2\nwitness_timeout_seconds = 1",
            "audit.max_unwitnessed_seconds = 2",
        ),
    ],
)
async def test_signing_stops_at_max_unwitnessed_and_resumes(
    setup: Setup, clock: Clock, setting: str, reason: str
) -> None:
    """Before: nothing tied signing to the log being witnessed."""
    _with(setup.config, setting)
    h = await start_harness(setup.config, clock)
    try:
        await h.create_key("k")
        await h.sign("k", h.payloads.timestamp(1))
        await _until(lambda: _witnessed_size(h) == len(h.records()), "first cosignature")
        setup.witness.stop()
        version, refused = 1, None
        end = time.monotonic() + SOON
        while refused is None:
            assert time.monotonic() < end, "signing never stopped with the witness away"
            version += 1
            try:
                await h.sign("k", h.payloads.timestamp(version))
            except grpc.aio.AioRpcError as e:
                refused = e
            await asyncio.sleep(0.05)
        assert refused.code() is grpc.StatusCode.UNAVAILABLE
        assert reason in (refused.details() or "")
        # On the record, and health says so.
        last = h.records()[-1].event
        assert (last.operation, last.status) == ("sign", "UNAVAILABLE")
        assert reason in last.reason
        await _until(lambda: _health_is(h, "NOT_SERVING"), "health NOT_SERVING")
        # The witnesses' own service turns once a checkpoint goes uncosigned: at the
        # log's next tick, which on a loaded machine may come after the time gate.
        await _until(
            lambda: _health_is(h, "NOT_SERVING", WITNESS_HEALTH), "witness health NOT_SERVING"
        )
        # The witness returns: signing resumes without a restart.
        setup.witness.start()

        async def signs() -> bool:
            try:
                await h.sign("k", h.payloads.timestamp(version + 1))
            except grpc.aio.AioRpcError as e:
                codes.append(e.code())
                return False
            return True

        codes: list[grpc.StatusCode] = []

        await _until(signs, "signing resumed")
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}
        await _until(lambda: _health_is(h, "SERVING"), "health SERVING again")
    finally:
        await stop_harness(h)


async def _health_is(h: Harness, status: str, service: str = "") -> bool:
    return await _health(h, service) == status


async def test_a_restored_store_is_caught_and_its_rollback_not_signed(
    setup: Setup, clock: Clock
) -> None:
    """Before: an older copy of audit.db passed and its high-water marks allowed a rollback."""
    h = await start_harness(setup.config, clock)
    db = h.config.audit.path
    try:
        await h.create_key("k")
        await h.sign("k", h.payloads.timestamp(1))
    finally:
        await stop_harness(h)
    backup = db.with_name("backup.db")
    shutil.copy(db, backup)
    h = await start_harness(setup.config, clock)
    try:
        for version in (2, 3, 4):
            await h.sign("k", h.payloads.timestamp(version))
        size = len(h.records())
        await _until(lambda: _witnessed_size(h) >= size, "the witness cosigned")
    finally:
        await stop_harness(h)
    shutil.copy(backup, db)  # the attacker's (or an operator's) older copy
    h = await start_harness(setup.config, clock)
    try:
        assert h.server.log is not None and h.server.log.halted is not None
        assert "behind witness" in h.server.log.halted.reason
        # Version 2 is above the restored mark (1): the old store alone would sign it.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await h.sign("k", h.payloads.timestamp(2))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "audit store is behind witness" in (refused.value.details() or "")
        assert h.records()[-1].event.status == "UNAVAILABLE"
        await _until(lambda: _health_is(h, "NOT_SERVING"), "health NOT_SERVING")
    finally:
        await stop_harness(h)


async def test_a_forked_store_is_caught(setup: Setup, clock: Clock, tmp_path: Path) -> None:
    h = await start_harness(setup.config, clock)
    db = h.config.audit.path
    try:
        await h.create_key("k")
        await h.sign("k", h.payloads.timestamp(1))
        size = len(h.records())
        await _until(lambda: _witnessed_size(h) >= size, "the witness cosigned")
    finally:
        await stop_harness(h)
    # Another history from the same start: the same size, other records.
    store = SqliteAuditStore(db)
    try:
        records = list(store.records())
    finally:
        store.close()
    db.unlink()
    forked = SqliteAuditStore(db)
    try:
        forked.append([Entry(r.event) for r in records[:-1]])
        forked.append([Entry(replace(records[-1].event, reason="forked"))])
    finally:
        forked.close()
    h = await start_harness(setup.config, clock)
    try:
        assert h.server.log is not None and h.server.log.halted is not None
        assert "forked from witness" in h.server.log.halted.reason
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await h.sign("k", h.payloads.timestamp(2))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await stop_harness(h)


@pytest.mark.parametrize(
    ("handle", "match"),
    [
        ("00ff00ff00ff00ff", "audit.key: backend 'softhsm' has no usable Ed25519 key with handle"),
    ],
)
async def test_an_unusable_audit_key_stops_the_start(
    setup: Setup, clock: Clock, handle: str, match: str
) -> None:
    text = setup.config.read_text()
    current = text.split('handle = "', 1)[1].split('"', 1)[0]
    setup.config.write_text(text.replace(current, handle))
    with pytest.raises(ConfigError, match=match):
        await start_harness(setup.config, clock)


@pytest.mark.parametrize("spell", [str, str.upper], ids=["same-handle", "upper-case-handle"])
async def test_a_registry_key_cannot_be_the_audit_key(
    setup: Setup, clock: Clock, spell: Callable[[str], str]
) -> None:
    """By public key: another spelling of the handle does not get past the check."""
    h = await start_harness(setup.config, clock)
    try:
        key = await h.create_key("k")
    finally:
        await stop_harness(h)
    store = SqliteAuditStore(h.config.audit.path)
    try:
        (version,) = store.list_versions("k")
    finally:
        store.close()
    text = setup.config.read_text()
    current = text.split('handle = "', 1)[1].split('"', 1)[0]
    setup.config.write_text(text.replace(current, spell(version.handle)))
    with pytest.raises(ConfigError, match=r"audit.key: is key 'k' version 1"):
        await start_harness(setup.config, clock)
    assert key.name == "k"


async def test_a_checkpoint_on_demand(setup: Setup, clock: Clock) -> None:
    """GetCheckpoint(fresh): the newest record is covered at once, not after the interval."""
    text = setup.config.read_text()
    setup.config.write_text(
        text.replace("checkpoint_interval_seconds = 0.2", "checkpoint_interval_seconds = 3600")
    )
    h = await start_harness(setup.config, clock)
    try:
        await h.create_key("k")
        signed = await h.sign("k", h.payloads.timestamp(1))
        audit = pb_grpc.AuditLogStub(h.channel)
        stale = await audit.GetCheckpoint(pb.GetCheckpointRequest())
        assert stale.size < signed.audit_seq  # the interval is an hour
        fresh = await audit.GetCheckpoint(pb.GetCheckpointRequest(fresh=True))
        assert fresh.size == signed.audit_seq
        # The answer does not wait on the witnesses; they cosign it right after.

        async def cosigned() -> bool:
            got = await audit.GetCheckpoint(pb.GetCheckpointRequest(size=fresh.size))
            return got.checkpoint.count("\u2014 ".encode()) >= 2

        await _until(cosigned, "the witness cosigned the fresh checkpoint")
        got = await audit.GetCheckpoint(pb.GetCheckpointRequest(size=fresh.size))
        signed_note = open_checkpoint(
            got.checkpoint,
            origin=ORIGIN,
            log_key=parse_verifier_key(setup.log_vkey),
            cosigners=[parse_verifier_key(setup.witness.vkey)],
            quorum=1,
        )
        assert signed_note.checkpoint.size == signed.audit_seq
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await audit.GetCheckpoint(pb.GetCheckpointRequest(fresh=True, size=1))
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "fresh" in (bad.value.details() or "")
        last = h.records()[-1].event
        assert (last.operation, last.status) == ("read-audit", "INVALID_ARGUMENT")
    finally:
        await stop_harness(h)
