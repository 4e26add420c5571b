"""The runbooks of docs/runbooks.md, performed against a real signer (``tuf-signer serve``)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import (
    CLI,
    DevSigner,
    _env,
    credentials,
    dev_signer,
    run,
    wait_healthy,
)
from tests.client.conftest import _no_client_env, signer_server

__all__ = [
    "DevSigner",
    "_no_client_env",
    "dev_signer",
    "payload",
    "restart",
    "run",
    "signer_server",
]


def payload(kind: str, version: int) -> bytes:
    """A valid ``timestamp`` or ``snapshot`` payload, as ``dev-payload`` prints it."""
    return run("dev-payload", kind, "--version", str(version)).stdout.encode()


def restart(signer: DevSigner, config: Path | None = None, env: dict | None = None) -> DevSigner:
    """Stop ``signer`` (SIGTERM, exit 0) and serve again, on ``config`` if given."""
    assert signer.stop() == 0
    config = config or signer.config
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**_env(), **(env or {})},
    )
    again = DevSigner(signer.directory, config, signer.address, proc)
    wait_healthy(signer.address, proc, credentials(signer.directory, "admin"))
    return again


@pytest.fixture
def signers() -> Iterator[list[DevSigner]]:
    """Signers a test restarted: each is stopped at the end, however the test ends."""
    started: list[DevSigner] = []
    yield started
    for signer in started:
        signer.stop()
