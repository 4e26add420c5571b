"""SIGHUP reloads the server's TLS material (issue 15, item 6), and names what it cannot.

A real mutual-TLS server: a client whose certificate comes from a new CA is
refused until the new CA is in ``client_ca`` and the server reloads; a server
certificate from the new CA is served from the next handshake on. Settings
that need a restart are logged as not applied, by name only.
"""

from __future__ import annotations

import logging
import re

import grpc
import pytest

from tests.server.conftest import TlsHarness
from tuf_signer.cli._devcerts import DevCa
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc


async def public_keys(h: TlsHarness, creds: grpc.ChannelCredentials) -> grpc.StatusCode:
    """One GetPublicKeys call over a new connection: its status."""
    async with grpc.aio.secure_channel(h.address, creds) as channel:
        try:
            await pb_grpc.SignerStub(channel).GetPublicKeys(pb.GetPublicKeysRequest(), timeout=5)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def client(h: TlsHarness, ca_dir: str, root: bytes) -> grpc.ChannelCredentials:
    tls = h.pki.directory / ca_dir
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=(tls / "backend.key").read_bytes(),
        certificate_chain=(tls / "backend.crt").read_bytes(),
    )


async def test_a_new_client_ca_is_in_force_after_reload(
    tls_harness: TlsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = tls_harness
    tls = h.pki.directory / "tls"
    old_ca = (tls / "ca.crt").read_bytes()
    new = DevCa(h.pki.directory / "newca")
    new.issue("backend", server=False)
    newcomer = client(h, "newca", old_ca)
    assert await public_keys(h, newcomer) == grpc.StatusCode.UNAVAILABLE
    assert await public_keys(h, client(h, "tls", old_ca)) == grpc.StatusCode.OK

    # The new CA in client_ca, then SIGHUP. (DevCa names every CA alike, so a
    # bundle of both would be matched by name to the first: replaced, here.)
    (tls / "ca.crt").write_bytes(new.cert.read_bytes())
    with caplog.at_level(logging.INFO, "tuf_signer.server._app"):
        assert h.server.reload()
    assert "new server certificate, key and client CA in force" in caplog.text
    assert await public_keys(h, newcomer) == grpc.StatusCode.OK
    # The old CA's clients are refused from the next handshake on.
    assert await public_keys(h, client(h, "tls", old_ca)) == grpc.StatusCode.UNAVAILABLE
    # A reload with nothing new changes nothing.
    caplog.clear()
    with caplog.at_level(logging.INFO, "tuf_signer.server._app"):
        assert h.server.reload()
    assert "new server certificate" not in caplog.text
    assert await public_keys(h, newcomer) == grpc.StatusCode.OK


async def test_a_new_server_certificate_is_served_after_reload(tls_harness: TlsHarness) -> None:
    h = tls_harness
    tls = h.pki.directory / "tls"
    new = DevCa(h.pki.directory / "newca")
    new.issue("server", server=True)
    trusting_new = client(h, "tls", new.cert.read_bytes())
    assert await public_keys(h, trusting_new) == grpc.StatusCode.UNAVAILABLE
    for name in ("server.crt", "server.key"):
        (tls / name).write_bytes((h.pki.directory / "newca" / name).read_bytes())
    assert h.server.reload()
    assert await public_keys(h, trusting_new) == grpc.StatusCode.OK


async def test_unreadable_tls_files_keep_the_old_and_say_which(
    tls_harness: TlsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = tls_harness
    tls = h.pki.directory / "tls"
    ca = (tls / "ca.crt").read_bytes()
    (tls / "server.key").unlink()
    with caplog.at_level(logging.ERROR, "tuf_signer.server._app"):
        assert not h.server.reload()
    assert "keeping the previous server certificate: server.tls.key: cannot read" in caplog.text
    assert await public_keys(h, client(h, "tls", ca)) == grpc.StatusCode.OK


async def test_settings_that_need_a_restart_are_named_as_not_applied(
    tls_harness: TlsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = tls_harness
    text = re.sub(r"max_payload_bytes = \d+", "max_payload_bytes = 4096", h.config_path.read_text())
    h.config_path.write_text(
        text.replace("[server]\n", "[server]\nworkers = 3\n", 1)
        + "\n[limits]\nrate = 7.0\n\n[ops]\nexpiry_margin_seconds = 60\n"
    )
    with caplog.at_level(logging.INFO, "tuf_signer.server._app"):
        assert h.server.reload()
    restart = sorted(
        r.getMessage().split(" ")[1]
        for r in caplog.records
        if r.getMessage().endswith("not applied: it needs a restart")
    )
    assert restart == ["ops.expiry_margin_seconds", "server.max_payload_bytes", "server.workers"]
    assert "rate=7.0" in caplog.text  # the limits are in force
    assert "4096" not in caplog.text.replace("max_inflight", "")  # names, not values


async def test_a_key_that_does_not_match_the_certificate_keeps_the_old_pair(
    tls_harness: TlsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    # A rotation half done: the new key is in place, the certificate is still the old one.
    h = tls_harness
    tls = h.pki.directory / "tls"
    ca = (tls / "ca.crt").read_bytes()
    new = DevCa(h.pki.directory / "newca")
    new.issue("server", server=True)
    (tls / "server.key").write_bytes((h.pki.directory / "newca" / "server.key").read_bytes())
    with caplog.at_level(logging.INFO, "tuf_signer.server._app"):
        assert not h.server.reload()
    assert (
        "keeping the previous server certificate: server.tls.key: does not match the "
        "certificate of server.tls.cert" in caplog.text
    )
    assert "new server certificate, key and client CA in force" not in caplog.text
    assert await public_keys(h, client(h, "tls", ca)) == grpc.StatusCode.OK
