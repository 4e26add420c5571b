"""Version steps are bounded, and an admin can move a mark (issue 10, finding 8).

Before: snapshot version 2**63 - 1 was granted, and nothing could be signed for
that role with that key ever after (the mark is per key name and survives
rotation). Now a version more than ``max_version_step`` above the mark is
refused, and ``ResetRoleState`` (KeyAdmin) moves a mark, on the record.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tuf_signer.audit import SqliteAuditStore, verify_store
from tuf_signer.config import load_config
from tuf_signer.model import Outcome
from tuf_signer.server import SignerServer
from tuf_signer.v1 import signer_pb2 as pb

from .conftest import (
    ADMIN,
    BACKEND,
    Clock,
    Harness,
    Payloads,
    Pki,
    TlsHarness,
    start_harness,
    stop_harness,
    write_tls_config,
)

MAX = 2**63 - 1
ROLES = [("timestamp", 86400), ("snapshot", 86400)]


async def _create(h: Harness) -> None:
    await h.admin.CreateKey(
        pb.CreateKeyRequest(
            name="k",
            roles=[pb.RoleRule(pattern=p, max_validity_seconds=s) for p, s in ROLES],
            activate=True,
        )
    )


async def _reset(
    h: Harness, version: int, reason: str = "recover from a fast-forward", role: str = "snapshot"
) -> pb.ResetRoleStateResponse:
    return await h.admin.ResetRoleState(
        pb.ResetRoleStateRequest(key="k", role=role, version=version, reason=reason)
    )


async def _mark(h: Harness, role: str = "snapshot") -> int | None:
    r = await h.signer.GetRoleState(pb.GetRoleStateRequest(key="k", role=role))
    return r.states[0].version if r.states else None


def _audit_verify(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuf_signer.cli", "audit", "verify", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )


@pytest.mark.parametrize(
    ("before", "version", "since"),
    [
        pytest.param(1, MAX, r"the mark is version 1\.", id="f8-fast-forward-refused-by-step"),
        pytest.param(
            None, MAX, r"no version was signed yet \(the mark counts from 0\)\.", id="f8-first-sign"
        ),
        pytest.param(1, 1_000_002, r"the mark is version 1\.", id="f8-one-past-the-step"),
    ],
)
async def test_f8_version_fast_forward_is_refused(
    harness: Harness, before: int | None, version: int, since: str
) -> None:
    await _create(harness)
    if before is not None:
        await harness.sign("k", harness.payloads.snapshot(before))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await harness.sign("k", harness.payloads.snapshot(version))
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert details.startswith(f"version step: version {version} is ")
    assert "more than max_version_step 1000000" in details
    assert "tuf-signer keys reset-role KEY ROLE --version N --reason TEXT" in details
    assert re.search(since, details)
    [record] = [r for r in harness.records() if r.event.metadata_version == version]
    assert (record.event.outcome, record.event.status) == (Outcome.REFUSED, "FAILED_PRECONDITION")
    assert await _mark(harness) == before
    # The role is not bricked: the next version is granted.
    nxt = (before or 0) + 1
    assert (await harness.sign("k", harness.payloads.snapshot(nxt))).metadata_version == nxt


async def test_f8_step_within_the_bound_is_granted(harness: Harness) -> None:
    await _create(harness)
    await harness.sign("k", harness.payloads.snapshot(1))
    granted = await harness.sign("k", harness.payloads.snapshot(1_000_001))
    assert granted.metadata_version == 1_000_001


@pytest.fixture
async def unbounded(config_path: Path, clock: Clock) -> AsyncIterator[Harness]:
    """A server whose snapshot step is unbounded, as every server was before."""
    with config_path.open("a") as config:
        config.write(f"\n[policy]\nmax_version_step = {{ snapshot = {MAX} }}\n")
    h = await start_harness(config_path, clock)
    try:
        yield h
    finally:
        await stop_harness(h)


async def test_f8_admin_reset_recovers_a_bricked_role(unbounded: Harness) -> None:
    h = unbounded
    await _create(h)
    await h.sign("k", h.payloads.snapshot(5))
    await h.sign("k", h.payloads.snapshot(MAX))  # the fast-forward of the finding
    with pytest.raises(grpc.aio.AioRpcError) as bricked:
        await h.sign("k", h.payloads.snapshot(6))
    assert bricked.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    reset = await _reset(h, 5, reason="undo fast-forward by compromised backend (INC-42)")
    assert (reset.state.key, reset.state.role, reset.state.version) == ("k", "snapshot", 5)
    assert (reset.state.payload_sha256, reset.state.expires) == ("", "")
    assert reset.state.audit_seq == reset.audit_seq
    assert await _mark(h) == 5
    with pytest.raises(grpc.aio.AioRpcError) as at_mark:
        await h.sign("k", h.payloads.snapshot(5))
    assert at_mark.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "the mark an admin reset set" in (at_mark.value.details() or "")
    assert (await h.sign("k", h.payloads.snapshot(6))).metadata_version == 6

    [record] = [r for r in h.records() if r.seq == reset.audit_seq]
    event = record.event
    assert (event.operation, event.outcome, event.identity) == (
        "reset-role-state",
        Outcome.GRANTED,
        "anonymous",
    )
    assert (event.key_name, event.role, event.metadata_version) == ("k", "snapshot", 5)
    assert event.detail == {"reason": "undo fast-forward by compromised backend (INC-42)"}
    verify = _audit_verify(h.config.path)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith("OK: ")


async def test_f8_reset_to_zero_forgets_and_up_lets_a_repository_migrate(harness: Harness) -> None:
    await _create(harness)
    await harness.sign("k", harness.payloads.timestamp(3))
    await _reset(harness, 0, role="timestamp", reason="start over")
    assert (await harness.sign("k", harness.payloads.timestamp(1))).metadata_version == 1
    # A repository arriving at version 5,000,000 moves the mark there first.
    await _reset(harness, 4_999_999, role="timestamp", reason="migrating from in-process keys")
    granted = await harness.sign("k", harness.payloads.timestamp(5_000_000))
    assert granted.metadata_version == 5_000_000
    with SqliteAuditStore(harness.config.audit.path) as store:
        verify_store(store)


@pytest.mark.parametrize(
    ("request_", "code", "match"),
    [
        pytest.param(
            pb.ResetRoleStateRequest(key="k", role="snapshot", version=1),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"^a reason is required",
            id="f8-reset-reason-missing",
        ),
        pytest.param(
            pb.ResetRoleStateRequest(key="k", role="snapshot", version=1, reason="   "),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"^a reason is required",
            id="f8-reset-reason-blank",
        ),
        pytest.param(
            pb.ResetRoleStateRequest(key="k", role="snapshot", version=1, reason="a\x1b[2Kb"),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"^the reason may only hold printable characters",
            id="f8-reset-reason-escape",
        ),
        pytest.param(
            pb.ResetRoleStateRequest(key="k", role="snapshot", version=1, reason="x" * 1025),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"^the reason is longer than 1024 characters$",
            id="f8-reset-reason-too-long",
        ),
        pytest.param(
            pb.ResetRoleStateRequest(key="k", role="snapshot", version=2**63, reason="r"),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"^version must be between 0 and 2\*\*63-1",
            id="f8-reset-version-too-large",
        ),
        pytest.param(
            pb.ResetRoleStateRequest(key="nope", role="snapshot", version=1, reason="r"),
            grpc.StatusCode.NOT_FOUND,
            r"^unknown key 'nope'$",
            id="f8-reset-unknown-key",
        ),
        pytest.param(
            pb.ResetRoleStateRequest(key="k", role="root", version=1, reason="r"),
            grpc.StatusCode.PERMISSION_DENIED,
            r"root",
            id="f8-reset-role-not-allowed",
        ),
        pytest.param(
            pb.ResetRoleStateRequest(key="k", version=1, reason="r"),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"^role is required$",
            id="f8-reset-role-missing",
        ),
    ],
)
async def test_f8_bad_reset_is_refused_and_recorded(
    harness: Harness, request_: pb.ResetRoleStateRequest, code: grpc.StatusCode, match: str
) -> None:
    await _create(harness)
    await harness.sign("k", harness.payloads.snapshot(7))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await harness.admin.ResetRoleState(request_)
    assert refused.value.code() is code
    assert re.search(match, refused.value.details() or "")
    record = harness.records()[-1]
    assert (record.event.operation, record.event.outcome) == ("reset-role-state", Outcome.REFUSED)
    assert "\x1b" not in record.event.detail.get("reason", "")
    assert await _mark(harness) == 7


@pytest.fixture
async def tls(tmp_path: Path, softhsm: Any, pki: Pki, clock: Clock) -> AsyncIterator[TlsHarness]:
    """conftest's mutual-TLS server (backend and admin identities), key ``k`` created."""
    server = SignerServer(load_config(write_tls_config(tmp_path / "signer", softhsm)), clock=clock)
    await server.start()
    h = TlsHarness(server.config.path, pki, server, clock, Payloads(clock))
    await h.admin("admin").CreateKey(
        pb.CreateKeyRequest(
            name="k",
            roles=[pb.RoleRule(pattern=p, max_validity_seconds=s) for p, s in ROLES],
            activate=True,
        )
    )
    try:
        yield h
    finally:
        for ch in h.channels:
            await ch.close()
        await server.stop(grace=5)


async def test_f8_backend_identity_cannot_reset(tls: TlsHarness) -> None:
    h = tls
    payload = h.payloads.snapshot(3)
    await h.signer("backend").Sign(pb.SignRequest(key="k", payload=payload))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await h.admin("backend").ResetRoleState(
            pb.ResetRoleStateRequest(key="k", role="snapshot", version=0, reason="let me")
        )
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    record = h.records()[-1]
    assert (record.event.operation, record.event.outcome, record.event.status) == (
        "reset-role-state",
        Outcome.REFUSED,
        "PERMISSION_DENIED",
    )
    assert BACKEND in record.event.identity
    # The admin can.
    done = await h.admin("admin").ResetRoleState(
        pb.ResetRoleStateRequest(key="k", role="snapshot", version=0, reason="ok")
    )
    assert done.state.version == 0
    assert ADMIN in h.records()[-1].event.identity


# --- two workers on one store -------------------------------------------------------------


@pytest.fixture
async def two(config_path: Path, clock: Clock) -> AsyncIterator[tuple[Harness, Harness]]:
    a = await start_harness(config_path, clock)
    try:
        b = await start_harness(config_path, clock)
        try:
            yield a, b
        finally:
            await stop_harness(b)
    finally:
        await stop_harness(a)


async def test_f8_reset_on_one_worker_is_honoured_by_another(
    two: tuple[Harness, Harness],
) -> None:
    a, b = two
    await _create(a)
    p = a.payloads
    await b.sign("k", p.snapshot(10))  # b's cache holds mark 10
    await a.sign("k", p.timestamp(10))
    await _reset(a, 2)  # made on a; b's cache still says 10
    await _reset(a, 2, role="timestamp")
    # b's cache refuses 3 as a rollback; the store, re-read once, has mark 2.
    assert (await b.sign("k", p.snapshot(3))).metadata_version == 3
    assert (await b.sign("k", p.timestamp(3))).metadata_version == 3
    # And the other way: a's cache trails b's signatures; a step judged
    # against it would be wrong, so a's step refusal re-reads too.
    await b.sign("k", p.snapshot(900_000))
    assert (await a.sign("k", p.snapshot(1_800_000))).metadata_version == 1_800_000
    with SqliteAuditStore(a.config.audit.path) as store:
        verify_store(store)


async def test_f8_stale_replay_after_a_reset_elsewhere(two: tuple[Harness, Harness]) -> None:
    a, b = two
    await _create(a)
    payload = a.payloads.snapshot(10)
    first = await b.sign("k", payload)
    await _reset(a, 2)
    # b would answer this retry from its cache (mark 10); the store's mark is
    # 2 now: the cached signature is not handed out past the reset.
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await b.sign("k", payload)
    assert stale.value.code() is grpc.StatusCode.ABORTED
    assert (stale.value.details() or "").startswith("stale replay: version 10 of role 'snapshot'")
    assert await _mark(a) == 2
    # b has re-read: the retry is now a new signature above the reset mark.
    again = await b.sign("k", payload)
    assert (again.metadata_version, again.replayed) == (10, False)
    assert again.audit_seq > first.audit_seq
    with SqliteAuditStore(a.config.audit.path) as store:
        verify_store(store)
