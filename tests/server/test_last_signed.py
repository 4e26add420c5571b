"""``tuf_signer_role_last_signed_timestamp_seconds`` (issue 15): when each role was last
signed, from its record; for bins the most recent bin. A frozen repository shows as
a timestamp whose last signing grows old long before it expires."""

from __future__ import annotations

from datetime import datetime, timedelta

from prometheus_client import REGISTRY

from tests.server.conftest import Harness, bin_role
from tuf_signer.v1 import signer_pb2 as pb


def last_signed(key: str, role: str) -> float | None:
    return REGISTRY.get_sample_value(
        "tuf_signer_role_last_signed_timestamp_seconds", {"key": key, "role": role}
    )


def record_time(h: Harness, seq: int) -> float:
    """The Unix time of record ``seq``, read back through the audit log."""
    (record,) = [r for r in h.records() if r.seq == seq]
    return datetime.fromisoformat(record.event.time.replace("Z", "+00:00")).timestamp()


async def test_the_last_signing_of_each_role_is_its_record_time(harness: Harness) -> None:
    h = harness
    watch = h.server.freshness
    assert watch is not None
    await h.create_key("lived")
    p = h.payloads
    snap = await h.sign("lived", p.snapshot(1), role="snapshot")
    h.clock.now += timedelta(minutes=1)
    first = p.timestamp(1)  # names snapshot version 1, signed above
    ts1 = await h.sign("lived", first, role="timestamp")
    h.clock.now += timedelta(minutes=1)
    newest_bin = await h.sign("lived", p.targets(1, role=bin_role(7)), role=bin_role(7))
    h.clock.now += timedelta(minutes=1)
    # An older bin signed later in the test's time would be newer: sign a second
    # bin now, then the first again, so "most recent" is not "first" or "last listed".
    older_bin = await h.sign("lived", p.targets(1, role=bin_role(3)), role=bin_role(3))
    h.clock.now += timedelta(minutes=1)
    newest_bin = await h.sign("lived", p.targets(2, role=bin_role(7)), role=bin_role(7))

    await watch.tick()
    assert last_signed("lived", "timestamp") == record_time(h, ts1.audit_seq)
    assert last_signed("lived", "snapshot") == record_time(h, snap.audit_seq)
    assert last_signed("lived", "bins") == record_time(h, newest_bin.audit_seq)
    assert record_time(h, newest_bin.audit_seq) > record_time(h, older_bin.audit_seq)
    assert last_signed("lived", bin_role(7)) is None  # no series per bin
    assert last_signed("lived", "targets") is None  # never signed: no series

    # Time passes without a new timestamp: the gauge stays (a replay is no refresh).
    h.clock.now += timedelta(minutes=10)
    replay = await h.sign("lived", first, role="timestamp")
    assert replay.replayed
    await watch.tick()
    assert last_signed("lived", "timestamp") == record_time(h, ts1.audit_seq)

    # A new version moves it to that version's record.
    ts2 = await h.sign("lived", p.timestamp(2), role="timestamp")
    await watch.tick()
    assert last_signed("lived", "timestamp") == record_time(h, ts2.audit_seq)
    assert last_signed("lived", "timestamp") == h.clock.now.timestamp()

    # A reset mark is no signing: the series goes (as the expiry series does).
    await h.admin.ResetRoleState(
        pb.ResetRoleStateRequest(key="lived", role="snapshot", version=0, reason="test reset")
    )
    await watch.tick()
    assert last_signed("lived", "snapshot") is None
    assert last_signed("lived", "timestamp") == record_time(h, ts2.audit_seq)
