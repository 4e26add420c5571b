"""A real server through an HSM outage (issue 12, finding 1).

The SoftHSM token the server signs with ("test-2", so the other tests' token
stays put) is moved out of SoftHSM's token directory for 1.5 s while clients
sign, then moved back. Clients get only OK or UNAVAILABLE (never INTERNAL),
every refusal is on the record, health goes NOT_SERVING and comes back, and
signs succeed again within ``RECOVERY_BOUND`` seconds, with no restart.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.keys.test_pkcs11_recovery import RECOVERY_BOUND, token_away
from tuf_signer.model import Outcome

from .conftest import Clock, bin_role, start_harness, stop_harness, write_config

TOKEN = "test-2"
HEALTH_INTERVAL = 0.5  # seconds between the server's health probes
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow
async def test_token_away_and_back_under_load(tmp_path: Path, softhsm: Any) -> None:
    hsm = dataclasses.replace(softhsm, token_label=TOKEN)
    path = write_config(tmp_path / "signer", hsm)
    path.write_text(
        path.read_text().replace("[server]\n", f"[server]\nhealth_interval = {HEALTH_INTERVAL}\n")
    )
    h = await start_harness(path, Clock())
    try:
        await h.create_key("k")
        health = health_pb2_grpc.HealthStub(h.channel)
        statuses: list[tuple[float, grpc.StatusCode]] = []
        healths: list[tuple[float, int]] = []
        stop = asyncio.Event()

        async def sign(task: int) -> None:
            role, version = bin_role(task), 1
            while not stop.is_set():
                payload = h.payloads.targets(version, role=role)
                try:
                    await h.sign("k", payload, role=role)
                    code = grpc.StatusCode.OK
                    version += 1
                except grpc.aio.AioRpcError as e:
                    code = e.code()
                    await asyncio.sleep(0.01)
                statuses.append((time.monotonic(), code))

        async def watch_health() -> None:
            while not stop.is_set():
                r = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                healths.append((time.monotonic(), r.status))
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(sign(i)) for i in range(4)]
        tasks.append(asyncio.create_task(watch_health()))
        try:
            await asyncio.sleep(0.5)
            with token_away(softhsm.conf, TOKEN):
                away_at = time.monotonic()
                await asyncio.sleep(1.5)
            back_at = time.monotonic()
            await asyncio.sleep(RECOVERY_BOUND + HEALTH_INTERVAL + 0.5)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)

        codes = collections.Counter(code for _, code in statuses)
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
        assert codes[grpc.StatusCode.UNAVAILABLE] > 0
        first_ok = min(t for t, c in statuses if c is grpc.StatusCode.OK and t > back_at)
        assert first_ok - back_at <= RECOVERY_BOUND
        late = {c for t, c in statuses if t > back_at + RECOVERY_BOUND}
        assert late == {grpc.StatusCode.OK}
        # Health: down during the outage, SERVING within a probe interval of signs working.
        assert any(s != SERVING for t, s in healths if away_at < t < back_at + RECOVERY_BOUND)
        serving_again = min(t for t, s in healths if s == SERVING and t > max(back_at, first_ok))
        assert serving_again - max(back_at, first_ok) <= RECOVERY_BOUND + HEALTH_INTERVAL
        assert all(
            s == SERVING for t, s in healths if t > back_at + RECOVERY_BOUND + 2 * HEALTH_INTERVAL
        )
        # Every refusal is on the record, as UNAVAILABLE.
        refused = [
            r.event
            for r in h.records()
            if r.event.operation == "sign" and r.event.outcome is Outcome.REFUSED
        ]
        assert len(refused) == codes[grpc.StatusCode.UNAVAILABLE]
        assert {e.status for e in refused} == {"UNAVAILABLE"}
        assert all(f"'{TOKEN}'" in e.reason for e in refused)
    finally:
        await stop_harness(h)
