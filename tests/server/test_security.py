"""P2 through real TLS connections: who gets in, what each identity may do, limits."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tuf_signer.config import load_config
from tuf_signer.errors import ConfigError
from tuf_signer.keys.pkcs11 import _thread as pkcs11_thread
from tuf_signer.model import Outcome
from tuf_signer.server import SignerServer
from tuf_signer.v1 import signer_pb2 as pb

from .conftest import ADMIN, BACKEND, NOBODY, TlsHarness, write_tls_config

# --- the handshake --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "ca_dir"),
    [(None, "tls"), ("backend", "stranger")],
    ids=["no-client-certificate", "certificate-from-another-ca"],
)
async def test_handshake_refuses_unknown_clients(
    tls_harness: TlsHarness, client: str | None, ca_dir: str
) -> None:
    before = len(tls_harness.records())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tls_harness.signer(client, ca_dir).Sign(
            pb.SignRequest(key="k", payload=tls_harness.payloads.timestamp(1)), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # Refused at the handshake: the request never reached the service.
    assert len(tls_harness.records()) == before


def _tls_connect(h: TlsHarness, version: ssl.TLSVersion | None) -> str:
    """A raw TLS handshake with the backend's certificate; returns the version agreed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(h.pki.ca)
    tls = h.pki.directory / "tls"
    ctx.load_cert_chain(tls / "backend.crt", tls / "backend.key")
    ctx.set_alpn_protocols(["h2"])
    # Let this client offer old versions, so that a refusal is the server's.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", h.server.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        return str(conn.version())


async def test_tls_13_preferred_12_accepted(tls_harness: TlsHarness) -> None:
    assert await asyncio.to_thread(_tls_connect, tls_harness, None) == "TLSv1.3"
    assert await asyncio.to_thread(_tls_connect, tls_harness, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_below_12_refused(tls_harness: TlsHarness) -> None:
    with pytest.raises(ssl.SSLError) as info:
        await asyncio.to_thread(_tls_connect, tls_harness, ssl.TLSVersion.TLSv1_1)
    # The server hung up on the TLS 1.1 hello (gRPC logs UNSUPPORTED_PROTOCOL);
    # the client itself did offer it.
    message = str(info.value).upper()
    assert "EOF" in message or "VERSION" in message
    assert "NO_PROTOCOLS_AVAILABLE" not in message


# --- who may do what ----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One call as one identity, and the status it must get."""

    client: str
    do: Callable[[TlsHarness, str], Awaitable[object]]
    code: grpc.StatusCode
    identity: str
    reason_names_identity: bool = True


def _sign(role: str = "", key: str = "k", kind: str = "timestamp"):
    async def do(h: TlsHarness, client: str) -> object:
        # Targets listing no target file: top-level targets of a key with bins.
        extra = {"role": role, "n_targets": 0} if kind == "targets" else {}
        payload = getattr(h.payloads, kind)(1, **extra)
        return await h.signer(client).Sign(pb.SignRequest(key=key, role=role, payload=payload))

    return do


async def _rotate(h: TlsHarness, client: str) -> object:
    return await h.admin(client).RotateKey(pb.RotateKeyRequest(key="k"))


async def _list_keys(h: TlsHarness, client: str) -> object:
    return await h.admin(client).ListKeys(pb.ListKeysRequest())


async def _public_keys(h: TlsHarness, client: str) -> object:
    return await h.signer(client).GetPublicKeys(pb.GetPublicKeysRequest())


async def _audit(h: TlsHarness, client: str) -> object:
    return await h.audit(client).ListRecords(pb.ListRecordsRequest())


OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
ACCESS = {
    "backend-signs-timestamp": Call("backend", _sign(), OK, BACKEND),
    "backend-signs-a-bin": Call("backend", _sign("bins-03", kind="targets"), OK, BACKEND),
    "backend-reads-public-keys": Call("backend", _public_keys, OK, BACKEND),
    "backend-cannot-rotate": Call("backend", _rotate, DENIED, BACKEND),
    "backend-cannot-list-admin-keys": Call("backend", _list_keys, DENIED, BACKEND),
    "backend-cannot-read-audit": Call("backend", _audit, DENIED, BACKEND),
    # Refused by the key's own policy first: root is never signed online.
    "backend-cannot-sign-root": Call(
        "backend", _sign("root", kind="root"), DENIED, BACKEND, reason_names_identity=False
    ),
    "backend-cannot-sign-targets": Call(
        "backend", _sign("targets", kind="targets"), DENIED, BACKEND
    ),
    "backend-cannot-use-another-key": Call("backend", _sign(key="other"), DENIED, BACKEND),
    "admin-rotates": Call("admin", _rotate, OK, ADMIN),
    "admin-reads-audit": Call("admin", _audit, OK, ADMIN),
    "admin-cannot-sign": Call("admin", _sign(), DENIED, ADMIN),
    "no-rule-cannot-sign": Call("nobody", _sign(), DENIED, NOBODY),
    "no-rule-cannot-read-keys": Call("nobody", _public_keys, DENIED, NOBODY),
}


@pytest.mark.parametrize("call", list(ACCESS.values()), ids=list(ACCESS))
async def test_access_policy(tls_harness: TlsHarness, call: Call) -> None:
    before = len(tls_harness.records())
    if call.code == OK:
        await call.do(tls_harness, call.client)
        new = tls_harness.records()[before:]
        assert all(r.event.identity == call.identity for r in new)
        return
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.do(tls_harness, call.client)
    assert info.value.code() == call.code
    assert call.reason_names_identity == (call.identity in info.value.details())
    if call.client == "nobody":
        # No rule at all: counted, then one summary record (issue 10, finding 4).
        assert len(tls_harness.records()) == before
        assert await tls_harness.server.service.flush_refusals() == 1
    new = tls_harness.records()[before:]
    assert len(new) == 1, "every refusal is recorded"
    assert new[0].event.identity == call.identity
    assert new[0].event.outcome is Outcome.REFUSED
    assert new[0].event.status == call.code.name
    assert new[0].event.signature == ""


# Which certificate names whom, and which certificates are clients at all: test_identity.py.


# --- limits and deadlines ------------------------------------------------------------------

TIGHT = {"extra": "[limits]\nmax_concurrent = 2\nrate = 1000\nburst = 1000\n"}


async def _hold_hsm(seconds: float) -> asyncio.Future[None]:
    """Keep the one PKCS#11 thread busy: signs queue up behind it (a slow HSM)."""
    import time

    loop = asyncio.get_running_loop()
    return loop.run_in_executor(pkcs11_thread.executor(), time.sleep, seconds)


@pytest.mark.parametrize("tls_harness", [TIGHT], indirect=True, ids=["max-concurrent-2"])
async def test_concurrency_limit_is_per_identity(tls_harness: TlsHarness) -> None:
    h = tls_harness
    held = await _hold_hsm(1.0)
    stub = h.signer("backend")
    payloads = [h.payloads.targets(1, salt=str(i), role=f"bins-0{i}") for i in range(4)]
    calls = [
        asyncio.ensure_future(stub.Sign(pb.SignRequest(key="k", role=f"bins-0{i}", payload=p)))
        for i, p in enumerate(payloads)
    ]
    await asyncio.sleep(0.3)
    # Meanwhile another identity is served at once.
    keys = await h.signer("admin").GetPublicKeys(pb.GetPublicKeysRequest(), timeout=0.5)
    assert keys.keys[0].name == "k"
    results = await asyncio.gather(*calls, return_exceptions=True)
    await held
    granted = [r for r in results if isinstance(r, pb.SignResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(granted) == 2
    assert [e.code() for e in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    assert all("limit 2" in e.details() for e in refused)
    # Limited calls are counted into one summary record (issue 10, finding 4).
    assert not [r for r in h.records() if r.event.status == "RESOURCE_EXHAUSTED"]
    await h.server.service.flush_refusals()
    (summary,) = [r.event for r in h.records() if r.event.status == "RESOURCE_EXHAUSTED"]
    assert (summary.identity, summary.operation, summary.detail["count"]) == (
        BACKEND,
        "refused-calls",
        2,
    )


RATE = {"extra": "[limits]\nrate = 0.001\nburst = 3\n"}


@pytest.mark.parametrize("tls_harness", [RATE], indirect=True, ids=["burst-3"])
async def test_rate_limit_is_per_identity(tls_harness: TlsHarness) -> None:
    h = tls_harness  # the admin spent one token creating the key
    stub = h.signer("backend")
    for version in (1, 2, 3):
        await stub.Sign(pb.SignRequest(key="k", payload=h.payloads.timestamp(version)))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Sign(pb.SignRequest(key="k", payload=h.payloads.timestamp(4)))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit" in info.value.details()
    await h.server.service.flush_refusals()
    summary = h.records()[-1].event
    assert (summary.status, summary.detail["count"]) == ("RESOURCE_EXHAUSTED", 1)
    # The admin's bucket is its own.
    await h.admin("admin").ListKeys(pb.ListKeysRequest())


@pytest.mark.parametrize(
    "tls_harness",
    [{"extra": "", "server": "call_deadline_seconds = 0.5\n"}],
    indirect=True,
    ids=["deadline-0.5s"],
)
async def test_server_side_deadline(tls_harness: TlsHarness) -> None:
    h = tls_harness
    held = await _hold_hsm(2.0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.signer("backend").Sign(pb.SignRequest(key="k", payload=h.payloads.timestamp(1)))
    await held
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    last = h.records()[-1].event
    assert last.status == "DEADLINE_EXCEEDED"
    assert last.signature == ""
    # Nothing was signed: version 1 is still free.
    r = await h.signer("backend").Sign(pb.SignRequest(key="k", payload=h.payloads.timestamp(1)))
    assert r.metadata_version == 1


# --- reload --------------------------------------------------------------------------------


async def test_reload_applies_a_valid_policy_and_keeps_the_old_on_error(
    tls_harness: TlsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = tls_harness
    text = h.config_path.read_text()
    # Narrow the backend to snapshots only.
    h.config_path.write_text(
        text.replace('roles = ["timestamp", "snapshot", "bins-*"]', 'roles = ["snapshot"]')
    )
    assert h.server.reload()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.signer("backend").Sign(pb.SignRequest(key="k", payload=h.payloads.timestamp(1)))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await h.signer("backend").Sign(pb.SignRequest(key="k", payload=h.payloads.snapshot(1)))

    # A broken file leaves that policy in force and says why.
    h.config_path.write_text(
        text.replace('operations = ["sign", "read-keys"]', 'operations = ["sing"]')
    )
    assert not h.server.reload()
    assert "keeping the previous access policy" in caplog.text
    assert "unknown operation 'sing'" in caplog.text
    with pytest.raises(grpc.aio.AioRpcError):
        await h.signer("backend").Sign(pb.SignRequest(key="k", payload=h.payloads.timestamp(1)))
    await h.signer("backend").Sign(pb.SignRequest(key="k", payload=h.payloads.snapshot(2)))


# --- start-up checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "mode", "setting"),
    [
        ("tls/server.key", 0o644, "server.tls.key"),
        ("tls/server.key", 0o640, "server.tls.key"),
        ("hsm.pin", 0o604, "backends.softhsm.pin_file"),
    ],
    ids=["tls-key-world-readable", "tls-key-group-readable", "pin-world-readable"],
)
async def test_server_refuses_secret_files_others_can_read(
    tmp_path: Path, softhsm, pki, secret: str, mode: int, setting: str
) -> None:
    path = write_tls_config(tmp_path / "signer", softhsm)
    (tmp_path / "signer" / secret).chmod(mode)
    server = SignerServer(load_config(path))
    with pytest.raises(ConfigError, match=f"{setting}: .* accessible to group or others"):
        await server.start()
