"""SIGTERM drains: every answered Sign is on the durable record, and the process exits 0."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
from pathlib import Path

import grpc

from tuf_signer.client import Client
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

from ..cli.conftest import CLI, _env, free_port, run, wait_healthy


async def test_sigterm_drains_in_flight_signs(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = Path(run("dev-init", str(tmp_path / "dev"), "--listen", address).stdout.strip())
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(config)], stderr=subprocess.PIPE, env=_env()
    )
    try:
        wait_healthy(address, proc)
        payloads = [
            run("dev-payload", "snapshot", "--version", str(v)).stdout.encode() for v in range(1, 2)
        ]
        with Client(address) as client:
            client.sign("online", payloads[0])
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.SignerStub(channel)
            # Many distinct bins in flight, then SIGTERM while they run.
            from datetime import UTC, datetime, timedelta

            from tuf.api.metadata import Metadata, Targets

            expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
            bins = [Metadata(Targets(version=1, expires=expires)).signed_bytes] * 300
            calls = [
                stub.Sign(pb.SignRequest(key="online", role=f"bins-{i}", payload=p))
                for i, p in enumerate(bins)
            ]
            await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert proc.wait(timeout=60) == 0
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
