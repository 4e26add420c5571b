"""One owner per listening address.

gRPC turns on SO_REUSEPORT for every listener, so a second ``tuf-signer serve``
on an address already in use would start silently and share it: the kernel would
send some clients to a signer with another store, whose high-water marks know
nothing of the first one's (finding 6 of issue 12). So before it listens, a
server (or the supervisor of several workers) claims the address:

1. it binds an abstract Unix socket named after the PORT, held for its whole
   life; the kernel releases it when the process dies, however it dies, so a
   second tuf-signer on the same port (and network namespace) is refused, and
   a ``kill -9`` leaves no stale lock. The claim names the port, not the host:
   ``localhost:P``, ``127.0.0.1:P`` and ``0.0.0.0:P`` overlap, and two
   supervisors that both passed the test bind below before either's workers
   listened would share the port. One tuf-signer per port, then;
2. it test-binds the TCP address without SO_REUSEPORT, so an address held by any
   other program is refused too.

The workers of one supervisor do not claim: their supervisor holds the claim and
they share the port on purpose. A single server also listens without
SO_REUSEPORT (``grpc.so_reuseport`` off), so a race past the claim still fails.
"""

from __future__ import annotations

import errno
import socket

from tuf_signer._net import split_host_port
from tuf_signer.errors import ConfigError

_LOCK_PREFIX = b"\0tuf-signer/listen/"


class AddressClaim:
    """This process's claim on a listening address; ``release`` (or exit) drops it."""

    def __init__(self, lock: socket.socket | None) -> None:
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def claim_address(listen: str, setting: str = "server.listen") -> AddressClaim:
    """Claim ``listen`` (``HOST:PORT``) for this process, or say who holds it.

    Port 0 (a port the kernel picks) needs no claim.

    Raises:
        ConfigError: another tuf-signer, or another program, holds the address;
            the message names the address and what to do.
    """
    host, port = split_host_port(listen, setting)
    if port == 0:
        return AddressClaim(None)
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        lock.bind(_LOCK_PREFIX + f"port/{port}".encode())
    except OSError as e:
        lock.close()
        if e.errno != errno.EADDRINUSE:
            raise ConfigError(f"{setting}: cannot claim {listen}: {e.strerror}") from e
        raise ConfigError(
            f"{setting}: {listen} is already served by another tuf-signer on this machine "
            f"(one tuf-signer per port, whatever the host: port {port}); stop it first, or "
            "give this one another port (--listen HOST:PORT)"
        ) from e
    try:
        _probe(host, port, listen, setting)
    except BaseException:
        lock.close()
        raise
    return AddressClaim(lock)


def _probe(host: str, port: int, listen: str, setting: str) -> None:
    """Bind ``host:port`` without SO_REUSEPORT and let go: is anyone listening there?"""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"{setting}: cannot resolve {host!r}: {e.strerror}") from e
    for family, kind, proto, _name, address in infos:
        probe = socket.socket(family, kind, proto)
        try:
            # SO_REUSEADDR: a closed connection lingering in TIME_WAIT is no owner.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"{setting}: {listen} is in use by another program; stop it, or give "
                    "this signer another address (--listen HOST:PORT)"
                ) from e
            if e.errno == errno.EADDRNOTAVAIL and family == socket.AF_INET6:
                continue  # no IPv6 on this machine: gRPC will not listen there either
            raise ConfigError(f"{setting}: cannot bind {listen}: {e.strerror}") from e
        finally:
            probe.close()
