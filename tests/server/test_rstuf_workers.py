"""Coherence and recovery across two workers on one store, SQLite and PostgreSQL (issue 14).

Two ``SigningService`` instances over one store stand for two workers (or two
replicas on one PostgreSQL store), as in ``test_coherence``: each has its own
connection, backend object and caches. What one signed holds the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tuf_signer.errors import TufSignerError
from tuf_signer.model import Algorithm, RoleRule
from tuf_signer.server._guard import Guard
from tuf_signer.server._service import SigningService
from tuf_signer.server._values import SignItem

from .conftest import TEST_BIN_PATTERN, TEST_BINS, Clock, Payloads, bin_role
from .test_coherence import WHO, CountingKeyReads, CountingPostgresStore, CountingSqliteStore, Pair


@pytest.fixture(params=["sqlite", "postgres"])
async def workers(
    request: pytest.FixtureRequest, tmp_path: Path, softhsm: Any
) -> AsyncIterator[Pair]:
    """Two workers over one store (as ``test_coherence.pair``)."""
    stores: list[CountingKeyReads]
    if request.param == "sqlite":
        stores = [CountingSqliteStore(tmp_path / "audit.db") for _ in range(2)]
    else:
        dsn = request.getfixturevalue("postgres_dsn")  # skips without a server
        stores = [CountingPostgresStore(dsn, create=True) for _ in range(2)]
    backends = [softhsm.backend("softhsm") for _ in range(2)]
    for backend in backends:
        await backend.start()
    a, b = (
        SigningService(store, {"softhsm": backend}, "softhsm", 64 * 1024, Guard.unrestricted())
        for store, backend in zip(stores, backends, strict=True)
    )
    try:
        yield Pair(a, b, Payloads(Clock()), stores, backends)
    finally:
        for service in (a, b):
            service.close()
        for backend in backends:
            await backend.close()
        for store in stores:
            store.close()


ROLES = [
    RoleRule("timestamp", 86400),
    RoleRule("snapshot", 86400),
    RoleRule(TEST_BIN_PATTERN, 86400),
]


async def _sign(service: object, payload: bytes) -> str:
    item = SignItem("k", None, payload)
    result = await asyncio.wait_for(service.sign(WHO, item), 30)  # type: ignore[attr-defined]
    return str(result.role)


def _snapshot(pair: Pair, version: int, bins: dict[str, int]) -> bytes:
    from tuf.api.metadata import Metadata, MetaFile, Snapshot

    meta = {f"{r}.json": MetaFile(v) for r, v in bins.items()}
    snap = Snapshot(version=version, expires=pair.payloads.expires(), meta=meta)
    return Metadata(snap).signed_bytes


async def test_what_one_worker_listed_holds_the_other(workers: Pair) -> None:
    pair = workers
    await pair.a.create_key(WHO, "k", Algorithm.ED25519, ROLES, activate=True, bins=TEST_BINS)
    b1 = bin_role(1)
    p = pair.payloads
    assert await _sign(pair.a, p.targets(1, role=b1)) == b1  # role-less, inferred
    assert await _sign(pair.a, p.targets(2, role=b1, salt="2")) == b1
    await _sign(pair.b, _snapshot(pair, 1, {b1: 2}))
    await _sign(pair.b, p.timestamp(1, 1))
    # Worker A's cache never saw B's snapshot: the store's transaction decides.
    with pytest.raises(TufSignerError, match=f"lists '{b1}' at version 1, below version 2"):
        await _sign(pair.a, _snapshot(pair, 2, {b1: 1}))
    with pytest.raises(TufSignerError, match="names snapshot version 2, which key 'k' never"):
        await _sign(pair.a, p.timestamp(2, 2))


async def test_a_reset_through_one_worker_lets_the_other_start_again(workers: Pair) -> None:
    pair = workers
    await pair.a.create_key(WHO, "k", Algorithm.ED25519, ROLES, activate=True, bins=TEST_BINS)
    b1 = bin_role(1)
    p = pair.payloads
    await _sign(pair.a, p.targets(3, role=b1))
    await _sign(pair.a, _snapshot(pair, 3, {b1: 3}))
    await _sign(pair.a, p.timestamp(3, 3))
    count, first, last = await pair.a.reset_role_states(WHO, "k", 0, "re-bootstrap")
    assert count == 3 and last - first == 2
    # B (whose cache still holds the old marks) signs the new start at version 1.
    assert await _sign(pair.b, p.targets(1, role=b1, salt="new")) == b1
    await _sign(pair.b, _snapshot(pair, 1, {b1: 1}))
    await _sign(pair.b, p.timestamp(1, 1))
