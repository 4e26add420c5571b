"""The asyncio client, and ``sign_many``: order, per-item errors, bounded concurrency."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Targets

from tuf_signer.client import (
    DEFAULT_CONNECTIONS,
    DEFAULT_MAX_IN_FLIGHT,
    AsyncClient,
    RemoteError,
    RemoteNotFoundError,
    RemotePolicyError,
    SignedResult,
    SignRequest,
    sslib_key,
)
from tuf_signer.errors import RequestError
from tuf_signer.v1 import signer_pb2 as pb

from .conftest import RunningSigner


@pytest.fixture
async def aclient(signer_server: RunningSigner) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(signer_server.address, timeout=60) as client:
        yield client


def bin_request(s: RunningSigner, i: int, version: int = 1, **kw: Any) -> SignRequest:
    payload = Metadata(Targets(version=version, expires=s.expires())).signed_bytes
    return SignRequest("online", payload, f"bins-{i:02x}", **kw)


class Tally:
    """Sign requests open at once over a client's connections, and the calls they took."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self.calls = 0
        self.batches = 0
        self.per_connection: collections.Counter[int] = collections.Counter()


class CountingStub:
    """Wraps one connection's Signer stub, counting into a shared ``Tally``.

    A SignBatch counts as as many requests as it carries.
    """

    def __init__(self, inner: Any, tally: Tally, connection: int) -> None:
        self.inner = inner
        self.tally = tally
        self.connection = connection

    async def Sign(self, request: pb.SignRequest, timeout: float | None = None) -> Any:
        return await self._open(1, self.inner.Sign(request, timeout=timeout))

    async def SignBatch(self, request: pb.SignBatchRequest, timeout: float | None = None) -> Any:
        self.tally.batches += 1
        self.tally.per_connection[self.connection] += 1
        return await self._open(
            len(request.requests), self.inner.SignBatch(request, timeout=timeout)
        )

    async def _open(self, items: int, call: Any) -> Any:
        t = self.tally
        t.calls += items
        t.open += items
        t.peak = max(t.peak, t.open)
        try:
            return await call
        finally:
            t.open -= items


async def test_every_rpc(signer_server: RunningSigner, aclient: AsyncClient) -> None:
    s = signer_server
    snap = Snapshot(version=1, expires=s.expires(), meta={"targets.json": MetaFile(1)})
    payload = Metadata(snap).signed_bytes
    result = await aclient.sign("online", payload)
    sslib_key(s.active).verify_signature(result.signature(), payload)
    assert result.role == "snapshot"
    (state,) = await aclient.role_state("online", "snapshot")
    assert (state["version"], state["audit_seq"]) == (1, result.audit_seq)
    created = await aclient.create_key("other", [("timestamp", 600)], algorithm="ecdsa-p256")
    assert (created["algorithm"], created["versions"][0]["state"]) == ("ecdsa-p256", "PENDING")
    assert [k["name"] for k in await aclient.list_keys()] == ["online", "other"]
    assert (await aclient.public_keys("other"))[0]["versions"] == created["versions"]
    pending = await aclient.rotate_key("online")
    activated = await aclient.activate("online", pending["version"], pending["keyid"])
    assert activated["state"] == "ACTIVE"
    assert (await aclient.retire("other", 1))["state"] == "RETIRED"
    page = await aclient.audit_records(result.audit_seq, limit=1)
    (record,) = page["records"]
    assert (record["seq"], record["event"]["signature"]) == (result.audit_seq, result.sig)
    assert page["head_seq"] > result.audit_seq


async def test_refusal_is_our_error(aclient: AsyncClient) -> None:
    with pytest.raises(RemoteNotFoundError, match="unknown key 'nope'") as raised:
        await aclient.rotate_key("nope")
    assert raised.value.code == "NOT_FOUND"


async def test_sign_many_answers_in_order_with_errors_in_place(
    signer_server: RunningSigner, aclient: AsyncClient
) -> None:
    s = signer_server
    requests = [bin_request(s, i) for i in range(30)]
    await aclient.sign("online", requests[5].payload, "bins-05")  # now bins-05 v1 is a replay
    requests[5] = bin_request(s, 5, version=1, expected_keyid="cd" * 32)  # stale pin
    requests[9] = SignRequest("nope", requests[9].payload, "bins-09")
    outcomes = await aclient.sign_many(requests, max_in_flight=7)
    assert [type(o) for o in outcomes] == [
        RemotePolicyError if i == 5 else RemoteNotFoundError if i == 9 else SignedResult
        for i in range(30)
    ]
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, SignedResult):
            assert outcome.role == f"bins-{i:02x}"
            sslib_key(s.active).verify_signature(outcome.signature(), requests[i].payload)
    assert isinstance(outcomes[5], RemoteError) and "expected keyid" in outcomes[5].reason


@pytest.mark.parametrize(
    ("n", "max_in_flight", "connections", "peak", "batches"),
    [
        # Two calls of 2 on one connection: a worker has the next batch while
        # the last one's answer travels back.
        (40, 4, 1, 4, 20),
        (40, 1, 1, 1, 40),
        (10, 64, 1, 10, 1),
        # The default, 4 connections: two calls on each, 8 in flight in all.
        (40, 8, DEFAULT_CONNECTIONS, 8, 40),
        (200, DEFAULT_MAX_IN_FLIGHT, DEFAULT_CONNECTIONS, 200, 7),
        (256, 64, 1, 64, 8),
    ],
    ids=["bounded", "one-at-a-time", "fewer-requests-than-slots", "four", "default", "one-conn"],
)
async def test_sign_many_keeps_max_in_flight_open(
    signer_server: RunningSigner,
    aclient: AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    n: int,
    max_in_flight: int,
    connections: int,
    peak: int,
    batches: int,
) -> None:
    tally = Tally()
    stubs = [CountingStub(aclient._signer, tally, c) for c in range(connections)]
    monkeypatch.setattr(aclient, "_signers", lambda: stubs)
    outcomes = await aclient.sign_many(
        (bin_request(signer_server, i) for i in range(n)),
        max_in_flight=max_in_flight,
    )
    assert all(isinstance(o, SignedResult) for o in outcomes) and len(outcomes) == n
    assert (tally.calls, tally.peak, tally.batches) == (n, peak, batches), "SignBatch calls"
    assert sorted(tally.per_connection) == list(range(connections)), "every connection used"


async def test_the_default_client_has_several_connections(aclient: AsyncClient) -> None:
    assert len(aclient._signers()) == DEFAULT_CONNECTIONS == 4


async def test_sign_many_refuses_zero_in_flight(aclient: AsyncClient) -> None:
    with pytest.raises(RequestError, match="max_in_flight must be at least 1"):
        await aclient.sign_many([], max_in_flight=0)


async def test_sign_many_stops_when_the_requests_fail(
    signer_server: RunningSigner, aclient: AsyncClient
) -> None:
    def requests() -> Iterator[SignRequest]:
        yield bin_request(signer_server, 1)
        yield bin_request(signer_server, 2)
        raise ValueError("cannot build bin 3")

    with pytest.raises(ValueError, match="cannot build bin 3"):
        await aclient.sign_many(requests(), max_in_flight=2)
