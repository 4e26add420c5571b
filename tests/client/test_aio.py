"""The asyncio client, and ``sign_many``: order, per-item errors, bounded concurrency."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Targets

from tuf_signer.client import (
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


class CountingStub:
    """Wraps the Signer stub to see how many sign requests are open at once.

    A SignBatch counts as as many requests as it carries.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.open = 0
        self.peak = 0
        self.calls = 0
        self.batches = 0

    async def Sign(self, request: pb.SignRequest, timeout: float | None = None) -> Any:
        self.calls += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            return await self.inner.Sign(request, timeout=timeout)
        finally:
            self.open -= 1

    async def SignBatch(self, request: pb.SignBatchRequest, timeout: float | None = None) -> Any:
        items = len(request.requests)
        self.calls += items
        self.open += items
        self.batches += 1
        self.peak = max(self.peak, self.open)
        try:
            return await self.inner.SignBatch(request, timeout=timeout)
        finally:
            self.open -= items


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
    ("n", "max_in_flight", "peak"),
    [(40, 4, 4), (40, 1, 1), (10, 64, 10)],
    ids=["bounded", "one-at-a-time", "fewer-requests-than-slots"],
)
async def test_sign_many_keeps_max_in_flight_open(
    signer_server: RunningSigner,
    aclient: AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    n: int,
    max_in_flight: int,
    peak: int,
) -> None:
    counting = CountingStub(aclient._signer)
    monkeypatch.setattr(aclient, "_signer", counting)
    outcomes = await aclient.sign_many(
        (bin_request(signer_server, i) for i in range(n)), max_in_flight=max_in_flight
    )
    assert all(isinstance(o, SignedResult) for o in outcomes) and len(outcomes) == n
    assert (counting.calls, counting.peak) == (n, peak)
    assert counting.batches == -(-n // peak), "requests travel in SignBatch calls"


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
