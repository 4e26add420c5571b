"""The plugin retries a Sign that failed for a passing reason (issue 14, item 8).

UNAVAILABLE, DEADLINE_EXCEEDED and ABORTED are tried again with growing waits
within a budget; every other status is the server's verdict and is raised at
once. Safe because the server answers an identical payload with the same
signature: across a server restart, the retried Sign returns the very
signature the first one got, and the log holds one grant for it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Timestamp

from tuf_signer.client import (
    DEFAULT_RETRY,
    Client,
    RemotePolicyError,
    RemoteUnavailableError,
    RetryPolicy,
    SignerUri,
    TufSignerSigner,
    close_shared_clients,
    register,
    sslib_key,
)
from tuf_signer.client._errors import remote_error
from tuf_signer.errors import RemoteError, RequestError

from ..conftest import free_port
from ..server.conftest import write_config
from .conftest import MAX_PAYLOAD, ONLINE_BINS, ONLINE_ROLES, RunningSigner, ServerThread

# --- the policy, on a fake clock --------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(codes: list[str], t: FakeTime, cost: float = 0.0) -> Any:
    """An attempt that raises ``codes`` in turn (each taking ``cost`` s), then returns "ok"."""
    calls: list[tuple[float, int]] = []

    def attempt(timeout: float, number: int) -> str:
        calls.append((timeout, number))
        t.now += min(cost, timeout)  # a try never outlives its deadline
        if len(calls) <= len(codes):
            raise remote_error(codes[len(calls) - 1], "try again")
        return "ok"

    attempt.calls = calls  # type: ignore[attr-defined]
    return attempt


@pytest.mark.parametrize("code", ["UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"])
def test_passing_failures_are_retried_with_growing_waits(code: str) -> None:
    t = FakeTime()
    attempt = failing([code] * 6, t)
    assert DEFAULT_RETRY.call(attempt, clock=t.clock, sleep=t.sleep) == "ok"
    assert [n for _, n in attempt.calls] == [1, 2, 3, 4, 5, 6, 7]
    # Each wait is between half and all of 0.1, 0.2, 0.4, ... capped at 2 s.
    for wait, ceiling in zip(t.sleeps, [0.1, 0.2, 0.4, 0.8, 1.6, 2.0], strict=True):
        assert ceiling / 2 <= wait <= ceiling
    assert all(timeout == 10.0 for timeout, _ in attempt.calls)


@pytest.mark.parametrize(
    "code", ["FAILED_PRECONDITION", "INVALID_ARGUMENT", "PERMISSION_DENIED", "NOT_FOUND"]
)
def test_verdicts_are_raised_at_once(code: str) -> None:
    t = FakeTime()
    attempt = failing([code], t)
    with pytest.raises(RemoteError) as raised:
        DEFAULT_RETRY.call(attempt, clock=t.clock, sleep=t.sleep)
    assert raised.value.code == code and raised.value.reason == "try again"
    assert len(attempt.calls) == 1 and t.sleeps == []


def test_the_budget_bounds_the_time_and_the_error_says_so() -> None:
    t = FakeTime()
    policy = RetryPolicy(budget=5.0, attempt_timeout=2.0)
    attempt = failing(["UNAVAILABLE"] * 100, t, cost=1.0)
    with pytest.raises(RemoteUnavailableError, match=r"gave up after \d+ tries in [\d.]+ s"):
        policy.call(attempt, clock=t.clock, sleep=t.sleep)
    assert t.now <= 5.0  # no try starts, waits or runs past the budget
    assert len(attempt.calls) >= 2
    # The last try's deadline is what was left of the budget, not attempt_timeout.
    assert all(timeout <= 2.0 for timeout, _ in attempt.calls)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"budget": 0}, "budget must be above 0"),
        ({"attempt_timeout": -1}, "attempt_timeout must be above 0"),
        ({"max_backoff": float("nan")}, "max_backoff must be above 0"),
        ({"multiplier": 0.5}, "multiplier must be at least 1"),
    ],
    ids=["zero-budget", "negative-timeout", "nan-backoff", "shrinking"],
)
def test_bad_policies_are_refused(kw: dict[str, float], match: str) -> None:
    with pytest.raises(RequestError, match=match):
        RetryPolicy(**kw)


# --- a real server going away and coming back -------------------------------------------------


class RestartableSigner:
    """A server on a fixed port over one audit database, stopped and started at will."""

    def __init__(self, directory: Path, hsm: Any) -> None:
        self.port = free_port()
        self.config = write_config(directory, hsm, max_payload=MAX_PAYLOAD)
        text = self.config.read_text()
        self.config.write_text(
            text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{self.port}"')
        )
        self.address = f"127.0.0.1:{self.port}"
        self.thread: ServerThread | None = None

    def start(self) -> None:
        self.thread = ServerThread(self.config)
        assert self.thread.start() == self.address

    def stop(self) -> None:
        assert self.thread is not None
        self.thread.stop()
        self.thread = None


@pytest.fixture
def restartable(tmp_path: Path, softhsm: Any) -> Iterator[RestartableSigner]:
    s = RestartableSigner(tmp_path / "signer", softhsm)
    s.start()
    try:
        yield s
    finally:
        close_shared_clients()
        if s.thread is not None:
            s.stop()


def grants(client: Client, payload: bytes) -> list[dict[str, Any]]:
    digest = hashlib.sha256(payload).hexdigest()
    events = [r["event"] for r in client.audit_records(1, 1000)["records"]]
    return [e for e in events if e.get("payload_sha256") == digest]


def _timestamp(s: RunningSigner | RestartableSigner, version: int) -> bytes:
    expires = RunningSigner.expires(None, 3600)  # type: ignore[arg-type]
    return Metadata(
        Timestamp(version=version, expires=expires, snapshot_meta=MetaFile(1))
    ).signed_bytes


def test_a_sign_retried_across_a_restart_gets_the_same_signature_once(
    restartable: RestartableSigner,
) -> None:
    s = restartable
    with Client(s.address, timeout=30) as admin:
        key = admin.create_key("online", ONLINE_ROLES, activate=True, bins=ONLINE_BINS)
    register()
    signer = Signer.from_priv_key_uri(
        str(SignerUri(s.address, "online")), sslib_key(key["versions"][0])
    )
    assert isinstance(signer, TufSignerSigner) and signer.retry == DEFAULT_RETRY
    first_payload, second_payload = _timestamp(s, 1), _timestamp(s, 2)
    first = signer.sign(first_payload)

    s.stop()
    results: dict[str, Any] = {}

    def sign_while_down() -> None:
        try:
            results["again"] = signer.sign(first_payload)  # the reply to `first` was "lost"
            results["second"] = signer.sign(second_payload)  # a new version, after the restart
        except Exception as e:
            results["error"] = e

    worker = threading.Thread(target=sign_while_down)
    started = time.monotonic()
    worker.start()
    time.sleep(1.5)  # the signer is down: the Sign is failing UNAVAILABLE and retrying
    assert worker.is_alive()
    s.start()
    worker.join(timeout=30)
    assert "error" not in results, results.get("error")
    assert results["again"] == first
    assert time.monotonic() - started >= 1.5

    with Client(s.address, timeout=30) as admin:
        # One grant; each retry that reached the server is on the record as its replay.
        records = grants(admin, first_payload)
        assert {(e["outcome"], e["signature"]) for e in records} == {("granted", first.signature)}
        reasons = [e["reason"] for e in records]
        assert reasons[0] == "" and len(reasons) >= 2
        assert set(reasons[1:]) == {"replay of an identical request"}
        (second,) = grants(admin, second_payload)
        assert second["outcome"] == "granted" and second["metadata_version"] == 2
        assert second["signature"] == results["second"].signature


def test_without_retry_the_first_unavailable_is_raised(restartable: RestartableSigner) -> None:
    s = restartable
    with Client(s.address, timeout=30) as admin:
        key = admin.create_key("online", ONLINE_ROLES, activate=True, bins=ONLINE_BINS)
    client = Client(s.address, timeout=5)
    once = TufSignerSigner(client, "online", sslib_key(key["versions"][0]), retry=None)
    s.stop()
    start = time.monotonic()
    with pytest.raises(RemoteUnavailableError):
        once.sign(_timestamp(s, 1))
    assert time.monotonic() - start < 2
    short = TufSignerSigner(
        client, "online", sslib_key(key["versions"][0]), retry=RetryPolicy(budget=1.0)
    )
    with pytest.raises(RemoteUnavailableError, match="gave up after"):
        short.sign(_timestamp(s, 1))
    client.close()


def test_a_refusal_is_not_retried(signer_server: RunningSigner) -> None:
    s = signer_server
    register()
    signer = Signer.from_priv_key_uri(str(SignerUri(s.address, "online")), sslib_key(s.active))
    signer.sign(_timestamp(s, 2))
    before = len(s.client.audit_records(1, 1000)["records"])
    with pytest.raises(RemotePolicyError, match="rollback"):
        signer.sign(_timestamp(s, 1))
    assert len(s.client.audit_records(1, 1000)["records"]) == before + 1  # one refusal
