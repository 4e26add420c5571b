"""The HTTP layer alone, in process: a failing witness is a 5xx for that request, nothing more."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.witness.conftest import request
from tuf_signer.errors import StoreError
from tuf_signer.witness import WitnessHTTPServer, origin_hash


class FailingWitness:
    """Stands in for ``Witness``: raises what it is told to."""

    def __init__(self) -> None:
        self.error: Exception = RuntimeError("a bug")

    def add_checkpoint(self, body: bytes) -> bytes:
        raise self.error

    def checkpoint(self, hashed_origin: str) -> bytes:
        raise self.error


@pytest.fixture
def served() -> Iterator[tuple[str, FailingWitness]]:
    witness = FailingWitness()
    server = WitnessHTTPServer(
        ("127.0.0.1", 0),
        witness,  # type: ignore[arg-type]
        max_body_bytes=4096,
        max_connections=4,
        timeout=2,
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", witness
    finally:
        server.stop()
        thread.join()


def test_unexpected_errors_are_500_and_store_errors_503(
    served: tuple[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    url, witness = served
    monitor = f"/{origin_hash('log.test/a')}/checkpoint"
    reply = request(url, "POST", "/add-checkpoint", b"old 0\n\n")
    assert (reply.status, reply.body) == (500, b"internal error\n")
    assert request(url, "GET", monitor).status == 500
    assert "unexpected error answering POST /add-checkpoint" in caplog.text
    witness.error = StoreError("database is locked")
    reply = request(url, "POST", "/add-checkpoint", b"old 0\n\n")
    assert (reply.status, reply.body) == (503, b"the witness cannot answer now\n")
    assert "database is locked" not in reply.body.decode()  # details only in the log
    assert "database is locked" in caplog.text
