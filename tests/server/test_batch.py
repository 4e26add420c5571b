"""SignBatch: per-item policy and results, one audit transaction for the batch."""

from __future__ import annotations

import json

import grpc
import pytest
from securesystemslib.signer import Signature, SSlibKey

from tuf_signer.model import Outcome
from tuf_signer.v1 import signer_pb2 as pb

from .conftest import Harness


def _req(key: str, payload: bytes, role: str = "", keyid: str = "") -> pb.SignRequest:
    return pb.SignRequest(key=key, role=role, payload=payload, expected_keyid=keyid)


async def test_batch_mixes_grants_and_refusals_item_by_item(harness: Harness) -> None:
    key = await harness.create_key("k")
    (v1,) = key.versions
    p = harness.payloads
    requests = [
        _req("k", p.timestamp(1)),
        _req("nope", p.timestamp(1)),  # unknown key
        _req("k", p.targets(1, salt="a", role="bins-01"), role="bins-01"),
        _req("k", b"{not json"),
        _req("k", p.targets(1, salt="b"), role="targets"),  # role not allowed
        _req("k", p.snapshot(1)),
        _req("k", p.targets(1, salt="c", role="bins-02"), role="bins-02", keyid="0" * 64),
    ]
    before = len(harness.records())
    response = await harness.signer.SignBatch(pb.SignBatchRequest(requests=requests))

    codes = [r.status or "OK" for r in response.results]
    assert codes == [
        "OK",
        "NOT_FOUND",
        "OK",
        "INVALID_ARGUMENT",
        "PERMISSION_DENIED",
        "OK",
        "FAILED_PRECONDITION",
    ]
    public = SSlibKey.from_dict(v1.keyid, json.loads(v1.public_key_json))
    for request, result in zip(requests, response.results, strict=True):
        if result.code == 0:
            sig = result.response.signature
            public.verify_signature(Signature(sig.keyid, sig.sig), request.payload)
        else:
            assert result.reason
            assert not result.response.signature.sig
    # One record per item, in request order, consecutive: written as one batch.
    new = harness.records()[before:]
    assert len(new) == len(requests)
    assert [r.event.status for r in new] == codes
    assert [r.seq for r in new] == list(range(new[0].seq, new[0].seq + len(new)))
    for record, result in zip(new, response.results, strict=True):
        if result.code == 0:
            assert record.event.outcome is Outcome.GRANTED
            assert record.seq == result.response.audit_seq
            assert record.event.signature == result.response.signature.sig
        else:
            assert record.event.outcome is Outcome.REFUSED
            assert record.event.signature == ""


async def test_batch_rollback_within_one_batch_is_refused(harness: Harness) -> None:
    await harness.create_key("k")
    p = harness.payloads
    response = await harness.signer.SignBatch(
        pb.SignBatchRequest(
            requests=[
                _req("k", p.timestamp(2)),
                _req("k", p.timestamp(1)),  # below what the batch itself just signed
                _req("k", p.timestamp(2, snapshot_version=9)),  # equivocation
                _req("k", p.timestamp(2)),  # identical retry
                _req("k", p.timestamp(3)),
            ]
        )
    )
    statuses = [r.status or "OK" for r in response.results]
    assert statuses == ["OK", "FAILED_PRECONDITION", "FAILED_PRECONDITION", "OK", "OK"]
    first, _, _, retry, third = response.results
    assert retry.response.signature == first.response.signature
    assert retry.response.replayed
    assert third.response.metadata_version == 3
    state = await harness.signer.GetRoleState(pb.GetRoleStateRequest(key="k"))
    assert [(s.role, s.version) for s in state.states] == [("timestamp", 3)]


@pytest.mark.parametrize(("count", "match"), [(0, "at least one"), (4097, "at most 4096")])
async def test_batch_size_limits(harness: Harness, count: int, match: str) -> None:
    await harness.create_key("k")
    before = len(harness.records())
    request = pb.SignBatchRequest(requests=[_req("k", b"{}")] * count)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await harness.signer.SignBatch(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert match in info.value.details()
    (record,) = harness.records()[before:]
    assert record.event.operation == "sign-batch"
    assert record.event.outcome is Outcome.REFUSED
