"""The witness's HTTP server (c2sp.org/tlog-witness "HTTP Interface"), from the standard library.

Both prefixes are the root: ``POST /add-checkpoint`` and
``GET /<sha256hex(origin)>/checkpoint``. HTTP/1.1 with keep-alive (the spec's
SHOULD). Every client is hostile until its bytes parse:

- one thread per connection, at most ``max_connections`` of them; one more
  connection is answered 503 and closed at once;
- a client has ``timeout_seconds`` to send each whole request (request line,
  at most 16 KiB of headers and the body), and an idle keep-alive connection
  is closed after as long: a reaper thread shuts down late sockets, so a
  client that trickles bytes cannot hold a thread;
- a body needs a Content-Length (411 without, 400 when unreadable), and one
  above ``max_body_bytes`` is answered 413 without being read;
- a wrong method is 405, an unknown path 404; an unexpected error is 500
  with a generic body, its cause in the log.

Plain HTTP is fine: the protocol authenticates by signatures only. SIGTERM
stops accepting, closes idle connections and lets requests in flight finish.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import re
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from tuf_signer._net import split_host_port
from tuf_signer.config._secrets import check_secret_file
from tuf_signer.errors import ConfigError, TufSignerError
from tuf_signer.witness._config import WitnessServerConfig
from tuf_signer.witness._key import WitnessKey
from tuf_signer.witness._protocol import (
    ADD_CHECKPOINT,
    SIZE_CONTENT_TYPE,
    SizeConflict,
    WitnessRefusal,
)
from tuf_signer.witness._state import WitnessState
from tuf_signer.witness._witness import Witness

log = logging.getLogger(__name__)

HEADER_BYTES = 16 * 1024  # request headers, all lines together
_REQUEST_LINE = 8 * 1024
_TEXT = "text/plain; charset=utf-8"
_CHECKPOINT_PATH = re.compile(r"/([0-9a-f]{64})/checkpoint")
_DIGITS = re.compile(r"[0-9]{1,18}")
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 20\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\n"
)


@dataclass
class _Watch:
    deadline: float | None  # monotonic; None while the witness works on a request
    idle: bool  # waiting for a request line: closed at once when stopping


class WitnessHTTPServer(ThreadingHTTPServer):
    """A bounded, deadline-keeping threaded HTTP server in front of a ``Witness``.

    Args:
        address: (host, port) to listen on; port 0 picks one (see ``server_address``).
        witness: answers the requests.
        max_body_bytes: the largest request body read.
        max_connections: connections served at once.
        timeout: seconds for each whole request, and for an idle connection.
        ssl_context: serve HTTPS with it, or plain HTTP when None.
    """

    daemon_threads = False
    block_on_close = True  # server_close waits for requests in flight
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        witness: Witness,
        *,
        max_body_bytes: int,
        max_connections: int,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.witness = witness
        self.max_body_bytes = max_body_bytes
        self.timeout_seconds = timeout
        self.tls = ssl_context is not None
        self._slots = threading.BoundedSemaphore(max_connections)
        self._last_busy_log = -1.0
        self._lock = threading.Lock()
        self._watched: dict[socket.socket, _Watch] = {}
        self.stopping = threading.Event()
        self._closed = threading.Event()
        super().__init__(address, _Handler)
        if ssl_context is not None:
            # The handshake happens in the connection's thread, under its deadline,
            # never in the accept loop.
            self.socket = ssl_context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self._reaper = threading.Thread(target=self._reap, name="witness-reaper", daemon=True)
        self._reaper.start()

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on a thread of its own, or answer 503 when all are busy."""
        if not self._slots.acquire(blocking=False):
            now = time.monotonic()
            if now - self._last_busy_log >= 1.0:  # a flood of connections is one line a second
                self._last_busy_log = now
                log.warning(
                    "refusing connections (503): all %d are taken; latest from %s",
                    self._open(),
                    client_address[0],
                )
            if not self.tls:
                with contextlib.suppress(OSError):
                    request.setblocking(False)
                    request.send(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """One connection's thread: under a deadline from the start; its slot given back."""
        self.watch(request, idle=True)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._watched.pop(request, None)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection's thread failed: a network error at DEBUG, anything else at ERROR.

        Either way only that connection ends; the server goes on.
        """
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # reset, timed out, cut off, a TLS handshake failed
            log.debug("connection from %s ended: %s", client_address[0], type(error).__name__)
        else:
            log.error("connection from %s failed", client_address[0], exc_info=True)

    def watch(self, connection: socket.socket, *, idle: bool = False) -> None:
        """Give ``connection`` ``timeout`` seconds from now to send a whole request."""
        with self._lock:
            self._watched[connection] = _Watch(time.monotonic() + self.timeout_seconds, idle)

    def busy(self, connection: socket.socket) -> None:
        """The request is in: no deadline while the witness works on it."""
        with self._lock:
            self._watched[connection] = _Watch(None, idle=False)

    def _open(self) -> int:
        with self._lock:
            return len(self._watched)

    def _reap(self) -> None:
        interval = min(0.25, self.timeout_seconds / 4)
        while not self._closed.wait(interval):
            now, stopping = time.monotonic(), self.stopping.is_set()
            with self._lock:
                late = [
                    connection
                    for connection, w in self._watched.items()
                    if (w.deadline is not None and now > w.deadline) or (stopping and w.idle)
                ]
            for connection in late:
                # The plain socket's shutdown, also for TLS: the reading thread
                # wakes up with an end of file or an error and closes.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(connection, socket.SHUT_RDWR)

    def stop(self) -> None:
        """Stop accepting, close idle connections, wait for requests in flight, close.

        Call from another thread than ``serve_forever``'s. Returns within about
        ``timeout`` seconds: a client that does not finish its request is cut off.
        """
        self.stopping.set()
        self.shutdown()
        self.server_close()  # joins the connection threads
        self._closed.set()


class _HeaderBudget:
    """The request's reader while headers are parsed: at most ``budget`` bytes in all."""

    def __init__(self, raw: Any, budget: int) -> None:
        self._raw = raw
        self._left = budget

    def readline(self, limit: int = -1) -> bytes:
        if self._left <= 0:
            raise http.client.LineTooLong("the request headers")
        line: bytes = self._raw.readline(self._left if limit < 0 else min(limit, self._left))
        self._left -= len(line)
        if self._left <= 0 and not line.endswith(b"\n"):
            raise http.client.LineTooLong("the request headers")
        return line


class _Handler(BaseHTTPRequestHandler):
    """One connection: requests in turn, each routed, checked and answered."""

    server: WitnessHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive (tlog-witness: SHOULD)
    server_version = "tuf-signer-witness"

    def version_string(self) -> str:
        """The Server header: no Python version."""
        return self.server_version

    def setup(self) -> None:
        super().setup()
        # Each read waits at most this long; the reaper bounds the whole request.
        self.connection.settimeout(self.server.timeout_seconds)
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()
        self._body_read = False

    def handle_one_request(self) -> None:
        """Read, route and answer one request (BaseHTTPRequestHandler's, with our limits)."""
        self.server.watch(self.connection, idle=True)
        self._body_read = False
        try:
            self.raw_requestline = self.rfile.readline(_REQUEST_LINE + 1)
            if not self.raw_requestline:
                self.close_connection = True
                return
            self.server.watch(self.connection)  # a request started: no longer idle
            if len(self.raw_requestline) > _REQUEST_LINE:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            raw, self.rfile = self.rfile, _HeaderBudget(self.rfile, HEADER_BYTES)  # type: ignore[assignment]
            try:
                parsed = self.parse_request()
            finally:
                self.rfile = raw
            if not parsed:
                return
            if self.request_version == "HTTP/0.9":
                self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 is not supported")
                return
            self._route()
            self.wfile.flush()
        except OSError as e:  # timed out, reset, or shut down by the reaper
            log.debug("connection from %s closed: %s", self.client_address[0], type(e).__name__)
            self.close_connection = True
            return
        if self.server.stopping.is_set():
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        """Answer ``Expect: 100-continue`` only for a request whose body will be read."""
        refusal = self._preflight()
        if refusal is not None:
            self._refuse(*refusal)
            return False
        return super().handle_expect_100()

    # --- routing ----------------------------------------------------------------

    def _target(self) -> tuple[str, str | None]:
        """(the method the path takes, the origin hash for a monitoring path) or ("", None)."""
        path = self.path.partition("?")[0]
        if path == "/" + ADD_CHECKPOINT:
            return "POST", None
        match = _CHECKPOINT_PATH.fullmatch(path)
        if match is not None:
            return "GET", match[1]
        return "", None

    def _preflight(self) -> tuple[int, str] | None:
        """The refusal due before any body is read, if any: path, method, length."""
        method, _ = self._target()
        if not method:
            return HTTPStatus.NOT_FOUND, "no such endpoint"
        if self.command != method:
            return HTTPStatus.METHOD_NOT_ALLOWED, f"use {method}"
        if method == "POST":
            length = self._content_length()
            if isinstance(length, tuple):
                return length
        return None

    def _route(self) -> None:
        refusal = self._preflight()
        if refusal is not None:
            self._refuse(*refusal)
            return
        hashed_origin = self._target()[1]
        if hashed_origin is not None:
            wanted = hashed_origin
            self._answer(lambda: self.server.witness.checkpoint(wanted))
            return
        length = self._content_length()
        assert isinstance(length, int)
        try:
            body = self.rfile.read(length)
        except OSError:
            body = b""
        if len(body) != length:  # the client left, stalled or was cut off: nobody to answer
            self.close_connection = True
            return
        self._body_read = True
        self._answer(lambda: self.server.witness.add_checkpoint(body))

    def _content_length(self) -> int | tuple[int, str]:
        """The request body's length, or the refusal (411, 400, 413)."""
        if "Transfer-Encoding" in self.headers:
            return HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not a Transfer-Encoding"
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return HTTPStatus.LENGTH_REQUIRED, "a Content-Length is required"
        text = values[0].strip()
        if len(values) > 1 or not re.fullmatch(r"[0-9]+", text):
            return HTTPStatus.BAD_REQUEST, "the Content-Length is not one decimal number"
        if not _DIGITS.fullmatch(text) or int(text) > self.server.max_body_bytes:
            return (
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body is larger than {self.server.max_body_bytes} bytes",
            )
        return int(text)

    def _answer(self, call: Any) -> None:
        """Run the witness; answer its result or its refusal."""
        self.server.busy(self.connection)
        try:
            body: bytes = call()
        except SizeConflict as e:
            self._refuse(e.status, e.reason, body=f"{e.size}\n", content_type=SIZE_CONTENT_TYPE)
        except WitnessRefusal as e:
            self._refuse(e.status, e.reason)
        except TufSignerError as e:  # the state cannot be read or written
            log.error("cannot answer %s %s: %s", self.command, self.path, e.reason)
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, b"the witness cannot answer now\n")
        except Exception:
            log.exception("unexpected error answering %s %s", self.command, self.path)
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n")
        else:
            self._reply(HTTPStatus.OK, body)

    # --- answers ----------------------------------------------------------------

    def _refuse(
        self,
        status: int,
        reason: str,
        *,
        body: str | None = None,
        content_type: str = _TEXT,
    ) -> None:
        log.info(
            "refused %s %s from %s: %d %s",
            self.command,
            self.path[:100],
            self.client_address[0],
            status,
            reason,
        )
        headers: Sequence[tuple[str, str]] = ()
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            headers = (("Allow", self._target()[0]),)
        text = reason + "\n" if body is None else body
        self._reply(status, text.encode(), content_type=content_type, headers=headers)

    def _reply(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = _TEXT,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        # A body announced and left unread would be read as the next request;
        # so would one sent without a length (411).
        unread = status == HTTPStatus.LENGTH_REQUIRED or (
            self.headers is not None
            and not self._body_read
            and (
                "Transfer-Encoding" in self.headers
                or self.headers.get("Content-Length", "0").strip() != "0"
            )
        )
        if unread or self.server.stopping.is_set():
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed request lines and headers: a plain-text answer, then close."""
        self.close_connection = True
        # A request line that did not parse leaves HTTP/0.9, which has no status line.
        self.request_version = self.protocol_version
        reason = message or HTTPStatus(code).phrase
        log.info("refused a request from %s: %d %s", self.client_address[0], code, reason)
        self.headers = None  # type: ignore[assignment]
        self._reply(code, (reason + "\n").encode())

    def log_message(self, format: str, *args: Any) -> None:
        """Access lines at DEBUG; refusals are logged at INFO where they are decided."""
        log.debug("%s %s", self.client_address[0], format % args)


def open_witness_server(config: WitnessServerConfig) -> WitnessHTTPServer:
    """Load the key and state, and listen as ``config`` says (not serving yet).

    Raises:
        ConfigError: the key or TLS files are unsafe or unreadable, or the
            address cannot be listened on.
        StoreError: the state file cannot be opened.
    """
    key = WitnessKey.load(config.key_file, config.name)
    context = None
    if config.tls_cert is not None and config.tls_key is not None:
        check_secret_file(config.tls_key, "witness.tls_key")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(config.tls_cert, config.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"witness.tls_cert / witness.tls_key: cannot load them: {type(e).__name__}"
            ) from None
    witness = Witness(key, config.logs, WitnessState(config.state))
    host, port = split_host_port(config.listen, "witness.listen")
    try:
        return WitnessHTTPServer(
            (host, port),
            witness,
            max_body_bytes=config.max_body_bytes,
            max_connections=config.max_connections,
            timeout=config.timeout_seconds,
            ssl_context=context,
        )
    except OSError as e:
        raise ConfigError(f"witness.listen: cannot listen on {config.listen}: {e.strerror}") from e


def run_witness(config: WitnessServerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully (``WitnessHTTPServer.stop``).

    Raises:
        ConfigError: as ``open_witness_server``.
        StoreError: as ``open_witness_server``.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Before the port opens: whoever sees it open may send SIGTERM at once.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = open_witness_server(config)
        _serve(server, config, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(server: WitnessHTTPServer, config: WitnessServerConfig, stop: threading.Event) -> None:
    def serve() -> None:
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            stop.set()

    thread = threading.Thread(target=serve, name="witness-accept")
    thread.start()
    host, port = server.server_address[:2]
    log.info(
        "witness %s (%s) listening on %s:%d over %s",
        config.name,
        server.witness.key.vkey.text(),
        host,
        port,
        "HTTPS" if server.tls else "HTTP",
    )
    try:
        # With a timeout: a signal may reach another thread than this one, and
        # its handler runs only when this thread runs Python code again.
        while not stop.wait(0.25):
            pass
    finally:
        log.info("stopping: closing idle connections, finishing requests in flight")
        server.stop()
        thread.join()
        log.info("stopped")
