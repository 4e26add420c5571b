"""A hand-rolled HTTP/2 client (RFC 9113) for the resource tests: no ``h2`` in the venv.

It speaks just enough of the protocol to behave like an abusive client that
gRPC's own channel would never let a test be: streams that never send their
message, more streams than the server allows, header lists far past any limit,
and bursts of reset streams. Headers go out as HPACK literals without Huffman
coding (RFC 7541 §6.2.2), which every decoder must accept; what the server
sends back is read frame by frame, never HPACK-decoded: the tests look only at
frame types, stream ids, flags, RST_STREAM codes and SETTINGS.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0,
    0x1,
    0x3,
    0x4,
    0x6,
    0x7,
    0x8,
    0x9,
)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8


def _int(value: int, prefix: int, first: int = 0) -> bytes:
    """An HPACK integer with an N-bit prefix (RFC 7541 §5.1)."""
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2)."""
    return b"\x00" + _int(len(name), 7) + name + _int(len(value), 7) + value


def grpc_headers(method: str, extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """The HPACK block of a gRPC request's HEADERS for ``method`` over plaintext."""
    fields = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", method.encode()),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *(extra or []),
    ]
    return b"".join(_literal(n, v) for n, v in fields)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame: 24-bit length, type, flags, 31-bit stream id, payload (RFC 9113 §4.1)."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


@dataclass
class Connection:
    """One plaintext HTTP/2 connection and what the server sent on it.

    A reader thread answers SETTINGS and PING (an abuser that looks alive to
    keepalive) and records, per stream, when it ended (RST_STREAM or a frame
    with END_STREAM) and the RST_STREAM code if any.
    """

    sock: socket.socket
    settings: dict[int, int] = field(default_factory=dict)
    ended: dict[int, float] = field(default_factory=dict)
    reset_codes: dict[int, int] = field(default_factory=dict)
    goaway_at: float | None = None
    closed_at: float | None = None
    next_stream: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reader: threading.Thread | None = None
    _got_settings: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def open(cls, port: int, timeout: float = 5.0) -> Connection:
        """Connect to ``127.0.0.1:port``, exchange prefaces and wait for the server's SETTINGS.

        Raises:
            OSError: the connection failed.
            TimeoutError: no SETTINGS came within ``timeout``.
        """
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.settimeout(None)
        conn = cls(sock)
        conn.send(PREFACE + frame(SETTINGS, 0, 0))
        conn._reader = threading.Thread(target=conn._read, daemon=True)
        conn._reader.start()
        if not conn._got_settings.wait(timeout):
            conn.close()
            raise TimeoutError("the server sent no SETTINGS frame")
        return conn

    def send(self, data: bytes) -> None:
        with self._lock:
            self.sock.sendall(data)

    def start_stream(self, method: str, extra: list[tuple[bytes, bytes]] | None = None) -> int:
        """Open a stream with a request's HEADERS and send nothing more on it."""
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        self.send(frame(HEADERS, END_HEADERS, stream, grpc_headers(method, extra)))
        return stream

    def send_message(self, stream: int, message: bytes, end: bool = True) -> None:
        """A length-prefixed gRPC message on ``stream`` (and half-close it)."""
        body = b"\x00" + struct.pack(">I", len(message)) + message
        self.send(frame(DATA, END_STREAM if end else 0, stream, body))

    def reset(self, stream: int, code: int = CANCEL) -> None:
        self.send(frame(RST_STREAM, 0, stream, struct.pack(">I", code)))

    def alive(self) -> bool:
        return self.closed_at is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def _recv_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                raise ConnectionError
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _read(self) -> None:
        try:
            while True:
                head = self._recv_exact(9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = self._recv_exact(length)
                now = time.monotonic()
                if kind == SETTINGS and not flags & ACK:
                    for i in range(0, len(payload), 6):
                        ident, value = struct.unpack(">HI", payload[i : i + 6])
                        self.settings[ident] = value
                    self.send(frame(SETTINGS, ACK, 0))
                    self._got_settings.set()
                elif kind == PING and not flags & ACK:
                    self.send(frame(PING, ACK, 0, payload))
                elif kind == RST_STREAM:
                    self.reset_codes[stream] = struct.unpack(">I", payload)[0]
                    self.ended.setdefault(stream, now)
                elif kind in (HEADERS, DATA) and flags & END_STREAM:
                    self.ended.setdefault(stream, now)
                elif kind == GOAWAY and self.goaway_at is None:
                    self.goaway_at = now
        except (OSError, ConnectionError):
            pass
        finally:
            self.closed_at = time.monotonic()
            self._got_settings.set()


def flood_resets(
    port: int,
    seconds: float,
    connections: int,
    stop: threading.Event | None = None,
    started: Callable[[], None] | None = None,
) -> int:
    """Open and at once reset streams on ``connections`` connections for ``seconds``.

    The "rapid reset" of CVE-2023-44487: each stream is a request's HEADERS
    followed by RST_STREAM(CANCEL), a hundred to a write, so the server sees a
    new call and its cancellation before it can have answered. Returns how
    many streams were opened. ``stop`` ends it early; ``started`` is called
    once the connections are open.
    """
    conns = [Connection.open(port) for _ in range(connections)]
    block = grpc_headers("/grpc.health.v1.Health/Check")
    end = time.monotonic() + seconds
    counts = [0] * connections
    halt = stop if stop is not None else threading.Event()
    if started is not None:
        started()

    def run(i: int) -> None:
        conn = conns[i]
        while time.monotonic() < end and conn.alive() and not halt.is_set():
            burst = bytearray()
            for _ in range(100):
                stream, conn.next_stream = conn.next_stream, conn.next_stream + 2
                burst += frame(HEADERS, END_HEADERS, stream, block)
                burst += frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL))
            try:
                conn.send(bytes(burst))
            except OSError:
                return
            counts[i] += 100

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for conn in conns:
        conn.close()
    return sum(counts)


if __name__ == "__main__":
    # A separate process, as an abuser would be: flooding from a thread of the
    # test process would slow the server under test by holding its GIL.
    # Usage: _h2raw.py PORT SECONDS CONNECTIONS; prints "flooding" once the
    # connections are open, then (at the end, or on SIGTERM) the streams opened.
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    count = flood_resets(
        int(sys.argv[1]),
        float(sys.argv[2]),
        int(sys.argv[3]),
        stop,
        lambda: print("flooding", flush=True),
    )
    print(count, flush=True)
