"""The clients' transparency-log calls: checkpoint, inclusion and consistency proofs, records."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, Timestamp

from tests.audit._logkeys import ORIGIN, SoftwareLogKey, serve_log
from tuf_signer.audit import SqliteAuditStore, merkle_inclusion, record_leaf
from tuf_signer.audit._checkpoint import open_checkpoint, parse_tlog_proof, verify_tlog_proof
from tuf_signer.audit._merkle import leaf_hash, verify_consistency
from tuf_signer.client import (
    AsyncClient,
    CheckpointInfo,
    Client,
    ConsistencyInfo,
    RecordLeafInfo,
    RemoteError,
    RemoteNotFoundError,
    RemotePolicyError,
    RemoteRequestError,
)
from tuf_signer.config import load_config

from ..server.conftest import write_config
from .conftest import ONLINE_BINS, ONLINE_ROLES, ServerThread


@dataclass
class Logged:
    address: str
    client: Client
    key: SoftwareLogKey
    payloads: list[bytes]
    db: Path


@pytest.fixture
def logged(tmp_path: Path, softhsm: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Logged]:
    """A server serving a software key's log: 3 timestamps signed, a checkpoint of all 4 records."""
    key = SoftwareLogKey.generate()
    serve_log(monkeypatch, key.key)
    config = write_config(tmp_path / "signer", softhsm)
    thread = ServerThread(config)
    address = thread.start()
    try:
        with Client(address, timeout=60) as client:
            client.create_key("online", ONLINE_ROLES, activate=True, bins=ONLINE_BINS)
            payloads = []
            for version in (1, 2, 3):
                payloads.append(_timestamp(version))
                client.sign("online", payloads[-1])
            db = load_config(config).audit.path
            with SqliteAuditStore(db) as store:
                key.checkpoint(store, 2)
                key.checkpoint(store)
            yield Logged(address, client, key, payloads, db)
    finally:
        thread.stop()


def _timestamp(version: int) -> bytes:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    return Metadata(Timestamp(version=version, expires=expires)).signed_bytes


def _leaf(db: Path, seq: int) -> bytes:
    with SqliteAuditStore(db) as store:
        return record_leaf(next(store.records(seq)))


def test_the_sync_client(logged: Logged) -> None:
    c = logged.client
    newest = c.checkpoint()
    assert isinstance(newest, CheckpointInfo)
    assert (newest.size, newest.verifier_key) == (4, logged.key.key.text())
    assert open_checkpoint(newest.checkpoint, origin=ORIGIN, log_key=logged.key.key)
    assert c.checkpoint(2).size == 2

    (found,) = c.find_records(hashlib.sha256(logged.payloads[1]).hexdigest())
    assert found == RecordLeafInfo(3, _leaf(logged.db, 3))
    proof = c.prove_inclusion(found.seq)
    verify_tlog_proof(
        parse_tlog_proof(proof),
        leaf_hash=leaf_hash(found.leaf),
        origin=ORIGIN,
        log_key=logged.key.key,
        verify_inclusion=merkle_inclusion,
    )
    assert (
        parse_tlog_proof(c.prove_inclusion(2, tree_size=2)).checkpoint == c.checkpoint(2).checkpoint
    )

    consistency = c.prove_consistency(2)
    assert isinstance(consistency, ConsistencyInfo)
    assert consistency == c.prove_consistency(2, 4)
    old = open_checkpoint(c.checkpoint(2).checkpoint, origin=ORIGIN, log_key=logged.key.key)
    new = open_checkpoint(consistency.checkpoint, origin=ORIGIN, log_key=logged.key.key)
    verify_consistency(2, 4, consistency.hashes, old.checkpoint.root_hash, new.checkpoint.root_hash)


@pytest.mark.parametrize(
    ("call", "error", "code"),
    [
        pytest.param(
            lambda c: c.prove_inclusion(0), RemoteRequestError, "INVALID_ARGUMENT", id="seq-0"
        ),
        pytest.param(lambda c: c.prove_inclusion(99), RemoteError, "OUT_OF_RANGE", id="beyond"),
        pytest.param(
            lambda c: c.checkpoint(3), RemoteNotFoundError, "NOT_FOUND", id="no-such-size"
        ),
        pytest.param(
            lambda c: c.prove_consistency(4, 2), RemoteRequestError, "INVALID_ARGUMENT",
            id="from>to",
        ),
        pytest.param(
            lambda c: c.find_records("x"), RemoteRequestError, "INVALID_ARGUMENT", id="digest"
        ),
    ],
)  # fmt: skip
def test_the_sync_client_raises_remote_errors(
    logged: Logged, call: Any, error: type[RemoteError], code: str
) -> None:
    with pytest.raises(error) as caught:
        call(logged.client)
    assert caught.value.code == code


def test_not_yet_covered_is_a_policy_error_to_retry(logged: Logged) -> None:
    logged.client.sign("online", _timestamp(4))
    with pytest.raises(RemotePolicyError, match="record 5 is not covered by a checkpoint yet"):
        logged.client.prove_inclusion(5)


def test_the_async_client(logged: Logged) -> None:
    async def calls() -> tuple[Any, ...]:
        async with AsyncClient(logged.address, timeout=60) as c:
            digest = hashlib.sha256(logged.payloads[0]).hexdigest()
            return (
                await c.checkpoint(),
                await c.prove_inclusion(2, 2),
                await c.prove_consistency(2),
                await c.find_records(digest),
            )

    sync = logged.client
    checkpoint, proof, consistency, found = asyncio.run(calls())
    assert checkpoint == sync.checkpoint()
    assert proof == sync.prove_inclusion(2, 2)
    assert consistency == sync.prove_consistency(2)
    assert found == [RecordLeafInfo(2, _leaf(logged.db, 2))]
