"""The freshness watch (issue 15, item 3): a role nearing expiry unrefreshed is
warned about once, in the log and on the record; bins are one series per key."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.server.conftest import Harness, bin_role
from tuf_signer.model import AuditEvent
from tuf_signer.v1 import signer_pb2 as pb

MARGIN = 6 * 3600  # the default ops.expiry_margin_seconds


def expiry(key: str, role: str) -> float | None:
    return REGISTRY.get_sample_value("tuf_signer_role_expiry_seconds", {"key": key, "role": role})


def warnings(h: Harness) -> list[AuditEvent]:
    return [r.event for r in h.records() if r.event.operation == "expiry-warning"]


async def test_a_role_in_the_margin_is_warned_about_once(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness
    watch = h.server.freshness
    assert watch is not None
    await h.create_key("fresh")
    p = h.payloads
    # Timestamp for a day, snapshot for an hour (inside the margin), two bins.
    await h.sign("fresh", p.snapshot(1, expires=p.expires(3600)), role="snapshot")
    await h.sign("fresh", p.timestamp(1, expires=p.expires(86400)), role="timestamp")
    for i, seconds in ((1, 7200), (2, 4000)):
        role = bin_role(i)
        await h.sign("fresh", p.targets(1, role=role, expires=p.expires(seconds)), role=role)

    with caplog.at_level(logging.WARNING, "tuf_signer.server._freshness"):
        recorded = await watch.tick()
    assert expiry("fresh", "timestamp") == 86400
    assert expiry("fresh", "snapshot") == 3600
    assert expiry("fresh", "bins") == 4000  # the soonest bin; no series per bin
    assert expiry("fresh", bin_role(1)) is None
    assert sorted((e.role, e.metadata_version) for e in recorded) == [
        (bin_role(2), 1),
        ("snapshot", 1),
    ]
    on_record = {e.role: e for e in warnings(h)}
    assert sorted(on_record) == sorted([bin_role(2), "snapshot"])
    assert on_record[bin_role(2)].detail["roles"] == 2  # the key's bins, as one warning
    assert len([r for r in caplog.records if "expiry_margin_seconds" in r.getMessage()]) == 2
    snapshot = next(e for e in warnings(h) if e.role == "snapshot")
    assert snapshot.expires == (p.expires(3600)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "has not been re-signed" in snapshot.reason

    # More ticks, time passing: nothing new on the record.
    h.clock.now += timedelta(minutes=10)
    assert await watch.tick() == []
    assert expiry("fresh", "snapshot") == 3000
    assert len(warnings(h)) == 2

    # Re-signed out of the margin, then left to age into it again: one new warning.
    await h.sign("fresh", p.snapshot(2, expires=p.expires(MARGIN + 600)), role="snapshot")
    assert await watch.tick() == []
    h.clock.now += timedelta(minutes=20)
    (again,) = await watch.tick()
    assert (again.role, again.metadata_version) == ("snapshot", 2)
    assert len(warnings(h)) == 3


async def test_gauges_follow_the_registry(harness: Harness) -> None:
    h = harness
    assert h.server.freshness is not None
    await h.create_key("counted")
    await h.admin.RotateKey(pb.RotateKeyRequest(key="counted"))  # a PENDING version
    await h.server.freshness.tick()
    pending = REGISTRY.get_sample_value("tuf_signer_key_versions", {"state": "pending"})
    active = REGISTRY.get_sample_value("tuf_signer_key_versions", {"state": "active"})
    assert pending == 1 and active == 1
    assert REGISTRY.get_sample_value("tuf_signer_expiry_margin_seconds") == MARGIN
    size = REGISTRY.get_sample_value("tuf_signer_audit_tree_size")
    assert size == len(h.records())


async def test_gauges_are_set_at_start_without_a_warning(
    harness: Harness, restart: Callable[[Harness], Any]
) -> None:
    """The gauges exist from the first scrape on, not one interval after start,
    and that first pass records nothing (the first warning stays one interval away)."""
    h = harness
    await h.create_key("early")
    p = h.payloads
    await h.sign("early", p.snapshot(1, expires=p.expires(3600)), role="snapshot")  # in the margin
    h = await restart(h)  # ops.freshness_interval_seconds is 60: no tick in this test
    for _ in range(50):
        if expiry("early", "snapshot") is not None:
            break
        await asyncio.sleep(0.05)
    assert expiry("early", "snapshot") == 3600
    assert REGISTRY.get_sample_value("tuf_signer_audit_tree_size") == len(h.records())
    assert REGISTRY.get_sample_value("tuf_signer_key_versions", {"state": "active"}) == 1
    assert warnings(h) == []


_DROP = """
from tuf_signer.server import _metrics
_metrics.ROLE_EXPIRY.labels("k", "snapshot").set(100)
_metrics.ROLE_EXPIRY.labels("k", "timestamp").set(200)
_metrics.drop_role_expiry("k", "snapshot")
for family in _metrics.registry().collect():
    for s in family.samples:
        if s.name == "tuf_signer_role_expiry_seconds":
            print(s.labels["role"], s.value)
"""


@pytest.mark.parametrize("workers", [False, True], ids=["one-process", "multiprocess"])
def test_a_dropped_role_series_no_longer_reads_its_last_value(
    tmp_path: Path, workers: bool
) -> None:
    """A reset role state drops its series; with workers (prometheus_client's files,
    where ``remove`` does nothing) it reads NaN, which no threshold alert matches."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if workers:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", _DROP], env=env, capture_output=True, text=True, check=True
    ).stdout
    values = {role: float(v) for role, v in (line.split() for line in out.splitlines())}
    assert values["timestamp"] == 200
    if workers:
        assert math.isnan(values["snapshot"])
    else:
        assert "snapshot" not in values


def test_empty_bin_marks_are_not_a_bin_left_to_expire() -> None:
    """An empty bin's mark is never signed again: it must not hold the bins series down."""
    from datetime import UTC, datetime

    from tuf_signer.model import RoleState
    from tuf_signer.server._freshness import soonest

    now = datetime(2026, 12, 1, tzinfo=UTC)

    def state(role: str, expires: str) -> RoleState:
        return RoleState(
            key_name="k",
            role=role,
            version=1,
            payload_sha256="00" * 32,
            keyid="ab",
            key_version=1,
            signature="",
            expires=expires,
            audit_seq=1,
        )

    states = [
        state("bins-*empty-" + "11" * 32, "2026-11-30T00:00:00Z"),  # long expired, never re-signed
        state(bin_role(0), "2026-12-01T10:00:00Z"),
    ]
    (bins,) = soonest(states, now)
    assert (bins.series, bins.state.role, bins.left, bins.count) == ("bins", bin_role(0), 36000, 1)
