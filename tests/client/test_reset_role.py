"""``Client.reset_role`` and ``AsyncClient.reset_role`` (issue 10, finding 8)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, MetaFile, Snapshot

from tuf_signer.client import AsyncClient, Client, RemoteError

from ..server.conftest import write_config
from .conftest import ServerThread


@pytest.fixture
def address(tmp_path: Path, softhsm: Any) -> Iterator[str]:
    thread = ServerThread(write_config(tmp_path / "signer", softhsm))
    address = thread.start()
    try:
        with Client(address, timeout=60) as client:
            client.create_key("k", [("timestamp", 86400), ("snapshot", 86400)], activate=True)
        yield address
    finally:
        thread.stop()


def snapshot(version: int) -> bytes:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    return Metadata(
        Snapshot(version=version, expires=expires, meta={"t.json": MetaFile(1)})
    ).signed_bytes


def test_f8_client_reset_role(address: str) -> None:
    with Client(address, timeout=60) as client:
        client.sign("k", snapshot(9))
        state = client.reset_role("k", "snapshot", 3, "recover")
        assert (state["key"], state["role"], state["version"]) == ("k", "snapshot", 3)
        assert state["payload_sha256"] == ""
        assert client.role_state("k", "snapshot") == [state]
        assert client.sign("k", snapshot(4)).metadata_version == 4
        with pytest.raises(RemoteError, match="a reason is required") as refused:
            client.reset_role("k", "snapshot", 1, "")
        assert refused.value.code == "INVALID_ARGUMENT"


async def test_f8_async_client_reset_role(address: str) -> None:
    async with AsyncClient(address, timeout=60) as client:
        await client.sign("k", snapshot(9))
        state = await client.reset_role("k", "snapshot", 0, "forget")
        assert state["version"] == 0
        assert (await client.sign("k", snapshot(1))).metadata_version == 1
