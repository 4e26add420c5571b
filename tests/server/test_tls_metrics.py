"""``tuf_signer_tls_handshakes_started_total`` (issue 15): one per connection to the
gRPC port, whatever its handshake's fate, on a real mutual-TLS server.

gRPC asks the server's credential fetcher (``_reload.ServerTls``) once per
accepted connection, before its handshake: a client with no certificate, one
from another CA, a plaintext client and a good client each count once; more
calls on a connection already open count nothing. Failures are not published
as a number: a connection that completes its handshake and never calls is
invisible from Python, so "started minus completed" cannot be computed.
"""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY

from tests.server.conftest import TlsHarness
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

STARTED = "tuf_signer_tls_handshakes_started_total"


def started() -> float:
    return REGISTRY.get_sample_value(STARTED) or 0.0


async def calls(channel: grpc.aio.Channel, n: int = 1) -> grpc.StatusCode:
    """``n`` GetPublicKeys calls on ``channel``: the status of the last."""
    code = grpc.StatusCode.OK
    for _ in range(n):
        try:
            await pb_grpc.SignerStub(channel).GetPublicKeys(pb.GetPublicKeysRequest(), timeout=5)
        except grpc.aio.AioRpcError as e:
            code = e.code()
    return code


@pytest.mark.parametrize(
    ("client", "status"),
    [
        ("no certificate", grpc.StatusCode.UNAVAILABLE),
        ("another CA", grpc.StatusCode.UNAVAILABLE),
        ("plaintext", grpc.StatusCode.UNAVAILABLE),
        ("good", grpc.StatusCode.OK),
    ],
    ids=["no-cert", "other-ca", "plaintext", "good"],
)
async def test_each_connection_counts_once_whatever_its_handshake(
    tls_harness: TlsHarness, client: str, status: grpc.StatusCode
) -> None:
    h = tls_harness
    if client == "plaintext":
        channel = grpc.aio.insecure_channel(h.address)
    else:
        creds = {
            "no certificate": h.pki.creds(None),
            "another CA": h.pki.creds("backend", "stranger"),
            "good": h.pki.creds("backend"),
        }[client]
        channel = grpc.aio.secure_channel(h.address, creds)
    before = started()
    async with channel:
        # Three calls: a good client's share one connection; a refused client's
        # first call fails and the channel backs off (a second or more) before
        # it connects again, so the calls that follow fail without a new handshake.
        assert await calls(channel, 3) == status
    assert started() - before == 1


async def test_a_good_client_counts_once_per_connection(tls_harness: TlsHarness) -> None:
    h = tls_harness
    before = started()
    for _ in range(3):
        async with grpc.aio.secure_channel(h.address, h.pki.creds("backend")) as channel:
            assert await calls(channel, 2) == grpc.StatusCode.OK
    assert started() - before == 3
