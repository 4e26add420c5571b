"""The ops port's connection limits: idle HTTP/2 connections never starve the probes."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tuf_signer.server import _ops
from tuf_signer.server._ops import OpsListener

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


async def status_line(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 2)
    writer.close()
    return data.split(b"\r\n")[0]


async def hold_h2(port: int, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    held = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREFACE)
        await writer.drain()
        held.append((reader, writer))
    return held


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        while await asyncio.wait_for(reader.read(65536), seconds):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


async def test_idle_http2_connections_leave_the_probes_answering() -> None:
    # The review's attack: 64 connections that send only the HTTP/2 preface, held open.
    ops = OpsListener("127.0.0.1:0", lambda: True)
    port = await ops.start()
    held = await hold_h2(port, 64)
    try:
        await asyncio.sleep(0.5)
        start = time.monotonic()
        assert await status_line(port, "/healthz") == b"HTTP/1.1 200 OK"
        assert await status_line(port, "/readyz") == b"HTTP/1.1 200 OK"
        assert time.monotonic() - start < 1.0
    finally:
        for _, writer in held:
            writer.close()
        await ops.stop()


async def test_one_peer_holds_only_its_share_of_spliced_connections() -> None:
    ops = OpsListener("127.0.0.1:0", lambda: True)
    port = await ops.start()
    held = await hold_h2(port, _ops._MAX_SPLICED_PER_PEER)
    try:
        await asyncio.sleep(0.3)
        (extra,) = await hold_h2(port, 1)
        assert await closed_within(extra[0], 2)
        assert not await closed_within(held[0][0], 0.3)  # the share stays open
    finally:
        for _, writer in held:
            writer.close()
        await ops.stop()


async def test_an_idle_splice_is_cut() -> None:
    ops = OpsListener("127.0.0.1:0", lambda: True, splice_idle=0.5)
    port = await ops.start()
    ((reader, writer),) = await hold_h2(port, 1)
    try:
        # The gRPC server answers the preface with its SETTINGS, then nothing moves.
        assert await closed_within(reader, 3)
    finally:
        writer.close()
        await ops.stop()


async def test_a_watch_is_cut_at_the_splice_lifetime() -> None:
    ops = OpsListener("127.0.0.1:0", lambda: True, splice_lifetime=1.0)
    port = await ops.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
            start = time.monotonic()
            first = await call.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            # Readiness stays the same, so nothing more comes: the splice ends the stream.
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await asyncio.wait_for(call.read(), 5)
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - start < 4
    finally:
        await ops.stop()
