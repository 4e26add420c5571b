"""A cancelled SignBatch leaves no signing behind it (issue 12, review G).

Its in-flight bytes are returned when it ends; the chunks it had already sent
towards the HSM must end with it, or they keep its payloads (and the HSM)
after the bytes are counted free. Real SoftHSM and SQLite.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tuf_signer.audit import SqliteAuditStore
from tuf_signer.model import Algorithm, RoleRule
from tuf_signer.server._guard import Guard
from tuf_signer.server._service import SigningService
from tuf_signer.server._values import SignItem

from .conftest import Clock, Payloads

WHO = "uri:spiffe://tuf-signer.dev/test"
# RSA-3072 signs slowly enough in SoftHSM that a large batch is still queued
# for the HSM when it is cancelled.
ITEMS = 2048


@pytest.fixture
async def service(tmp_path: Path, softhsm: Any) -> AsyncIterator[SigningService]:
    store = SqliteAuditStore(tmp_path / "audit.db")
    backend = softhsm.backend("softhsm")
    await backend.start()
    service = SigningService(
        store, {"softhsm": backend}, "softhsm", 64 * 1024, Guard.unrestricted()
    )
    try:
        yield service
    finally:
        service.close()
        await backend.close()
        store.close()


def _signing_tasks() -> set[asyncio.Task[Any]]:
    return {
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "").endswith("._backend_sign")
    }


async def test_a_cancelled_batch_cancels_its_signing(service: SigningService) -> None:
    await service.create_key(
        WHO, "k", Algorithm.RSA_3072_PSS, [RoleRule("timestamp", 86400)], activate=True
    )
    payloads = Payloads(Clock())
    items = [SignItem("k", None, payloads.timestamp(v)) for v in range(1, ITEMS + 1)]
    batch = asyncio.ensure_future(service.sign_batch(WHO, items))
    seen: set[asyncio.Task[Any]] = set()
    deadline = time.monotonic() + 60
    while len(seen) < 2:  # two chunks on their way to the HSM
        assert not batch.done(), "the batch ended before it could be cancelled"
        assert time.monotonic() < deadline, "the batch sent nothing to the HSM"
        seen |= _signing_tasks()
        await asyncio.sleep(0)
    pending = [t for t in seen | _signing_tasks() if not t.done()]
    assert pending, "every chunk was signed already: nothing to see"
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    deadline = time.monotonic() + 60
    while not all(t.done() for t in pending):
        assert time.monotonic() < deadline, "signing tasks outlived their batch by 60 s"
        await asyncio.sleep(0.01)
    assert all(t.cancelled() for t in pending), "signing went on for a cancelled batch"
    # The service signs on afterwards.
    result = await asyncio.wait_for(
        service.sign(WHO, SignItem("k", None, payloads.timestamp(ITEMS + 1))), 60
    )
    assert result.metadata_version == ITEMS + 1
