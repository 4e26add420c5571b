"""The operations listener (``[ops] listen``): metrics and probes, in plaintext, nothing else.

Kubelet and Prometheus present no client certificate, so they cannot reach
the mutual-TLS port. This listener answers them, and only them:

- ``GET /metrics``: the Prometheus exposition (every worker's values, ``_metrics``);
- ``GET /healthz``: liveness, 200 while this process's event loop answers;
- ``GET /readyz``: readiness, 200 while health is SERVING (backends, store,
  transparency log gate) and the server is not draining; with workers, while
  every live worker is;
- the gRPC health service (``grpc.health.v1.Health/Check`` and ``Watch``) on
  the same port, for kubelet's gRPC probes: service ``""`` (or ``readiness``)
  answers readiness, ``liveness`` answers liveness.

Nothing on it signs, reads keys or reads records. One port serves both
protocols: a connection that opens with the HTTP/2 preface (gRPC, prior
knowledge) is passed to a gRPC server holding only the health service, bound
to an ephemeral loopback port; anything else is read as one HTTP/1.1 request,
answered, and closed. The two kinds have separate connection pools, each with
a per-peer share, and a spliced connection is cut when idle or too old: idle
HTTP/2 connections never leave the HTTP probes without a slot.

With ``server.workers > 1`` every worker listens on the ops port with
SO_REUSEPORT (the supervisor claims the address, as for the gRPC port), and
each answers for all of them, from the metric files they share: a probe or a
scrape that lands on any worker sees the same thing. The supervisor itself
runs no listener (it forks workers, and stays free of threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tuf_signer._net import is_loopback, split_host_port
from tuf_signer.errors import ConfigError
from tuf_signer.server import _metrics

log = logging.getLogger(__name__)

# The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 §3.4).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_MAX_REQUEST = 8 * 1024  # bytes of an HTTP/1.1 request line and headers
_READ_TIMEOUT = 5.0  # seconds a client may take to send its request
# Connections open at once, per kind; more are closed at once. Probes and
# scrapes (HTTP/1.1, and any connection until its first bytes say which it is)
# are short; a spliced gRPC connection may stay open (a Watch), so it has a pool
# of its own, a per-peer share of it, an idle timeout and a lifetime: idle
# HTTP/2 connections can never leave kubelet's HTTP probes without a slot.
_MAX_HTTP = 64
_MAX_HTTP_PER_PEER = 16
_MAX_SPLICED = 32
_MAX_SPLICED_PER_PEER = 8
_SPLICE_IDLE = 30.0  # seconds without a byte either way before a spliced connection is cut
_SPLICE_LIFETIME = 300.0  # seconds a spliced connection lasts at most (a Watch reconnects)
_WATCH_POLL = 1.0  # seconds between readiness checks of a gRPC Watch

READINESS = ("", "readiness")
LIVENESS = "liveness"

_SERVING: int = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


def check_ops_listen(listen: str, allow_non_loopback: bool, workers: int) -> tuple[str, int]:
    """The ops address's host and port, refused unless loopback or explicitly allowed.

    The listener is plaintext, like ``server.insecure``, and follows the same
    rule (``_net.is_loopback``): a pod IP or ``0.0.0.0`` needs
    ``ops.allow_non_loopback = true`` (kubelet and Prometheus reach the pod
    from outside it).

    Raises:
        ConfigError: naming ``ops.listen``.
    """
    host, port = split_host_port(listen, "ops.listen")
    if not is_loopback(host) and not allow_non_loopback:
        raise ConfigError(
            f"ops.listen: the plaintext ops listener must be on a loopback address, not "
            f"{host!r}, unless ops.allow_non_loopback = true"
        )
    if workers > 1 and port == 0:
        raise ConfigError("ops.listen: several workers need a fixed port, not port 0")
    return host, port


class OpsHealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1`` for the ops port: readiness and liveness, from ``ready``."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready

    async def _status(self, service: str) -> int | None:
        if service == LIVENESS:
            return _SERVING
        if service in READINESS:
            # With workers, readiness reads their metric files: off the event loop.
            return _SERVING if await asyncio.to_thread(self._ready) else _NOT_SERVING
        return None

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        status = await self._status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        last: int | None = None
        while True:
            status = await self._status(request.service)
            if status is None:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            await asyncio.sleep(_WATCH_POLL)


class OpsListener:
    """The ops port of one server process.

    Args:
        listen: ``HOST:PORT`` (already checked: ``check_ops_listen``).
        ready: whether this process is ready (its health is SERVING and it is
            not draining); with workers, the others' state is read from the
            shared metric files too.
        shared: listen with SO_REUSEPORT (a supervised worker).
        splice_idle: seconds without a byte either way before a spliced gRPC
            connection is cut.
        splice_lifetime: seconds a spliced gRPC connection lasts at most.
    """

    def __init__(
        self,
        listen: str,
        ready: Callable[[], bool],
        shared: bool = False,
        splice_idle: float = _SPLICE_IDLE,
        splice_lifetime: float = _SPLICE_LIFETIME,
    ) -> None:
        self._host, self._port = split_host_port(listen, "ops.listen")
        self._local_ready = ready
        self._shared = shared
        self._server: asyncio.Server | None = None
        self._grpc: grpc.aio.Server | None = None
        self._grpc_port = 0
        self._http = _Pool(_MAX_HTTP, _MAX_HTTP_PER_PEER)
        self._spliced = _Pool(_MAX_SPLICED, _MAX_SPLICED_PER_PEER)
        self._splice_idle = splice_idle
        self._splice_lifetime = splice_lifetime
        self.port = 0

    def ready(self) -> bool:
        """Readiness: this process's, and every live worker's when there are workers."""
        if not self._local_ready():
            return False
        return _metrics.multiproc_dir() is None or _metrics.all_serving()

    async def start(self) -> int:
        """Bind and serve; returns the bound port.

        Raises:
            ConfigError: the address cannot be bound.
        """
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(OpsHealthServicer(self.ready), server)
        self._grpc_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._grpc = server
        try:
            self._server = await asyncio.start_server(
                self._serve,
                self._host,
                self._port,
                reuse_port=self._shared or None,
                limit=_MAX_REQUEST,
            )
        except OSError as e:
            await self.stop()
            raise ConfigError(f"ops.listen: cannot bind {self._host}:{self._port}: {e}") from e
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("ops listener (metrics, probes) on %s:%d", self._host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening and close the connections."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._grpc is not None:
            await self._grpc.stop(0)
            self._grpc = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        try:
            if not self._http.take(peer):
                return
            try:
                first = await asyncio.wait_for(reader.readexactly(4), _READ_TIMEOUT)
                if first != _H2_PREFACE[:4]:
                    await self._http_answer(first, reader, writer)
                    return
            finally:
                self._http.give(peer)
            if not self._spliced.take(peer):
                return
            try:
                await self._splice(first, reader, writer)
            finally:
                self._spliced.give(peer)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ValueError:  # a line past ``limit``
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _splice(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Pass an HTTP/2 (gRPC) connection to the health-only gRPC server, until
        either side closes, nothing moved for ``splice_idle`` or ``splice_lifetime``
        is over."""
        loop = asyncio.get_running_loop()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._grpc_port)
        up_writer.write(first)
        last = [loop.time()]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(64 * 1024):
                    last[0] = loop.time()
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        both = asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        end = loop.time() + self._splice_lifetime
        try:
            while not both.done():
                wait = min(last[0] + self._splice_idle, end) - loop.time()
                if wait <= 0:
                    break
                await asyncio.wait([both], timeout=wait)
        finally:
            both.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await both
            up_writer.close()

    async def _http_answer(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer one HTTP/1.1 request, then close."""
        head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
        if len(head) > _MAX_REQUEST:
            return
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        status, ctype, body = await self._answer(method, target)
        writer.write(
            b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            % (status.encode(), ctype.encode(), len(body))
        )
        if method != b"HEAD":
            writer.write(body)
        await writer.drain()

    async def _answer(self, method: bytes, target: bytes) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        routes: dict[bytes, Callable[[], Awaitable[tuple[str, str, bytes]]]] = {
            b"/metrics": self._metrics,
            b"/healthz": self._healthz,
            b"/readyz": self._readyz,
        }
        route = routes.get(target)
        if route is None:
            return "404 Not Found", text, b"not found\n"
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", text, b"GET or HEAD only\n"
        return await route()

    async def _metrics(self) -> tuple[str, str, bytes]:
        # Reading every worker's files is blocking I/O: off the event loop.
        body, ctype = await asyncio.to_thread(_metrics.exposition)
        return "200 OK", ctype, body

    async def _healthz(self) -> tuple[str, str, bytes]:
        return "200 OK", "text/plain; charset=utf-8", b"ok\n"

    async def _readyz(self) -> tuple[str, str, bytes]:
        if await asyncio.to_thread(self.ready):
            return "200 OK", "text/plain; charset=utf-8", b"ready\n"
        return "503 Service Unavailable", "text/plain; charset=utf-8", b"not ready\n"


def _peer(writer: asyncio.StreamWriter) -> str:
    """The peer's address (without its port): what a per-peer limit counts."""
    name = writer.get_extra_info("peername")
    return str(name[0]) if isinstance(name, tuple) and name else ""


class _Pool:
    """Connection slots: ``total`` at once, ``per_peer`` of them for one address."""

    def __init__(self, total: int, per_peer: int) -> None:
        self._total = total
        self._per_peer = per_peer
        self._held: dict[str, int] = {}
        self._count = 0

    def take(self, peer: str) -> bool:
        """Take a slot for ``peer``; False (none taken) when the pool or its share is full."""
        if self._count >= self._total or self._held.get(peer, 0) >= self._per_peer:
            return False
        self._count += 1
        self._held[peer] = self._held.get(peer, 0) + 1
        return True

    def give(self, peer: str) -> None:
        """Give back a slot ``take`` gave."""
        self._count -= 1
        left = self._held[peer] - 1
        if left:
            self._held[peer] = left
        else:
            del self._held[peer]
