"""Addresses: ``HOST:PORT`` parsing and the loopback rule, shared by every layer.

Plaintext is allowed only towards this machine (the development listener, the
fake KMS): the config, the client and the KMS transport judge "this machine"
with the one rule here.
"""

from __future__ import annotations

import ipaddress

from tuf_signer.errors import ConfigError


def split_host_port(listen: str, setting: str = "server.listen") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6).

    Raises:
        ConfigError: not of that form; the message names ``setting``.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{setting}: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_endpoint(endpoint: str) -> bool:
    """True when ``HOST[:PORT]`` (``[v6]:PORT`` for IPv6) names a loopback host.

    An unbracketed IPv6 address is read whole first (``::1``), then without a
    last ``:PORT`` (``::1:8443``, as ``split_host_port`` reads it), so that
    the config and the KMS transport agree on which endpoints are plaintext.
    """
    if endpoint.startswith("["):
        return is_loopback(endpoint[1:].partition("]")[0])
    if endpoint.count(":") > 1 and is_loopback(endpoint):
        return True
    return is_loopback(endpoint.rpartition(":")[0] if ":" in endpoint else endpoint)


def check_plaintext_credentials(endpoint: str | None, credentials: object, setting: str) -> bool:
    """Whether ``endpoint`` is spoken to in plaintext (loopback); refuse credentials there.

    Credentials sent in plaintext would leave the machine's protection for
    nothing: the loopback endpoint is the local fake KMS, which takes none.

    Raises:
        ConfigError: ``credentials`` given with a plaintext loopback endpoint.
    """
    plaintext = endpoint is not None and is_loopback_endpoint(endpoint)
    if plaintext and credentials is not None:
        raise ConfigError(f"{setting}: not used with the plaintext loopback endpoint {endpoint}")
    return plaintext
