"""server.workers = 2: two processes on one port, one store, P3 still holds across them."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from tuf.api.metadata import Metadata, MetaFile, Targets, Timestamp

from tuf_signer.client import AsyncClient, SignedResult, SignRequest
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

from .conftest import CLI, _env, children, credentials, free_port, run, wait_healthy


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _channels(address: str, creds: grpc.ChannelCredentials, n: int) -> list[grpc.aio.Channel]:
    # A local subchannel pool per channel: n TCP connections, which the
    # kernel spreads over the workers (SO_REUSEPORT).
    return [
        grpc.aio.secure_channel(address, creds, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(n)
    ]


async def test_two_workers_share_the_port_and_the_record(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    directory = tmp_path / "dev"
    config = Path(run("dev-init", str(directory), "--listen", address).stdout.strip())
    config.write_text(config.read_text().replace("[server]\n", "[server]\nworkers = 2\n", 1))
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(config)], stderr=subprocess.PIPE, env=_env()
    )
    backend = credentials(directory, "backend")
    admin = credentials(directory, "admin")
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)

    def timestamp(version: int, snapshot: int = 1) -> bytes:
        ts = Timestamp(version=version, expires=expires, snapshot_meta=MetaFile(snapshot))
        return Metadata(ts).signed_bytes

    try:
        await asyncio.to_thread(wait_healthy, address, proc, backend)
        workers = children(proc.pid)
        assert len(workers) == 2
        before = {pid: _cpu_ticks(pid) for pid in workers}
        channels = _channels(address, backend, 16)
        stubs = [pb_grpc.SignerStub(ch) for ch in channels]
        payload = Metadata(Targets(version=1, expires=expires)).signed_bytes

        # Load on every connection: distinct bins (dev-init's key declares bins:14,
        # "bins-0000".."bins-3fff"; an empty bin fits any of them), 64 in flight.
        gate = asyncio.Semaphore(64)

        async def sign_bin(i: int) -> None:
            async with gate:
                request = pb.SignRequest(key="online", role=f"bins-{i:04x}", payload=payload)
                await stubs[i % 16].Sign(request)

        await asyncio.gather(*(sign_bin(i) for i in range(400)))
        after = {pid: _cpu_ticks(pid) for pid in workers}
        assert all(after[pid] - before[pid] >= 5 for pid in workers), (before, after)

        # One client with several connections reaches every worker in a bulk re-sign.
        # The kernel spreads connections at random: with 16, the chance that a
        # worker gets none is 2 in 65536, and the load is big enough (dozens of
        # batches, hundreds of unary calls per worker) that each worker's CPU
        # clearly moves even when it holds only one or two of them.
        tls = directory / "tls"
        before = {pid: _cpu_ticks(pid) for pid in workers}
        async with AsyncClient(
            address,
            ca=tls / "ca.crt",
            cert=tls / "backend.crt",
            key=tls / "backend.key",
            connections=16,
        ) as client:
            outcomes = await client.sign_many(
                SignRequest("online", payload, f"bins-{1000 + i:04x}") for i in range(2000)
            )
            assert all(isinstance(o, SignedResult) for o in outcomes)
            after = {pid: _cpu_ticks(pid) for pid in workers}
            assert all(after[pid] - before[pid] >= 3 for pid in workers), (before, after)

            # Concurrent unary Signs take the client's connections in turn: every worker works.
            before = {pid: _cpu_ticks(pid) for pid in workers}
            gate = asyncio.Semaphore(32)

            async def sign_one(i: int) -> SignedResult:
                async with gate:
                    return await client.sign("online", payload, f"bins-{4000 + i:04x}")

            signed = await asyncio.gather(*(sign_one(i) for i in range(800)))
            assert len({r.audit_seq for r in signed}) == 800
            after = {pid: _cpu_ticks(pid) for pid in workers}
            assert all(after[pid] - before[pid] >= 3 for pid in workers), (before, after)

        # Equivocation race across workers: 16 different version-7 timestamps.
        outcomes = await asyncio.gather(
            *(
                stub.Sign(pb.SignRequest(key="online", payload=timestamp(7, snapshot=i + 1)))
                for i, stub in enumerate(stubs)
            ),
            return_exceptions=True,
        )
        granted = [o for o in outcomes if isinstance(o, pb.SignResponse)]
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert len(granted) == 1
        assert {e.code() for e in refused} == {grpc.StatusCode.FAILED_PRECONDITION}

        # A rollback is refused whichever worker takes it.
        rollbacks = await asyncio.gather(
            *(stub.Sign(pb.SignRequest(key="online", payload=timestamp(6))) for stub in stubs),
            return_exceptions=True,
        )
        assert all(isinstance(e, grpc.aio.AioRpcError) for e in rollbacks), "a rollback was signed"
        assert {e.code() for e in rollbacks} == {grpc.StatusCode.FAILED_PRECONDITION}

        # Rotation through one connection; every worker then signs with the new key.
        async with grpc.aio.secure_channel(address, admin) as ch:
            key_admin = pb_grpc.KeyAdminStub(ch)
            new = (await key_admin.RotateKey(pb.RotateKeyRequest(key="online"))).version
            await key_admin.ActivateKeyVersion(
                pb.ActivateKeyVersionRequest(key="online", version=new.version)
            )
        results = await asyncio.gather(
            *(
                stub.Sign(
                    pb.SignRequest(key="online", role=f"bins-{5000 + i:04x}", payload=payload)
                )
                for i, stub in enumerate(stubs)
            )
        )
        assert {r.signature.keyid for r in results} == {new.keyid}
        for ch in channels:
            await ch.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0
    log = proc.stderr.read().decode()
    assert "[worker 0]" in log and "[worker 1]" in log
    verified = run("audit", "verify", "--config", str(config))
    assert verified.stdout.startswith("OK:")
    exported = [
        json.loads(x)
        for x in run("audit", "export", "--config", str(config)).stdout.split("\n")
        if x
    ]
    signs = [
        r
        for r in exported
        if r["event"]["operation"] == "sign" and r["event"]["role"] == "timestamp"
    ]
    assert sum(r["event"]["outcome"] == "granted" for r in signs) == 1
