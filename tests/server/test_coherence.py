"""Key state coherent across workers and replicas (issue 12, finding 2).

Two ``SigningService`` instances over one store stand for two workers (or two
replicas on one PostgreSQL store): each has its own store connection, its own
backend object and its own key cache, as a worker process has. A key changed
through one must sign through the other without a stale refusal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tuf_signer.audit import AuditStore, PostgresAuditStore, SqliteAuditStore
from tuf_signer.errors import TufSignerError
from tuf_signer.keys import Pkcs11Backend
from tuf_signer.model import Algorithm, KeyRecord, KeyState, Outcome, RoleRule
from tuf_signer.server._guard import Guard
from tuf_signer.server._registry import KEY_RECHECK_SECONDS
from tuf_signer.server._service import SigningService
from tuf_signer.server._values import SignItem, SignResult

from .conftest import Clock, Payloads

WHO = "uri:spiffe://tuf-signer.dev/test"
ROLES = [RoleRule("timestamp", 86400), RoleRule("snapshot", 86400)]
NO_ACTIVE = ("FAILED_PRECONDITION", "key 'k' has no ACTIVE version")


class CountingKeyReads(AuditStore):
    """A real store (mixed in below), counting the key reads a service makes."""

    key_reads = 0

    def get_key(self, name: str) -> KeyRecord | None:
        self.key_reads += 1
        return super().get_key(name)


class CountingSqliteStore(CountingKeyReads, SqliteAuditStore):
    pass


class CountingPostgresStore(CountingKeyReads, PostgresAuditStore):
    pass


@dataclass
class Pair:
    """Two services ("workers") over one store, and the parts to close."""

    a: SigningService
    b: SigningService
    payloads: Payloads
    stores: list[CountingKeyReads]
    backends: list[Pkcs11Backend]

    async def sign(
        self, service: SigningService, version: int, key: str = "k", keyid: str = ""
    ) -> SignResult:
        item = SignItem(key, None, self.payloads.timestamp(version), expected_keyid=keyid)
        return await asyncio.wait_for(service.sign(WHO, item), 30)

    async def refused(
        self, service: SigningService, version: int, key: str = "k", keyid: str = ""
    ) -> TufSignerError:
        with pytest.raises(TufSignerError) as refused:
            await self.sign(service, version, key, keyid)
        return refused.value


@pytest.fixture(params=["sqlite", "postgres"])
async def pair(request: pytest.FixtureRequest, tmp_path: Path, softhsm: Any) -> AsyncIterator[Pair]:
    stores: list[CountingKeyReads] = []
    if request.param == "sqlite":
        stores = [CountingSqliteStore(tmp_path / "audit.db") for _ in range(2)]
    else:
        dsn = request.getfixturevalue("postgres_dsn")
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


async def test_a_key_seen_pending_signs_once_activated_elsewhere(pair: Pair) -> None:
    await pair.a.create_key(WHO, "k", Algorithm.ED25519, ROLES, activate=False)
    # B sees it PENDING, pinned or not ...
    refused = await pair.refused(pair.b, 1)
    assert (refused.code, refused.reason) == NO_ACTIVE
    (view,) = await pair.a.public_keys(WHO, "k")
    keyid = view.versions[0].keyid
    assert (await pair.refused(pair.b, 1, keyid=keyid)).code == "FAILED_PRECONDITION"
    # ... then A activates it. B re-read the key for its refusals just now: past
    # the stated bound, B's first try signs, pinned or not.
    await asyncio.sleep(KEY_RECHECK_SECONDS)
    await pair.a.set_version_state(WHO, "k", 1, KeyState.ACTIVE)
    first = await pair.sign(pair.b, 1)
    assert (first.keyid, first.key_version) == (keyid, 1)
    assert (await pair.sign(pair.b, 2, keyid=keyid)).keyid == keyid


async def test_a_key_created_elsewhere_signs_at_once_and_a_missing_one_costs_few_reads(
    pair: Pair,
) -> None:
    # B has never seen "k": created and activated through A, it signs through B at once.
    await pair.a.create_key(WHO, "k", Algorithm.ED25519, ROLES, activate=True)
    assert (await pair.sign(pair.b, 1)).key_version == 1

    # A flood of Signs for a key that does not exist is refused NOT_FOUND, and
    # costs B at most one store read of that key per KEY_RECHECK_SECONDS.
    before = pair.stores[1].key_reads
    started = asyncio.get_running_loop().time()
    flood = await asyncio.gather(
        *(pair.sign(pair.b, 1, key="ghost") for _ in range(200)), return_exceptions=True
    )
    elapsed = asyncio.get_running_loop().time() - started
    assert all(isinstance(e, TufSignerError) and e.code == "NOT_FOUND" for e in flood), flood
    reads = pair.stores[1].key_reads - before
    assert 1 <= reads <= 1 + elapsed / KEY_RECHECK_SECONDS, (reads, elapsed)

    # Created through A after the flood: B signs it once the bound has passed.
    await pair.a.create_key(WHO, "ghost", Algorithm.ED25519, ROLES, activate=True)
    await asyncio.sleep(KEY_RECHECK_SECONDS)
    assert (await pair.sign(pair.b, 1, key="ghost")).key_version == 1


async def test_rotation_and_retirement_elsewhere_are_seen_at_once(pair: Pair) -> None:
    await pair.a.create_key(WHO, "k", Algorithm.ED25519, ROLES, activate=True)
    assert (await pair.sign(pair.b, 1)).key_version == 1  # B caches version 1 ACTIVE

    # Rotation and retirement through A: version 2 PENDING, version 1 RETIRED
    # (and disabled in the HSM). B has no ACTIVE version to sign with: a
    # precise refusal, not the HSM's INTERNAL error about a disabled key.
    v2, _ = await pair.a.rotate_key(WHO, "k")
    await pair.a.set_version_state(WHO, "k", 1, KeyState.RETIRED)
    refused = await pair.refused(pair.b, 2)
    assert (refused.code, refused.reason) == NO_ACTIVE

    # Activated through A: B signs with version 2 on its first try, pinned or not.
    await asyncio.sleep(KEY_RECHECK_SECONDS)
    await pair.a.set_version_state(WHO, "k", 2, KeyState.ACTIVE)
    assert (await pair.sign(pair.b, 2)).keyid == v2.keyid
    assert (await pair.sign(pair.b, 3, keyid=v2.keyid)).keyid == v2.keyid

    # Rotation then activation through A (retiring version 2): B signs with
    # version 3 at once, pinned or not, and never answers INTERNAL. (B last
    # re-read the key for a miss just now: the bound, again, before the pin.)
    await asyncio.sleep(KEY_RECHECK_SECONDS)
    v3, _ = await pair.a.rotate_key(WHO, "k")
    await pair.a.set_version_state(WHO, "k", 3, KeyState.ACTIVE)
    assert (await pair.sign(pair.b, 4, keyid=v3.keyid)).keyid == v3.keyid
    v4, _ = await pair.a.rotate_key(WHO, "k")
    await pair.a.set_version_state(WHO, "k", 4, KeyState.ACTIVE)
    assert (await pair.sign(pair.b, 5)).keyid == v4.keyid

    # A pinned request for the retired version is refused for what it is.
    stale = await pair.refused(pair.b, 6, keyid=v3.keyid)
    assert stale.code == "FAILED_PRECONDITION"
    records = list(pair.stores[0].records())
    internal = [r.event for r in records if r.event.status == "INTERNAL"]
    assert internal == []
    assert [r.event.outcome for r in records if r.event.operation == "sign"].count(
        Outcome.GRANTED
    ) == 5


async def test_an_internal_refusal_reaches_the_server_log(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    await pair.a.create_key(WHO, "k", Algorithm.ED25519, ROLES, activate=True)
    # A key whose handle the HSM does not hold: the backend's error is INTERNAL.
    (view,) = await pair.a.public_keys(WHO, "k")
    missing = view.versions[0].handle
    await pair.backends[0].disable(missing)  # gone in this process's view of the token
    caplog.set_level(logging.ERROR, logger="tuf_signer.server")
    refused = await pair.refused(pair.b, 1)
    assert refused.code == "INTERNAL"
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert logged, "the INTERNAL refusal is on the record but not in the log"
    text = logged[-1].getMessage()
    assert f"sign by {WHO}, key k version 1" in text
    assert f"BackendError: {refused.reason}" in text


async def test_a_flood_of_signs_the_backend_refuses_rereads_the_key_seldom(pair: Pair) -> None:
    await pair.a.create_key(WHO, "k", Algorithm.ED25519, ROLES, activate=True)
    await pair.sign(pair.b, 1)  # b has the key cached now
    (view,) = await pair.a.public_keys(WHO, "k")
    await pair.backends[0].disable(view.versions[0].handle)  # b's backend cannot sign with it
    before = pair.stores[1].key_reads
    signs = 200
    refused = await asyncio.gather(
        *(pair.refused(pair.b, version) for version in range(2, signs + 2))
    )
    assert {e.code for e in refused} == {"INTERNAL"}
    reads = pair.stores[1].key_reads - before
    # One re-read per sign before (issue 12, review H); now they share them.
    assert reads <= signs // 4, f"{reads} key reads for {signs} refused signs"
