"""A Watch client that never reads cannot hang failing calls, health or drain (issue 12, review A).

A client may open ``grpc.health.v1.Health/Watch`` (open to anyone past TLS)
and set its HTTP/2 stream window to 0, so the server can never write the
answer. grpc-health's servicer wrote it while holding the lock that every
``set`` takes: each UNAVAILABLE Sign then hung on reporting its fault, and
health and drain froze with it. The Watch here is a hand-written HTTP/2
client on a real server.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tuf_signer.v1 import signer_pb2 as pb

from . import _h2raw as h2
from .conftest import Clock, Harness, start_harness
from .test_health import NOT_SERVING, RECOVERY_BOUND, SERVING, _config, _moved_away, _status

SETTINGS_INITIAL_WINDOW_SIZE = 0x4
# Generous on a busy machine; before the fix the Sign never answered at all.
ANSWER_BOUND = 10.0


@contextmanager
def _stalled_watch(port: int) -> Iterator[h2.Connection]:
    """A Watch on "" from a client whose stream window is 0 and that never opens it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(None)
    conn = h2.Connection(sock)
    zero_window = struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, 0)
    conn.send(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0, zero_window))
    reader = threading.Thread(target=conn._read, daemon=True)
    conn._reader = reader
    reader.start()
    stream = conn.start_stream("/grpc.health.v1.Health/Watch")
    conn.send_message(stream, health_pb2.HealthCheckRequest().SerializeToString())
    try:
        yield conn
    finally:
        conn.close()


async def _watch_sees(h: Harness, status: int, within: float) -> None:
    """A well-behaved Watch client sees ``status`` within ``within`` seconds."""
    call = health_pb2_grpc.HealthStub(h.channel).Watch(
        health_pb2.HealthCheckRequest(), timeout=within
    )
    try:
        async for answer in call:
            if answer.status == status:
                return
    finally:
        call.cancel()


async def test_stalled_watch_hangs_neither_a_failing_sign_nor_health(
    tmp_path: Path, softhsm: Any, clock: Clock
) -> None:
    # No periodic probe during the test: only the failing Sign can turn health.
    path = _config(tmp_path / "signer", softhsm, 300)
    h = await start_harness(path, clock)
    stopped = False
    try:
        await h.create_key("k")
        await h.sign("k", h.payloads.timestamp(1))
        with _stalled_watch(h.server.port):
            # The stalled Watch is in place once the server has acknowledged
            # our SETTINGS and answered a health call behind it.
            await _watch_sees(h, SERVING, ANSWER_BOUND)
            await asyncio.sleep(0.5)  # the servicer is now blocked writing to it
            with _moved_away(h.config.audit.path):
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await h.signer.Sign(
                        pb.SignRequest(key="k", payload=h.payloads.timestamp(2)),
                        timeout=ANSWER_BOUND,
                    )
                took = time.monotonic() - started
                assert failed.value.code() is grpc.StatusCode.UNAVAILABLE, failed.value.details()
                assert took < ANSWER_BOUND
                assert await _status(h) == NOT_SERVING
                await _watch_sees(h, NOT_SERVING, ANSWER_BOUND)
            # Recovery by the probe is published past the stalled Watch too.
            deadline = time.monotonic() + RECOVERY_BOUND + ANSWER_BOUND
            while await _status(h) != SERVING:
                assert time.monotonic() < deadline, "health did not turn SERVING again"
                await asyncio.sleep(0.05)
            await _watch_sees(h, SERVING, ANSWER_BOUND)
            await h.sign("k", h.payloads.timestamp(3))
            # Drain turns health NOT_SERVING and stops, stalled Watch or not.
            await h.channel.close()
            await asyncio.wait_for(h.server.stop(grace=1), ANSWER_BOUND * 2)
            stopped = True
    finally:
        if not stopped:
            await h.channel.close()
            await asyncio.wait_for(h.server.stop(grace=1), ANSWER_BOUND * 2)
