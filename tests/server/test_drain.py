"""SIGTERM drains: every answered Sign is on the durable record, and the process exits 0."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from tuf.api.metadata import Metadata, Targets

from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

from ..cli.conftest import CLI, _env, credentials, free_port, run, wait_healthy


async def test_sigterm_drains_in_flight_signs(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = Path(run("dev-init", str(tmp_path / "dev"), "--listen", address).stdout.strip())
    creds = credentials(tmp_path / "dev", "backend")
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(config)], stderr=subprocess.PIPE, env=_env()
    )
    try:
        await asyncio.to_thread(wait_healthy, address, proc, creds)
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        payload = Metadata(Targets(version=1, expires=expires)).signed_bytes
        async with grpc.aio.secure_channel(address, creds) as channel:
            stub = pb_grpc.SignerStub(channel)
            await stub.Sign(pb.SignRequest(key="online", role="bins-3fff", payload=payload))
            # Many distinct bins (dev-init's bins:14; an empty bin fits any) in
            # flight, then SIGTERM while they run.
            calls = [
                stub.Sign(pb.SignRequest(key="online", role=f"bins-{i:04x}", payload=payload))
                for i in range(300)
            ]
            await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    granted = [r for r in results if isinstance(r, pb.SignResponse)]
    failed = [r for r in results if not isinstance(r, pb.SignResponse)]
    assert granted, "some calls were in flight when SIGTERM arrived"
    assert all(isinstance(e, grpc.aio.AioRpcError) for e in failed)
    db = sqlite3.connect(tmp_path / "dev" / "audit.db")
    rows = dict(db.execute("SELECT seq, signature FROM audit_log WHERE operation = 'sign'"))
    db.close()
    for r in granted:
        assert rows.get(r.audit_seq) == r.signature.sig, "an answered signature lacks its record"
    assert run("audit", "verify", "--config", str(config)).returncode == 0
