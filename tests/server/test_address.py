"""One owner per listening address (issue 12, finding 6): the claim itself."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port as pick_free_port
from tuf_signer.config import load_config
from tuf_signer.errors import ConfigError
from tuf_signer.server import SignerServer, _app
from tuf_signer.server._address import claim_address

from .conftest import Clock, make_pki, write_tls_config


@pytest.fixture
def free_port() -> int:
    return pick_free_port()


@pytest.fixture
def listener(free_port: int) -> Iterator[int]:
    """Another program listening on a port (with SO_REUSEPORT, as gRPC does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", free_port))
        s.listen()
        yield free_port


def test_a_second_claim_is_refused_until_the_first_is_released(free_port: int) -> None:
    address = f"127.0.0.1:{free_port}"
    first = claim_address(address)
    with pytest.raises(
        ConfigError,
        match=rf"server.listen: 127.0.0.1:{free_port} is already "
        "served by another tuf-signer.*--listen",
    ):
        claim_address(address)
    first.release()
    claim_address(address).release()


def test_an_address_held_by_another_program_is_refused(listener: int) -> None:
    with pytest.raises(ConfigError, match=rf"127.0.0.1:{listener} is in use by another program"):
        claim_address(f"127.0.0.1:{listener}")


def test_a_refused_probe_leaves_no_lock(free_port: int) -> None:
    address = f"127.0.0.1:{free_port}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port))
        s.listen()
        with pytest.raises(ConfigError, match="in use by another program"):
            claim_address(address)
    claim_address(address).release()


@pytest.mark.parametrize(
    ("listen", "match"),
    [
        pytest.param("127.0.0.1", r"server.listen: expected HOST:PORT", id="no-port"),
        pytest.param("127.0.0.1:99999", r"server.listen: expected HOST:PORT", id="port-too-big"),
        pytest.param("no-such-host.invalid:50051", r"server.listen: cannot resolve", id="dns"),
    ],
)
def test_bad_addresses_name_the_setting(listen: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        claim_address(listen)


def test_port_zero_needs_no_claim() -> None:
    first = claim_address("127.0.0.1:0")
    second = claim_address("127.0.0.1:0")
    first.release()
    second.release()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("127.0.0.1", "localhost", id="ip-then-name"),
        pytest.param("localhost", "127.0.0.1", id="name-then-ip"),
        pytest.param("0.0.0.0", "127.0.0.1", id="any-then-loopback"),
        pytest.param("127.0.0.1", "0.0.0.0", id="loopback-then-any"),
    ],
)
def test_the_claim_is_on_the_port_whatever_the_host(
    free_port: int, first: str, second: str
) -> None:
    """Review F: ``localhost:P``, ``127.0.0.1:P`` and ``0.0.0.0:P`` are one claim.

    Named after the host string, both claims passed, and two supervisors could
    both pass the test bind before their workers listened, then share the port.
    """
    held = claim_address(f"{first}:{free_port}")
    try:
        with pytest.raises(
            ConfigError,
            match=rf"{second}:{free_port} is already served by another tuf-signer.*"
            rf"one tuf-signer per port.*port {free_port}",
        ):
            claim_address(f"{second}:{free_port}")
    finally:
        held.release()
    claim_address(f"{second}:{free_port}").release()


@pytest.mark.parametrize("failure", ["deny-list", "credentials"])
async def test_a_failing_credential_load_releases_the_claim(
    tmp_path: Path, softhsm: Any, free_port: int, failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review F: the TLS files are read after the claim; a failure there must not
    leave the port claimed by a server that never started."""
    directory = tmp_path / "signer"
    make_pki(directory)
    path = write_tls_config(directory, softhsm)
    path.write_text(
        path.read_text()
        .replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{free_port}"')
        .replace('client_ca = "tls/ca.crt"\n', 'client_ca = "tls/ca.crt"\ndeny_list = "deny.txt"\n')
    )
    (directory / "deny.txt").write_text("# nobody revoked yet\n")
    server = SignerServer(load_config(path), clock=Clock())
    if failure == "deny-list":
        (directory / "deny.txt").write_text("not a serial\n")  # a bad edit since
        match = r"server.tls.deny_list: .*not a serial"
    else:

        def unreadable(tls: object) -> None:
            raise ConfigError("server.tls: cannot read server.key: Input/output error")

        monkeypatch.setattr(_app, "_server_credentials", unreadable)
        match = r"server.tls: cannot read server.key"
    with pytest.raises(ConfigError, match=match):
        await server.start()
    claim_address(f"127.0.0.1:{free_port}").release()  # free again: no restart needed
