"""Bounded resources (issue 12, finding 4): what abusive HTTP/2 clients can hold.

The abusers are hand-written HTTP/2 clients (``_h2raw``) against a real server
on loopback; a well-behaved client is a plain gRPC channel.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tuf_signer.v1 import signer_pb2 as pb

from . import _h2raw as h2
from .conftest import Clock, Harness, start_harness, stop_harness, write_config

HEALTH = "/grpc.health.v1.Health/Check"


def _config(directory: Path, hsm: Any, server: str = "", limits: str = "") -> Path:
    path = write_config(directory, hsm)
    text = path.read_text().replace("drain_seconds = 5\n", "drain_seconds = 5\n" + server)
    text = text.replace('"targets", "bins-*"]', '"targets", "bins-*", "r-*"]')
    path.write_text(text + ("\n[limits]\n" + limits if limits else ""))
    return path


async def _started(tmp_path: Path, hsm: Any, clock: Clock, **kw: str) -> Harness:
    return await start_harness(_config(tmp_path / "signer", hsm, **kw), clock)


async def _opened(port: int) -> h2.Connection:
    return await asyncio.to_thread(h2.Connection.open, port)


async def _health_ok(port: int) -> None:
    """A well-behaved client on a fresh connection is served."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(HEALTH, lambda b: b, lambda b: b)
        await call(b"", timeout=5)


# Bounds on a busy 2-core machine: poll for what should happen at once, up to
# a deadline far above the nominal time, and check the outcome after.
DEADLINE = 20.0


async def _until(condition: Callable[[], bool], seconds: float = DEADLINE) -> bool:
    """Poll ``condition`` every 50 ms for up to ``seconds``; its last value."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= end:
            return condition()
        await asyncio.sleep(0.05)
    return True


async def _health_ok_soon(port: int, seconds: float = DEADLINE) -> None:
    """``_health_ok``, retried until ``seconds`` have passed (a slot freeing up)."""
    end = time.monotonic() + seconds
    while True:
        try:
            await _health_ok(port)
            return
        except grpc.aio.AioRpcError:
            if time.monotonic() >= end:
                raise
            await asyncio.sleep(0.2)


async def test_default_limits_are_advertised(harness: Harness) -> None:
    """Before: no SETTINGS_MAX_CONCURRENT_STREAMS at all (unbounded streams)."""
    conn = await _opened(harness.server.port)
    try:
        assert conn.settings.get(h2.SETTINGS_MAX_CONCURRENT_STREAMS) == 300
        assert conn.settings.get(h2.SETTINGS_MAX_HEADER_LIST_SIZE) == 16 * 1024
    finally:
        await asyncio.to_thread(conn.close)


async def test_streams_above_the_limit_are_refused(
    tmp_path: Path, softhsm: Any, clock: Clock
) -> None:
    h = await _started(tmp_path, softhsm, clock, server="max_streams_per_connection = 5\n")
    conn = await _opened(h.server.port)
    try:
        assert conn.settings[h2.SETTINGS_MAX_CONCURRENT_STREAMS] == 5
        streams = [conn.start_stream(HEALTH) for _ in range(12)]
        await _until(lambda: all(s in conn.reset_codes for s in streams[5:]))
        refused = [s for s in streams if conn.reset_codes.get(s) == h2.REFUSED_STREAM]
        assert refused == streams[5:]  # before: all 12 held open
        assert conn.alive()
        await _health_ok(h.server.port)
    finally:
        await asyncio.to_thread(conn.close)
        await stop_harness(h)


async def test_connections_above_the_limit_are_closed(
    tmp_path: Path, softhsm: Any, clock: Clock
) -> None:
    h = await _started(tmp_path, softhsm, clock, server="max_connections = 3\n")
    conns = [await _opened(h.server.port) for _ in range(3)]
    try:
        late = []
        for _ in range(3):
            try:
                late.append(await _opened(h.server.port))
            except (OSError, TimeoutError):
                late.append(None)
        await _until(lambda: not any(c is not None and c.alive() for c in late))
        assert not any(c is not None and c.alive() for c in late)  # before: all 6 open
        assert all(c.alive() for c in conns)
    finally:
        for c in [*conns, *(c for c in late if c is not None)]:
            await asyncio.to_thread(c.close)
    # The slots come back once the abuser's connections are gone.
    try:
        await _health_ok_soon(h.server.port)
    finally:
        await stop_harness(h)


async def test_streams_that_never_send_are_reaped(
    tmp_path: Path, softhsm: Any, clock: Clock
) -> None:
    """Before: never reaped, not even past the call deadline (the issue waited 30 s+)."""
    h = await _started(
        tmp_path,
        softhsm,
        clock,
        server="max_connection_age_seconds = 2\ncall_deadline_seconds = 2\n"
        "check_timeout_seconds = 1\n",
    )
    conn = await _opened(h.server.port)
    try:
        start = time.monotonic()
        streams = [conn.start_stream(HEALTH) for _ in range(20)]
        # Age (gRPC jitters it by 10%) + grace (the call deadline): 4.2 s nominal;
        # generous slack for a busy machine. Before, they were never reaped (30 s+).
        bound = 1.1 * 2 + 2 + 10
        while time.monotonic() - start < bound and conn.alive():
            await asyncio.sleep(0.2)
        assert conn.goaway_at is not None
        assert not conn.alive()
        assert set(conn.ended) >= set(streams) or conn.closed_at is not None
        assert conn.closed_at is not None and conn.closed_at - start < bound
        await _health_ok(h.server.port)
    finally:
        await asyncio.to_thread(conn.close)
        await stop_harness(h)


async def test_oversized_header_lists_are_refused(
    tmp_path: Path, softhsm: Any, clock: Clock
) -> None:
    h = await _started(tmp_path, softhsm, clock, server="max_header_bytes = 4096\n")
    conn = await _opened(h.server.port)
    try:
        assert conn.settings[h2.SETTINGS_MAX_HEADER_LIST_SIZE] == 4096
        small = conn.start_stream(HEALTH, [(b"x-pad", b"a" * 1000)])
        big = conn.start_stream(HEALTH, [(b"x-pad", b"a" * 8000)])
        await _until(lambda: big in conn.ended)
        assert big in conn.ended  # before: accepted, then waiting for its message
        assert small not in conn.ended  # a header list under the limit is accepted
        assert conn.alive()
    finally:
        await asyncio.to_thread(conn.close)
        await stop_harness(h)


def _rss_mib() -> float:
    """This process's RSS, which is the server's: the harness runs it in process
    (with the test's own raw clients, whose buffers are small beside it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_many_idle_streams_stay_bounded(tmp_path: Path, softhsm: Any, clock: Clock) -> None:
    """2,000 streams that never send, over 20 connections, held for the connection age.

    Only ``max_calls`` of them are held; the rest are refused at once, and
    all are reaped by the connection age. (The issue: 50,000 such streams took
    a server to 537 MiB, never reaped.)
    """
    h = await _started(
        tmp_path,
        softhsm,
        clock,
        server="max_calls = 200\nmax_connection_age_seconds = 4\ncall_deadline_seconds = 2\n"
        "check_timeout_seconds = 1\n",
    )
    conns: list[h2.Connection] = []
    try:
        await _health_ok(h.server.port)
        base = _rss_mib()
        start = time.monotonic()
        for _ in range(20):
            conn = await _opened(h.server.port)
            conns.append(conn)
            for _ in range(100):
                conn.start_stream(HEALTH)

        def held() -> int:
            return sum(100 - len(c.ended) for c in conns if c.alive())

        await _until(lambda: held() <= 200, seconds=1.1 * 4)  # refused at once, before the age
        assert held() <= 200  # before: all 2,000 held
        # The exact bound is ``held`` above; RSS is a coarse check against growth
        # without bound (the 537 MiB). 128 MiB, not 64: on a busy machine
        # gRPC's threads and glibc's per-thread arenas alone move it by tens of MiB.
        peak = _rss_mib()
        assert peak - base < 128, (base, peak)
        # Age (jittered 10%) + grace, 6.4 s nominal; slack for a busy machine.
        await _until(
            lambda: not any(c.alive() for c in conns), 1.1 * 4 + 2 + 10 - (time.monotonic() - start)
        )
        assert not any(c.alive() for c in conns)
        await _health_ok_soon(h.server.port)
        assert _rss_mib() - base < 128
    finally:
        for conn in conns:
            await asyncio.to_thread(conn.close)
        await stop_harness(h)


async def test_inflight_bytes_cap_refuses_and_releases(
    tmp_path: Path, softhsm: Any, clock: Clock
) -> None:
    """Before: four concurrent max-size SignBatch calls all ran (RSS to 1 GiB)."""
    h = await _started(
        tmp_path,
        softhsm,
        clock,
        server="max_batch_bytes = 2097152\n",
        limits=f"max_inflight_bytes = {2 * 1024 * 1024}\n",
    )
    try:
        await h.create_key("k", roles=[(f"r-{i}", 86400) for i in range(40)], bins=None)

        def batch(first: int) -> pb.SignBatchRequest:
            big = h.payloads.targets(1, n_targets=1500, salt=str(first))
            assert len(big) > 128 * 1024
            return pb.SignBatchRequest(
                requests=[
                    pb.SignRequest(key="k", role=f"r-{first + i}", payload=big) for i in range(8)
                ]
            )

        requests = [batch(8 * i) for i in range(4)]
        assert all(sum(len(r.payload) for r in b.requests) > 1024 * 1024 for b in requests)
        results = await asyncio.gather(
            *(h.signer.SignBatch(b, timeout=20) for b in requests), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert refused, "no call was refused: the cap held nothing back"
        for error in refused:
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limits.max_inflight_bytes" in (error.details() or "")
        assert len(refused) < len(results)
        for result in results:
            if not isinstance(result, grpc.aio.AioRpcError):
                assert [r.code for r in result.results] == [0] * 8
        assert h.server.guard.inflight_bytes == 0  # every call gave its bytes back
        # Released: the refused batches now go through one at a time.
        for i, result in enumerate(results):
            if isinstance(result, grpc.aio.AioRpcError):
                done = await h.signer.SignBatch(requests[i], timeout=20)
                assert [r.code for r in done.results] == [0] * 8
        await h.server.service.flush_refusals()
        (summary,) = [r.event for r in h.records() if r.event.operation == "refused-calls"]
        assert summary.status == "RESOURCE_EXHAUSTED"
        assert summary.detail["count"] == len(refused)
    finally:
        await stop_harness(h)


async def _timed_health_calls(port: int, n: int) -> tuple[dict[str, int], list[float]]:
    """``n`` Health calls, ten at a time, on a new connection: status counts and latencies.

    Each call has 10 s: one slower than that fails DEADLINE_EXCEEDED in the counts.
    """
    codes: dict[str, int] = {}
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(HEALTH, lambda b: b, lambda b: b)
        await call(b"", timeout=5)  # connected before the timing starts
        slots = asyncio.Semaphore(10)

        async def one() -> None:
            async with slots:
                start = time.monotonic()
                try:
                    await call(b"", timeout=10)
                    code = "OK"
                except grpc.aio.AioRpcError as e:
                    code = e.code().name
                latencies.append(time.monotonic() - start)
                codes[code] = codes.get(code, 0) + 1

        await asyncio.gather(*(one() for _ in range(n)))
    return codes, sorted(latencies)


@pytest.mark.slow
async def test_a_reset_flood_does_not_cancel_other_clients_calls(harness: Harness) -> None:
    """Rapid reset (CVE-2023-44487) from 4 connections beside a client on its own.

    Before: 91-98 of the 100 calls failed CANCELLED within a millisecond (gRPC
    cancelled calls queued for the event loop past 1,000, and the resets kept
    it over). Now each connection's reset streams count against its own limit
    until freed, and the queue may hold every stream of every connection.
    """
    port = harness.server.port
    flooder = subprocess.Popen(
        [sys.executable, h2.__file__, str(port), "60", "4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert flooder.stdout is not None
    try:
        # The flooder says "flooding" once its connections are open.
        started = await asyncio.wait_for(asyncio.to_thread(flooder.stdout.readline), 30)
        assert started.strip() == "flooding"
        await asyncio.sleep(0.5)  # the flood is under way
        codes, latencies = await _timed_health_calls(port, 100)
        assert flooder.poll() is None  # flooding all along (it floods for 60 s)
    finally:
        flooder.terminate()  # it stops and prints how many streams it opened
        # A flooding thread blocked in send() stops only once the server has
        # read what it sent; on a loaded machine that took over 30 s. The flood
        # ends by itself after its 60 s anyway.
        out, _ = await asyncio.to_thread(flooder.communicate, timeout=120)
    streams = int(out.split()[-1])
    # A stalled flooder would make this test pass without a flood. Measured on
    # 2 cores: hundreds of thousands of streams; 10,000 is a floor far below.
    assert streams >= 10_000, streams
    assert codes == {"OK": 100}
    # Measured on 2 cores with the flooder beside the server: median 0.15-0.7 s,
    # slowest 1-1.7 s (a call waits behind up to 4 x 300 dead calls). Bounds
    # widened for a busy machine: median 3 s, slowest under each call's 10 s
    # (checked by the counts). Before: 91-98 of 100 failed CANCELLED at once.
    assert latencies[50] < 3, latencies
    await _health_ok(port)
