"""What a hostile client costs (issue 10, findings 3, 4 and 5).

A certificate the client CA issued, with or without an access rule, must not be
able to fail other clients' commits, fill the record, or stall the event loop.
Each test names the finding it guards.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from tuf_signer.audit import Entry
from tuf_signer.config import load_config
from tuf_signer.errors import StoreError
from tuf_signer.model import AuditEvent, Outcome
from tuf_signer.server import SignerServer
from tuf_signer.server._writer import AuditWriter
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

from .conftest import (
    BACKEND,
    NOBODY,
    Clock,
    Harness,
    Payloads,
    TlsHarness,
    start_harness,
    stop_harness,
    write_config,
)

# Literal role names only: these tests are about cost, not about hash bins.
# Literal roles only, and keys without a bins declaration (``bins=None``): these
# tests sign targets metadata listing files under many role names.
ROLES = [("timestamp", 86400), ("snapshot", 86400), ("targets", 86400)] + [
    (f"r-{i}", 86400) for i in range(40)
]


def _config(directory: Path, hsm: Any, max_payload: int = 256 * 1024, extra: str = "") -> Path:
    """The test server config, its anonymous caller also allowed the roles ``r-*``."""
    path = write_config(directory, hsm, max_payload=max_payload)
    text = path.read_text().replace('"targets", "bins-*"]', '"targets", "bins-*", "r-*"]')
    path.write_text(text.replace("drain_seconds = 5\n", "drain_seconds = 5\n" + extra))
    return path


@pytest.fixture
def config_path(tmp_path: Path, softhsm: Any) -> Path:
    return _config(tmp_path / "signer", softhsm)


# --- finding 3: one bad string never fails a commit group -------------------------------


@pytest.mark.parametrize(
    ("key", "role", "code", "shown"),
    [
        pytest.param("x\0y", "", "INVALID_ARGUMENT", "x\\x00y", id="f3-nul-in-key"),
        pytest.param("\0", "", "INVALID_ARGUMENT", "\\x00", id="f3-nul-only-key"),
        pytest.param("k", "r-\0", "INVALID_ARGUMENT", "r-\\x00", id="f3-nul-in-role"),
        pytest.param("k" * 5000, "", "INVALID_ARGUMENT", "[5000 characters]", id="f4-long-key"),
        pytest.param("k", "r" * 5000, "INVALID_ARGUMENT", "[5000 characters]", id="f4-long-role"),
    ],
)
async def test_hostile_strings_are_refused_and_recorded_escaped(
    harness: Harness, key: str, role: str, code: str, shown: str
) -> None:
    await harness.create_key("k", roles=ROLES, bins=None)
    payload = harness.payloads.targets(1) if role else harness.payloads.timestamp(1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await harness.sign(key, payload, role=role)
    assert refused.value.code().name == code
    (record,) = [r for r in harness.records() if r.event.operation == "sign"]
    assert record.event.outcome is Outcome.REFUSED
    assert record.event.signature == ""
    stored = record.event.key_name if role == "" else record.event.role
    assert shown in stored
    assert "\0" not in stored
    assert len(stored) <= 255


async def test_nul_strings_on_postgres_fail_only_themselves(
    tmp_path: Path,
    softhsm: Any,
    clock: Clock,
    postgres_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """f3: a NUL loop beside a backend's concurrent Signs on the PostgreSQL store."""
    path = _config(tmp_path / "signer", softhsm)
    path.write_text(
        path.read_text().replace(
            '[audit]\npath = "audit.db"', '[audit]\nstore = "postgres"\ndsn_env = "F3_DSN"'
        )
    )
    monkeypatch.setenv("F3_DSN", postgres_dsn)
    h = await start_harness(path, clock)
    try:
        await h.create_key("k", roles=ROLES, bins=None)
        stop = asyncio.Event()

        async def hostile() -> list[str]:
            codes = []
            while not stop.is_set():
                try:
                    await h.sign("\0", h.payloads.timestamp(1))
                except grpc.aio.AioRpcError as e:
                    codes.append(e.code().name)
            return codes

        async def backend(i: int, version: int) -> str:
            try:
                await h.sign("k", h.payloads.targets(version, salt=str(i)), role=f"r-{i}")
                return "OK"
            except grpc.aio.AioRpcError as e:
                return e.code().name

        floods = [asyncio.create_task(hostile()) for _ in range(4)]
        results = []
        for version in range(1, 6):  # 5 rounds of 40 concurrent Signs
            results += await asyncio.gather(*(backend(i, version) for i in range(40)))
        stop.set()
        codes = [c for flood in floods for c in await flood]
    finally:
        await stop_harness(h)
    assert results == ["OK"] * 200  # before: 146 of 200 failed UNAVAILABLE
    assert codes
    assert set(codes) == {"INVALID_ARGUMENT"}


def _event(key_name: str) -> AuditEvent:
    return AuditEvent(
        time="2026-12-01T00:00:00.000000Z",
        identity="uri:test",
        operation="sign",
        outcome=Outcome.REFUSED,
        status="INVALID_ARGUMENT",
        key_name=key_name,
    )


async def test_writer_isolates_the_request_the_store_cannot_take(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """f3: the group commit retries each request alone; only the bad one fails."""
    from tuf_signer.audit import PostgresAuditStore

    store = PostgresAuditStore(postgres_dsn)
    writer = AuditWriter(store)
    try:
        # Raw NUL straight to the store: PostgreSQL's text type refuses it.
        futures = [writer.enqueue([Entry(_event(f"good-{i}"))]) for i in range(20)]
        futures.insert(7, writer.enqueue([Entry(_event("bad\0"))]))
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        writer.close()
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
    assert failed == [7]
    assert isinstance(outcomes[7], StoreError)
    names = [r.event.key_name for r in store.records()]
    store.close()
    assert names == [f"good-{i}" for i in range(20)]


# --- finding 4: unadmitted callers are counted, not recorded one by one -------------------


async def _codes(calls: list[Any]) -> list[str]:
    out = []
    for result in await asyncio.gather(*calls, return_exceptions=True):
        out.append(result.code().name if isinstance(result, grpc.aio.AioRpcError) else "OK")
    return out


async def test_no_rule_flood_is_one_summary_record(tls_harness: TlsHarness) -> None:
    """f4: 300 calls of a certificate without a rule beside a backend's Signs."""
    h = tls_harness
    nobody, backend = h.signer("nobody"), h.signer("backend")
    before = len(h.records())

    async def timed(version: int) -> float:
        start = time.monotonic()
        await backend.Sign(pb.SignRequest(key="k", payload=h.payloads.timestamp(version)))
        return time.monotonic() - start

    flood = [
        nobody.Sign(pb.SignRequest(key=f"x{i}", payload=h.payloads.timestamp(1)))
        for i in range(300)
    ]
    flooding = asyncio.ensure_future(_codes(flood))
    latencies = [await timed(v) for v in range(1, 21)]
    codes = await flooding
    assert set(codes) == {"PERMISSION_DENIED"}
    assert max(latencies) < 1.0, latencies  # was 2.0-2.4 s per Sign during such a flood
    assert len(h.records()) == before + 20  # the backend's grants; no record per refusal yet

    assert await h.server.service.flush_refusals() == 1
    summary = h.records()[-1].event
    assert summary.operation == "refused-calls"
    assert summary.identity == NOBODY
    assert summary.status == "PERMISSION_DENIED"
    assert summary.detail["count"] == 300
    assert summary.detail["operations"] == {"sign": 300}
    assert "has no access rule" in summary.reason


@pytest.mark.parametrize(
    "tls_harness", [{"extra": "[limits]\nrate = 1\nburst = 2\n"}], indirect=True
)
async def test_rate_limited_calls_are_counted(tls_harness: TlsHarness) -> None:
    """f4: an identity limited to 1 call/s produced one record per refused call."""
    h = tls_harness
    backend = h.signer("backend")
    before = len(h.records())
    codes = []
    for v in range(1, 51):  # in order, so that every admitted call is granted
        request = pb.SignRequest(key="k", payload=h.payloads.timestamp(v))
        codes += await _codes([backend.Sign(request)])
    granted = codes.count("OK")
    assert 1 <= granted <= 4
    assert codes.count("RESOURCE_EXHAUSTED") == 50 - granted
    assert len(h.records()) == before + granted
    await h.server.service.flush_refusals()
    (summary,) = [r.event for r in h.records()[before:] if r.event.operation == "refused-calls"]
    assert (summary.identity, summary.status) == (BACKEND, "RESOURCE_EXHAUSTED")
    assert summary.detail["count"] == 50 - granted


async def test_sign_message_limit_is_far_below_signbatch(harness: Harness) -> None:
    """f4: per-method message limits; a 12 MB key name never reaches the store."""
    await harness.create_key("k", roles=ROLES, bins=None)
    db = harness.config.audit.path
    size_before = db.stat().st_size
    huge = "k" * (12 * 1024 * 1024)  # above a Sign's limit, below gRPC's (SignBatch)
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await harness.sign(huge, harness.payloads.timestamp(1))
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "more than its limit" in (refused.value.details() or "")
    # A SignBatch may carry several payloads of that size; a Sign may not.
    big = harness.payloads.targets(1, n_targets=600)
    assert len(big) > 64 * 1024
    batch = await harness.signer.SignBatch(
        pb.SignBatchRequest(
            requests=[pb.SignRequest(key="k", role=f"r-{i}", payload=big) for i in range(8)]
        )
    )
    assert [r.code for r in batch.results] == [0] * 8
    await harness.server.service.flush_refusals()
    assert db.stat().st_size - size_before < 1024 * 1024
    summaries = [r.event for r in harness.records() if r.event.operation == "refused-calls"]
    assert [s.detail["count"] for s in summaries] == [3]


# --- finding 5: the payload check never stalls the event loop --------------------------


def _slow_path_payload(clock: Clock, size: int, version: int = 1) -> bytes:
    """A canonical timestamp of ~``size`` bytes with a non-ASCII key and a raw control character.

    The native check leaves a non-ASCII key to Python (NFKC and case folding),
    and orjson escapes the control character, so neither fast path accepts it
    and the pure-Python exact check runs: ~2.5 s for 8 MiB of small entries here.
    """
    expires = (clock.now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    signed = {
        "_type": "timestamp",
        "expires": expires,
        "meta": {"snapshot.json": {"version": 1}},
        "spec_version": "1.0.31",
        "version": version,
        "x-ctl-\u00e9": "\x01",
        "x-pad": {f"k{i:07d}": [i, "a"] for i in range(size // 22)},
    }
    # Canonical JSON writes the control character raw; json.dumps would escape it.
    text = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("\\u0001", "\x01").encode()


async def _big_harness(tmp_path: Path, softhsm: Any, clock: Clock, extra: str = "") -> Harness:
    path = _config(tmp_path / "signer", softhsm, max_payload=9 * 1024 * 1024, extra=extra)
    h = await start_harness(path, clock)
    await h.create_key("k", roles=ROLES, bins=None)
    return h


async def test_slow_path_payload_beside_admin_calls(
    tmp_path: Path, softhsm: Any, clock: Clock
) -> None:
    """f5: an 8 MiB payload on the exact path while an admin lists keys."""
    h = await _big_harness(tmp_path, softhsm, clock)
    try:
        payload = _slow_path_payload(clock, 8 * 1024 * 1024)
        assert len(payload) <= 9 * 1024 * 1024
        signing = asyncio.ensure_future(h.sign("k", payload))
        await asyncio.sleep(0.3)  # the check is under way
        latencies = []
        while not signing.done():
            start = time.monotonic()
            await h.admin.ListKeys(pb.ListKeysRequest())
            latencies.append(time.monotonic() - start)
            await asyncio.sleep(0.05)
        granted = await signing
    finally:
        await stop_harness(h)
    assert granted.metadata_version == 1  # canonical after all: the exact check says so
    assert len(latencies) >= 3, "the check ended before the admin calls could overlap it"
    assert max(latencies) < 0.5, latencies  # was 29.7 s beside 7 such payloads


async def test_check_past_its_budget_is_refused_and_recovers(
    tmp_path: Path, softhsm: Any, clock: Clock
) -> None:
    """f5: a check running past check_timeout_seconds is refused; the next one works."""
    h = await _big_harness(tmp_path, softhsm, clock, "check_timeout_seconds = 0.3\n")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await h.sign("k", _slow_path_payload(clock, 8 * 1024 * 1024))
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "budget of 0.3 s" in (refused.value.details() or "")
        small = _slow_path_payload(clock, 100 * 1024, version=2)  # off the loop too
        assert (await h.sign("k", small)).metadata_version == 2
    finally:
        await stop_harness(h)
    refusals = [r.event for r in h.records() if r.event.outcome is Outcome.REFUSED]
    assert [e.status for e in refusals] == ["RESOURCE_EXHAUSTED"]


async def test_check_budget_per_identity(tmp_path: Path, softhsm: Any, clock: Clock) -> None:
    """f5: one identity's CPU budget for off-loop checks runs out; it is counted."""
    path = write_config(tmp_path / "signer", softhsm, max_payload=9 * 1024 * 1024)
    path.write_text(
        path.read_text() + "\n[limits]\ncheck_cpu_rate = 0.001\ncheck_cpu_burst = 0.2\n"
    )
    h = await start_harness(path, clock)
    try:
        await h.create_key("k", roles=ROLES, bins=None)
        payload = _slow_path_payload(clock, 2 * 1024 * 1024)
        await h.sign("k", payload)  # spends more than 0.2 CPU s
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await h.sign("k", _slow_path_payload(clock, 2 * 1024 * 1024, version=2))
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "payload-check budget" in (refused.value.details() or "")
        # Payloads the event loop checks cheaply are not charged.
        ts = Payloads(clock).timestamp(3)
        assert (await h.sign("k", ts)).metadata_version == 3
    finally:
        await stop_harness(h)


def test_summary_survives_shutdown(tmp_path: Path, softhsm: Any, clock: Clock) -> None:
    """f4: counts still pending when the server stops are written as it closes."""

    async def run() -> SignerServer:
        path = write_config(tmp_path / "signer", softhsm)
        text = path.read_text().split("# Plaintext callers")[0]
        path.write_text(text)  # no rule for anonymous callers: every call is unadmitted
        server = SignerServer(load_config(path), clock=clock)
        port = await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.SignerStub(ch)
            for _ in range(5):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.GetPublicKeys(pb.GetPublicKeysRequest())
        await server.stop(grace=1)
        return server

    server = asyncio.run(run())
    from tuf_signer.audit import SqliteAuditStore

    store = SqliteAuditStore(server.config.audit.path)
    events = [r.event for r in store.records()]
    store.close()
    assert [(e.operation, e.status, e.detail.get("count")) for e in events] == [
        ("refused-calls", "UNAUTHENTICATED", 5)
    ]
    assert datetime.fromisoformat(events[0].time.replace("Z", "+00:00")) <= datetime.now(UTC)


def _padded_timestamp(clock: Clock, version: int, pad: int) -> bytes:
    expires = (clock.now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    signed = {
        "_type": "timestamp",
        "expires": expires,
        "meta": {"snapshot.json": {"version": 1}},
        "spec_version": "1.0.31",
        "version": version,
        "x-pad": "a" * pad,
    }
    return json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "tls_harness",
    [{"extra": "[limits]\nbytes_rate = 1\nbytes_burst = 100000\n"}],
    indirect=True,
)
async def test_byte_budget_per_identity(tls_harness: TlsHarness) -> None:
    """f4/f5: rate tokens are charged by bytes as well as by calls."""
    h = tls_harness
    backend = h.signer("backend")
    first = _padded_timestamp(h.clock, 1, 60_000)
    await backend.Sign(pb.SignRequest(key="k", payload=first))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await backend.Sign(pb.SignRequest(key="k", payload=_padded_timestamp(h.clock, 2, 60_000)))
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "byte rate limit" in (refused.value.details() or "")
    # Small calls still fit what is left of the byte budget.
    await backend.Sign(pb.SignRequest(key="k", payload=h.payloads.timestamp(3)))


def _raw(h: TlsHarness, client: str, method: str) -> Any:
    """A Signer method called with raw bytes as the request, as ``client``."""
    return h.channel(client).unary_unary(
        f"/tuf_signer.v1.Signer/{method}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )


async def test_no_rule_caller_is_refused_before_its_message_is_decoded(
    tls_harness: TlsHarness,
) -> None:
    """f4: a certificate without a rule never gets its message parsed."""
    h = tls_harness
    # A SignBatch whose string field is not UTF-8: decoding it would say INVALID_ARGUMENT.
    garbage = bytes([0x0A, 0x05, 0x0A, 0x03, 0xFF, 0xFE, 0xFD])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _raw(h, "nobody", "SignBatch")(garbage)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "has no access rule" in (refused.value.details() or "")
    # The same bytes from an identity with a rule are decoded, and refused for what they are.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _raw(h, "backend", "SignBatch")(garbage)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "does not decode" in (refused.value.details() or "")


# --- second look: every way in is throttled, nothing hangs --------------------------------

_STRICT = {"extra": "[limits]\nrate = 0.001\nburst = 3\n"}


@pytest.mark.parametrize("tls_harness", [_STRICT], indirect=True, ids=["burst-3"])
async def test_known_identity_flooding_a_method_it_may_not_call_is_throttled(
    tls_harness: TlsHarness,
) -> None:
    """f4: refusals of a known identity spend its tokens; once spent, they are counted."""
    h = tls_harness  # the admin spent one of its 3 tokens creating the key
    admin = h.signer("admin")  # may not sign
    before = len(h.records())
    codes = []
    for v in range(1, 7):
        codes += await _codes(
            [admin.Sign(pb.SignRequest(key="k", payload=h.payloads.timestamp(v)))]
        )
    assert codes == ["PERMISSION_DENIED"] * 2 + ["RESOURCE_EXHAUSTED"] * 4
    assert len(h.records()) == before + 2
    await h.server.service.flush_refusals()
    assert h.records()[-1].event.detail["count"] == 4


@pytest.mark.parametrize("tls_harness", [_STRICT], indirect=True, ids=["burst-3"])
async def test_known_identity_sending_garbage_is_throttled(tls_harness: TlsHarness) -> None:
    """f4: messages that do not decode spend call tokens too."""
    h = tls_harness
    call = _raw(h, "backend", "Sign")
    before = len(h.records())
    codes = []
    for _ in range(6):
        try:
            await call(bytes([0x0A, 0x02, 0xFF, 0xFE]))  # key: invalid UTF-8
        except grpc.aio.AioRpcError as e:
            codes.append(e.code().name)
    assert codes == ["INVALID_ARGUMENT"] * 3 + ["RESOURCE_EXHAUSTED"] * 3
    assert len(h.records()) == before + 3  # the other three were counted
    await h.server.service.flush_refusals()
    summary = h.records()[-1].event
    assert (summary.status, summary.detail["count"]) == ("RESOURCE_EXHAUSTED", 3)


@pytest.mark.parametrize(
    ("request_", "call"),
    [
        pytest.param(pb.GetPublicKeysRequest(key="x\0y"), "GetPublicKeys", id="f3-read-keys-nul"),
        pytest.param(pb.GetRoleStateRequest(key="x\0y"), "GetRoleState", id="f3-role-state-nul"),
        pytest.param(pb.GetRoleStateRequest(role="r\x1b[2K"), "GetRoleState", id="f3-role-esc"),
    ],
)
async def test_reads_validate_names_before_the_store(
    harness: Harness, request_: Any, call: str
) -> None:
    """f3: a NUL or escape in a read's filter is INVALID_ARGUMENT and recorded, on every store."""
    before = len(harness.records())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await getattr(harness.signer, call)(request_)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    (record,) = harness.records()[before:]
    assert record.event.status == "INVALID_ARGUMENT"
    assert "\0" not in record.event.key_name and "\x1b" not in record.event.role


async def test_health_needs_no_access_rule(tmp_path: Path, softhsm: Any, clock: Clock) -> None:
    """A probe with no rule (here: anonymous, plaintext) still learns SERVING, and only that."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    path = write_config(tmp_path / "signer", softhsm)
    path.write_text(path.read_text().split("# Plaintext callers")[0])
    server = SignerServer(load_config(path), clock=clock)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            answer = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.SignerStub(ch).GetPublicKeys(pb.GetPublicKeysRequest())
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(grace=1)


async def test_concurrent_checks_cannot_overrun_the_budget(
    tmp_path: Path, softhsm: Any, clock: Clock
) -> None:
    """f5: the worst case (the time budget) is reserved per check before it is queued."""
    path = _config(
        tmp_path / "signer",
        softhsm,
        max_payload=9 * 1024 * 1024,
        extra="check_timeout_seconds = 5\n",
    )
    path.write_text(path.read_text() + "\n[limits]\ncheck_cpu_rate = 0.001\ncheck_cpu_burst = 12\n")
    h = await start_harness(path, clock)
    try:
        await h.create_key("k", roles=ROLES, bins=None)
        payloads = [_slow_path_payload(clock, 2 * 1024 * 1024, version=v) for v in range(1, 5)]
        results = await asyncio.wait_for(
            asyncio.gather(*(h.sign("k", p) for p in payloads), return_exceptions=True), 60
        )
    finally:
        await stop_harness(h)
    over = [
        r
        for r in results
        if isinstance(r, grpc.aio.AioRpcError) and "payload-check budget" in (r.details() or "")
    ]
    assert len(over) == 1  # 12 s of budget holds three reservations of 5 s, not four


async def test_checker_recovers_when_a_replacement_cannot_start(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    """f5: a checker that cannot be replaced answers UNAVAILABLE, never hangs, and heals."""
    from tuf_signer.model import RoleRule
    from tuf_signer.server import _checker
    from tuf_signer.server._checker import CheckJob, PayloadChecker

    checker = PayloadChecker(processes=1, timeout=0.3)

    def job(size: int) -> CheckJob:
        payload = _slow_path_payload(clock, size)
        return CheckJob(payload, None, "k", (RoleRule("timestamp", 86400),), clock(), 10**8, "0")

    try:
        verdict, _ = await checker.offload(job(8 * 1024 * 1024))  # past its budget: killed
        assert verdict.code == "RESOURCE_EXHAUSTED"
        real = _checker._Process

        def broken(ctx: Any) -> Any:
            raise OSError("no more processes")

        monkeypatch.setattr(_checker, "_Process", broken)
        verdict, _ = await asyncio.wait_for(checker.offload(job(1000)), 30)
        assert verdict.code == "UNAVAILABLE"
        monkeypatch.setattr(_checker, "_Process", real)
        verdict, _ = await asyncio.wait_for(checker.offload(job(1000)), 60)
        assert not isinstance(verdict, Exception)
    finally:
        checker.close()
