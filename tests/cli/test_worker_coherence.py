"""server.workers = 2: keys created, activated and seen PENDING through any worker
sign on every worker (issue 12, finding 2), as a user runs them: the ``tuf-signer``
command for key administration (a fresh connection each time, so the kernel
picks the worker) and a client with many connections for the signatures."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp

from tuf_signer.client import AsyncClient, SignedResult
from tuf_signer.errors import RemoteError
from tuf_signer.server._registry import KEY_RECHECK_SECONDS

from .conftest import CLI, _env, client_env, credentials, free_port, run, wait_healthy

CONNECTIONS = 16  # the chance that one of two workers gets none: 2 in 65,536
ACTIVATED = [f"k-{i}" for i in range(4)]


@pytest.mark.slow
async def test_keys_made_through_any_worker_sign_on_every_worker(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    directory = tmp_path / "dev"
    config = Path(run("dev-init", str(directory), "--listen", address).stdout.strip())
    text = config.read_text().replace("[server]\n", "[server]\nworkers = 2\n", 1)
    config.write_text(text.replace('keys = ["online"]', 'keys = ["*"]', 1))
    # The server's log goes to a file: a pipe nobody reads until exit can fill
    # and block the server mid-test.
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [*CLI, "serve", "--config", str(config)], stderr=log_file, env=_env()
        )
    admin = client_env(directory, "admin")
    tls = directory / "tls"
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)

    def timestamp(version: int) -> bytes:
        ts = Timestamp(version=version, expires=expires, snapshot_meta=MetaFile(1))
        return Metadata(ts).signed_bytes

    def snapshot(version: int) -> bytes:
        return Metadata(Snapshot(version=version, expires=expires)).signed_bytes

    def create(name: str, *flags: str) -> None:
        roles = ("--role", "timestamp", "--role", "snapshot")
        run("keys", "create", name, *roles, *flags, env=admin)

    def client() -> AsyncClient:
        return AsyncClient(
            address,
            ca=tls / "ca.crt",
            cert=tls / "backend.crt",
            key=tls / "backend.key",
            connections=CONNECTIONS,
            timeout=30,
        )

    try:
        try:
            await asyncio.to_thread(wait_healthy, address, proc, credentials(directory, "backend"))
        except Exception as e:  # exited (no stderr pipe to read: the log file) or timed out
            log = log_path.read_text(errors="replace")
            raise AssertionError(f"server not healthy (exit {proc.poll()}): {e!r}\n{log}") from e
        # A key both workers see PENDING: every Sign on every connection is refused.
        await asyncio.to_thread(create, "k-pending")
        async with client() as early:
            seen = await asyncio.gather(
                *(early.sign("k-pending", timestamp(1)) for _ in range(2 * CONNECTIONS)),
                return_exceptions=True,
            )
        assert all(isinstance(e, RemoteError) for e in seen), seen
        assert {e.code for e in seen if isinstance(e, RemoteError)} == {"FAILED_PRECONDITION"}

        # Activated through a fresh connection; then keys created ACTIVE, each
        # through a fresh connection (whichever worker the kernel picks).
        await asyncio.to_thread(run, "keys", "activate", "k-pending", "1", env=admin)
        for name in ACTIVATED:
            await asyncio.to_thread(create, name, "--activate")
        await asyncio.sleep(KEY_RECHECK_SECONDS)

        # Every Sign of every key succeeds, on every connection of fresh clients.
        failures: list[str] = []
        for name in ["k-pending", *ACTIVATED]:
            async with client() as fresh:
                for version in range(1, 2 * CONNECTIONS + 1):
                    payload = timestamp(version) if version % 2 else snapshot(version)
                    try:
                        result = await fresh.sign(name, payload)
                        assert isinstance(result, SignedResult)
                    except RemoteError as e:
                        failures.append(f"{name} v{version}: {e.code}: {e.reason}")
        assert not failures, "\n".join(failures)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    log = log_path.read_text(errors="replace")
    assert code == 0, log
    assert "[worker 0]" in log and "[worker 1]" in log
    assert run("audit", "verify", "--config", str(config)).stdout.startswith("OK:")
