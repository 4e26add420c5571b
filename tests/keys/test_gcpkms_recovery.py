"""GcpKmsBackend through a lost channel (issue 12, finding 1): KMS gone, then back.

The fake KMS stops and starts again on the same port (its keys kept), as a
KMS endpoint behind a load balancer drops and comes back: while it is gone
every call is ``BackendUnavailableError`` (UNAVAILABLE), and once it is back
the same backend signs again on its own, with no restart.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator

import pytest

from tests.conftest import free_port
from tuf_signer.errors import BackendUnavailableError
from tuf_signer.model import Algorithm
from tuf_signer.testing.fake_kms import FakeKms

ED = Algorithm.ED25519
CALL_TIMEOUT = 1.0  # seconds per call, retries included
RECOVERY_BOUND = 5.0  # seconds from the KMS being back to a sign that works


@pytest.fixture
def kms_on_fixed_port() -> Iterator[FakeKms]:
    with FakeKms(port=free_port()) as fake:
        yield fake


async def test_lost_channel_is_unavailable_then_recovers(kms_on_fixed_port: FakeKms) -> None:
    fake = kms_on_fixed_port
    backend = fake.backend(key_ring=f"ring-{secrets.token_hex(4)}", call_timeout=CALL_TIMEOUT)
    await backend.start()
    try:
        key = await backend.create(ED, "tuf-signer/blip/1/0000")
        await backend.sign(key.handle, ED, b"before")

        await asyncio.to_thread(fake.stop, 0)
        try:
            with pytest.raises(BackendUnavailableError):
                await backend.sign(key.handle, ED, b"during")
            with pytest.raises(BackendUnavailableError):
                await backend.check()
        finally:
            await asyncio.to_thread(fake.start)
        back = time.monotonic()

        while True:
            try:
                await backend.sign(key.handle, ED, b"after")
                break
            except BackendUnavailableError:
                assert time.monotonic() - back < RECOVERY_BOUND
                await asyncio.sleep(0.05)
        await backend.check()
    finally:
        await backend.close()
