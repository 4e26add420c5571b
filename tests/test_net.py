"""The one loopback rule: plaintext only towards this machine."""

from __future__ import annotations

import pytest

from tuf_signer._net import (
    check_plaintext_credentials,
    is_loopback,
    is_loopback_endpoint,
    split_host_port,
)
from tuf_signer.errors import ConfigError


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        pytest.param("localhost", True, id="localhost"),
        pytest.param("localhost:9000", True, id="localhost-port"),
        pytest.param("127.0.0.1:9000", True, id="v4"),
        pytest.param("127.8.9.10:9000", True, id="v4-any-127"),
        pytest.param("[::1]:9000", True, id="v6-bracketed"),
        pytest.param("::1", True, id="v6-bare"),
        pytest.param("::1:8443", True, id="v6-unbracketed-with-port"),
        pytest.param("10.0.0.1:9000", False, id="private-v4"),
        pytest.param("[fe80::1]:9000", False, id="v6-link-local"),
        pytest.param("fe80::1", False, id="v6-bare-not-loopback"),
        pytest.param("cloudkms.googleapis.com:443", False, id="name"),
        pytest.param("localhost.evil.example:443", False, id="name-with-localhost-prefix"),
    ],
)
def test_loopback_endpoints(endpoint: str, loopback: bool) -> None:
    assert is_loopback_endpoint(endpoint) is loopback


@pytest.mark.parametrize("endpoint", ["127.0.0.1:9000", "::1:8443", "[::1]:1"])
def test_the_config_and_the_transport_agree(endpoint: str) -> None:
    host, _ = split_host_port(endpoint, "x")
    assert is_loopback(host) is is_loopback_endpoint(endpoint)


def test_credentials_are_refused_in_plaintext() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^backends\.k\.credentials_file: not used with the "
        r"plaintext loopback endpoint ::1:8443$",
    ):
        check_plaintext_credentials("::1:8443", "creds.json", "backends.k.credentials_file")
    assert check_plaintext_credentials("10.0.0.1:443", "creds.json", "s") is False
    assert check_plaintext_credentials(None, None, "s") is False
    assert check_plaintext_credentials("127.0.0.1:9", None, "s") is True
