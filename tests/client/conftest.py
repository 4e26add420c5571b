"""A real tuf-signer on its own event loop thread, for clients that block.

The server harness of tests/server runs the server on the test's event loop;
a synchronous client (or securesystemslib's synchronous ``Signer.sign``) called
from that loop would wait for a server that cannot run. Here the server gets a
loop and a thread of its own, over the session's SoftHSM token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tuf_signer.client import (
    CONFIG_ENV,
    ONLINE_KEY_DIR_ENV,
    Client,
    KeyVersionInfo,
    close_shared_clients,
)
from tuf_signer.client._settings import SETTINGS_ENVS
from tuf_signer.config import load_config
from tuf_signer.server import SignerServer

from ..server.conftest import write_config

T = TypeVar("T")

# Room for a 16,384-bin snapshot (PEP 458 scale): the server's default.
MAX_PAYLOAD = 8 * 1024 * 1024
# Key "online" declares 256 succinct hash bins, "bins-00".."bins-ff" (issue 10,
# finding 1): its one glob matches exactly those.
ONLINE_BINS = "bins:8"
ONLINE_BIN_PATTERN = "bins-[0-9a-f][0-9a-f]"
ONLINE_ROLES = [("timestamp", 86400), ("snapshot", 86400), (ONLINE_BIN_PATTERN, 86400)]


class ServerThread:
    """A ``SignerServer`` on a private event loop in a daemon thread."""

    def __init__(self, config_path: Path) -> None:
        self._config_path = config_path
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="signer-server", daemon=True
        )
        self._server: SignerServer | None = None
        self.port = 0

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def start(self) -> str:
        self._thread.start()

        async def start() -> int:
            self._server = SignerServer(load_config(self._config_path))
            return await self._server.start()

        self.port = self._run(start())
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._run(self._server.stop(grace=5))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


@dataclass
class RunningSigner:
    """A running server, a client to it, and its ACTIVE Ed25519 key ``online``."""

    address: str
    client: Client
    key: str
    active: KeyVersionInfo

    def expires(self, seconds: int = 3600) -> datetime:
        return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds)


@pytest.fixture
def signer_server(tmp_path: Path, softhsm: Any) -> Iterator[RunningSigner]:
    """A fresh server (own audit database) with key ``online``: timestamp, snapshot, bins:8."""
    thread = ServerThread(write_config(tmp_path / "signer", softhsm, max_payload=MAX_PAYLOAD))
    address = thread.start()
    try:
        with Client(address, timeout=60) as client:
            key = client.create_key("online", ONLINE_ROLES, activate=True, bins=ONLINE_BINS)
            (active,) = key["versions"]
            yield RunningSigner(address=address, client=client, key="online", active=active)
    finally:
        close_shared_clients()
        thread.stop()


@pytest.fixture(autouse=True)
def _no_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests say what they want: no TLS or server settings from the developer's shell."""
    for name in (*SETTINGS_ENVS, CONFIG_ENV, ONLINE_KEY_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
