"""Refusals count under the role their checks resolved: a role-less request
(RSTUF names none, the payload's ``_type`` says which) is not ``unknown``."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY

from tests.server.conftest import Harness
from tuf_signer.v1 import signer_pb2 as pb


def count(method: str, role_class: str, status: str) -> float:
    labels = {"method": method, "key": "resolved", "role_class": role_class, "status": status}
    return REGISTRY.get_sample_value("tuf_signer_sign_requests_total", labels) or 0.0


async def test_a_role_less_refusal_counts_under_the_resolved_role(harness: Harness) -> None:
    h = harness
    p = h.payloads
    await h.create_key("resolved")
    await h.sign("resolved", p.timestamp(5))  # no role named: the payload says timestamp
    assert count("Sign", "timestamp", "OK") == 1
    with pytest.raises(grpc.aio.AioRpcError) as rollback:
        await h.sign("resolved", p.timestamp(4))
    assert rollback.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    reply = await h.signer.SignBatch(
        pb.SignBatchRequest(
            requests=[
                pb.SignRequest(key="resolved", payload=p.timestamp(3)),
                pb.SignRequest(key="resolved", payload=p.snapshot(1)),
            ]
        )
    )
    assert [r.code for r in reply.results] == [grpc.StatusCode.FAILED_PRECONDITION.value[0], 0]
    assert count("Sign", "timestamp", "FAILED_PRECONDITION") == 1
    assert count("SignBatch", "timestamp", "FAILED_PRECONDITION") == 1
    assert count("SignBatch", "snapshot", "OK") == 1
    for method in ("Sign", "SignBatch"):
        assert count(method, "unknown", "FAILED_PRECONDITION") == 0
