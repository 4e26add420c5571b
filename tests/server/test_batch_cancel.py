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
QUEUED = 64  # one group of the PKCS#11 thread


@pytest.fixture
async def service(
    tmp_path: Path, softhsm: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SigningService]:
    store = SqliteAuditStore(tmp_path / "audit.db")
    backend = softhsm.backend("softhsm")
    await backend.start()
    # Count what reaches the HSM: the real signing operation, counted.
    sign_op = backend._sign_op
    signed: list[int] = []

    def counted(conn: Any, job: Any) -> bytes:
        signed.append(1)
        return sign_op(conn, job)

    monkeypatch.setattr(backend, "_sign_op", counted)
    service = SigningService(
        store, {"softhsm": backend}, "softhsm", 64 * 1024, Guard.unrestricted()
    )
    service.hsm_signatures = signed  # type: ignore[attr-defined]
    service.backend = backend  # type: ignore[attr-defined]
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
    backend = service.backend  # type: ignore[attr-defined]
    # Two chunks on their way to the HSM, and jobs queued on its thread.
    while len(seen) < 2 or len(backend._queue) < 2 * QUEUED:
        assert not batch.done(), "the batch ended before it could be cancelled"
        assert time.monotonic() < deadline, "the batch sent nothing to the HSM"
        seen |= _signing_tasks()
        await asyncio.sleep(0)
    pending = [t for t in seen | _signing_tasks() if not t.done()]
    assert pending, "every chunk was signed already: nothing to see"
    queued, signed_before = len(backend._queue), len(service.hsm_signatures)  # type: ignore[attr-defined]
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    deadline = time.monotonic() + 60
    while not all(t.done() for t in pending):
        assert time.monotonic() < deadline, "signing tasks outlived their batch by 60 s"
        await asyncio.sleep(0.01)
    assert all(t.cancelled() for t in pending), "signing went on for a cancelled batch"
    # Nor does the HSM sign what was queued for it: the PKCS#11 queue drains
    # without signing the cancelled jobs.
    while backend._queue or backend._draining:
        assert time.monotonic() < deadline, "the PKCS#11 queue did not drain in 60 s"
        await asyncio.sleep(0.01)
    # At most the group the thread was signing when the batch was cancelled.
    signed = len(service.hsm_signatures) - signed_before  # type: ignore[attr-defined]
    assert signed <= QUEUED, f"after the cancel the HSM signed {signed} of {queued} queued jobs"
    # The service signs on afterwards.
    result = await asyncio.wait_for(
        service.sign(WHO, SignItem("k", None, payloads.timestamp(ITEMS + 1))), 60
    )
    assert result.metadata_version == ITEMS + 1
