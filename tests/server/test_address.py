"""One owner per listening address (issue 12, finding 6): the claim itself."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tuf_signer.errors import ConfigError
from tuf_signer.server._address import claim_address


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
