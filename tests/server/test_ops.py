"""The ops listener (issue 15, item 2): metrics and probes in plaintext, nothing else.

A real mutual-TLS signer with ``[ops] listen`` on a loopback port: kubelet-style
HTTP and gRPC probes and a Prometheus scrape answer there, without a client
certificate, while the gRPC port still refuses any client without one.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import TlsHarness, bin_role, write_config
from tuf_signer.config import load_config
from tuf_signer.errors import ConfigError, StoreError
from tuf_signer.server._ops import check_ops_listen
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

OPS = {"extra": '\n[ops]\nlisten = "127.0.0.1:0"\n'}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def http(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    """One plain HTTP request to the ops port: (status, body)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    return await asyncio.to_thread(http, port, path, method)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples named ``name`` in an exposition, by their sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def health(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(answer.status)


@pytest.mark.parametrize("tls_harness", [OPS], indirect=True)
async def test_probes_answer_in_plaintext_while_the_grpc_port_demands_a_certificate(
    tls_harness: TlsHarness,
) -> None:
    h = tls_harness
    port = h.server.ops_port
    assert port and port != h.server.port
    assert await get(port, "/healthz") == (200, "ok\n")
    assert await get(port, "/readyz") == (200, "ready\n")
    for service in ("", "readiness", "liveness"):
        assert await health(port, service) == SERVING, service
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await health(port, "tuf.signer.v1.Signer")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    # The ops port serves nothing but health: no Sign there, even in plaintext.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError) as sign:
            await pb_grpc.SignerStub(plain).Sign(
                pb.SignRequest(key="k", role="timestamp", payload=h.payloads.timestamp(1)),
                timeout=5,
            )
    assert sign.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # The gRPC port: no client certificate, no call (not even health).
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health_pb2_grpc.HealthStub(h.channel(None)).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # ... and in plaintext neither.
    with pytest.raises(grpc.aio.AioRpcError) as plaintext:
        await health(h.server.port)
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("tls_harness", [OPS], indirect=True)
async def test_readiness_follows_health_and_liveness_does_not(tls_harness: TlsHarness) -> None:
    h = tls_harness
    port = h.server.ops_port
    # What the interceptor reports when a call fails on the store.
    await h.server.health.fault(StoreError("audit store unavailable: disk full"))
    assert await get(port, "/readyz") == (503, "not ready\n")
    assert await health(port) == NOT_SERVING
    assert await health(port, "readiness") == NOT_SERVING
    assert await get(port, "/healthz") == (200, "ok\n")
    assert await health(port, "liveness") == SERVING
    text = (await get(port, "/metrics"))[1]
    assert samples(text, "tuf_signer_serving") == {(): 0.0}
    await h.server.health.probe_once()  # the store answers again
    assert await get(port, "/readyz") == (200, "ready\n")
    assert await health(port) == SERVING
    text = (await get(port, "/metrics"))[1]
    assert samples(text, "tuf_signer_serving") == {(): 1.0}
    assert samples(text, "tuf_signer_store_up") == {(): 1.0}
    assert samples(text, "tuf_signer_backend_up") == {(("backend", "softhsm"),): 1.0}


@pytest.mark.parametrize("tls_harness", [OPS], indirect=True)
async def test_the_ops_port_serves_three_paths_and_nothing_else(tls_harness: TlsHarness) -> None:
    port = tls_harness.server.ops_port
    assert (await get(port, "/"))[0] == 404
    assert (await get(port, "/metrics/../keys"))[0] == 404
    assert (await get(port, "/readyz", "POST"))[0] == 405
    assert (await get(port, "/healthz", "HEAD")) == (200, "")
    status, text = await get(port, "/metrics?name[]=x")  # a query changes nothing
    assert status == 200 and "tuf_signer_sign_requests" in text
    # A request that never ends its headers gets no answer, and no memory.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


@pytest.mark.parametrize("tls_harness", [OPS], indirect=True)
async def test_metrics_move_with_traffic_and_keep_labels_bounded(tls_harness: TlsHarness) -> None:
    h = tls_harness
    port = h.server.ops_port
    before = (await get(port, "/metrics"))[1]
    signer = h.signer("backend")
    await signer.Sign(pb.SignRequest(key="k", role="timestamp", payload=h.payloads.timestamp(5)))
    with pytest.raises(grpc.aio.AioRpcError):  # a rollback: refused, on the record
        await signer.Sign(
            pb.SignRequest(key="k", role="timestamp", payload=h.payloads.timestamp(4))
        )
    await signer.SignBatch(
        pb.SignBatchRequest(
            requests=[
                pb.SignRequest(
                    key="k", role=bin_role(i), payload=h.payloads.targets(1, role=bin_role(i))
                )
                for i in range(3)
            ]
        )
    )
    with pytest.raises(grpc.aio.AioRpcError):  # a key nobody created: not a label of its own
        await signer.Sign(
            pb.SignRequest(key="made-up\nname", role="timestamp", payload=h.payloads.timestamp(6))
        )
    after = (await get(port, "/metrics"))[1]

    def moved(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        old = samples(before, name)
        return {k: v - old.get(k, 0) for k, v in samples(after, name).items() if v != old.get(k)}

    def labels(method: str, key: str, role: str, status: str) -> tuple[tuple[str, str], ...]:
        return (("key", key), ("method", method), ("role_class", role), ("status", status))

    assert moved("tuf_signer_sign_requests_total") == {
        labels("Sign", "k", "timestamp", "OK"): 1,
        labels("Sign", "k", "timestamp", "FAILED_PRECONDITION"): 1,
        labels("SignBatch", "k", "bins", "OK"): 3,
        labels("Sign", "other", "timestamp", "INVALID_ARGUMENT"): 1,
    }
    stages = moved("tuf_signer_sign_stage_seconds_count")
    assert stages[(("stage", "policy"),)] >= 6
    assert stages[(("stage", "hsm"),)] >= 2  # the Sign, and the batch's chunk
    assert stages[(("stage", "audit_commit"),)] >= 4


def test_the_ops_listener_is_loopback_unless_allowed(tmp_path: Path, softhsm: Any) -> None:
    path = write_config(tmp_path, softhsm)
    base = path.read_text()
    path.write_text(base + '\n[ops]\nlisten = "0.0.0.0:9464"\n')
    with pytest.raises(ConfigError, match=r"ops.listen: .*loopback.*allow_non_loopback"):
        load_config(path)
    path.write_text(base + '\n[ops]\nlisten = "0.0.0.0:9464"\nallow_non_loopback = true\n')
    assert load_config(path).ops.listen == "0.0.0.0:9464"
    with pytest.raises(ConfigError, match=r"ops\.listen: several workers need a fixed port"):
        check_ops_listen("127.0.0.1:0", False, workers=2)
    for bad, match in [
        ('listen = "9464"', "ops.listen: expected HOST:PORT"),
        ('log_format = "xml"', "ops.log_format: expected text or json"),
        ("expiry_margin_seconds = 0", "ops.expiry_margin_seconds: must be positive"),
        ("freshness_interval_seconds = 7200", "ops.freshness_interval_seconds"),
        ("metrics = true", "ops.metrics: unknown setting"),
    ]:
        path.write_text(base + f"\n[ops]\n{bad}\n")
        with pytest.raises(ConfigError, match=match):
            load_config(path)


LIMITED = {"extra": OPS["extra"] + "\n[limits]\nrate = 0.001\nburst = 3\n"}


@pytest.mark.parametrize("tls_harness", [LIMITED], indirect=True)
async def test_refusals_before_a_key_are_counted_by_bounded_labels(
    tls_harness: TlsHarness,
) -> None:
    h = tls_harness
    port = h.server.ops_port
    before = (await get(port, "/metrics"))[1]
    backend = h.signer("backend")
    codes = []
    for _ in range(5):
        try:
            await backend.GetPublicKeys(pb.GetPublicKeysRequest(), timeout=5)
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as e:
            codes.append(e.code())
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 2
    with pytest.raises(grpc.aio.AioRpcError) as nobody:  # a certificate without a rule
        await h.signer("nobody").GetPublicKeys(pb.GetPublicKeysRequest(), timeout=5)
    assert nobody.value.code() == grpc.StatusCode.PERMISSION_DENIED
    after = (await get(port, "/metrics"))[1]

    def moved(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        old = samples(before, name)
        return {k: v - old.get(k, 0) for k, v in samples(after, name).items() if v != old.get(k)}

    assert moved("tuf_signer_limit_refusals_total") == {
        (("identity", "uri:spiffe://tuf-signer.dev/backend"),): 2
    }
    assert moved("tuf_signer_unadmitted_calls_total") == {(("status", "PERMISSION_DENIED"),): 1}
