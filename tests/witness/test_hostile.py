"""Hostile HTTP clients against a real witness: it answers precisely, times out, and stays up.

The witness here gives a client 1 s for a whole request and serves 4
connections at once, so the limits show within a test's time.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.witness.conftest import Log, WitnessProcess, make_witness, raw_exchange, request

ORIGIN = "log.test/a"
TIMEOUT = 1.0
SETTINGS = f"timeout_seconds = {TIMEOUT}\nmax_connections = 4\nmax_body_bytes = 4096"


@pytest.fixture(scope="module")
def module_witness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WitnessProcess]:
    """One witness for the whole module: every test leaves it as it found it."""
    w = make_witness(tmp_path_factory.mktemp("hostile"), [Log(ORIGIN)], SETTINGS)
    w.start()
    yield w
    w.stop()


@pytest.fixture
def witness(module_witness: WitnessProcess) -> Iterator[WitnessProcess]:
    """The module's witness, checked to be up after each test."""
    yield module_witness
    assert module_witness.alive(), module_witness.log()


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _connect(w: WitnessProcess) -> socket.socket:
    host, port = w.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_within(s: socket.socket, limit: float) -> float:
    """Seconds until the server closed ``s`` (reads and drops what it sends)."""
    started = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


HEAD = b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\n"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param(b"Content-Length: 10000000000\r\n", 413, id="ten-gigabytes"),
        pytest.param(b"Content-Length: 4097\r\n", 413, id="one-above-the-limit"),
        pytest.param(b"Content-Length: " + b"9" * 40 + b"\r\n", 413, id="forty-digits"),
        pytest.param(b"", 411, id="no-length"),
        pytest.param(b"Transfer-Encoding: chunked\r\n", 411, id="chunked"),
        pytest.param(
            b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", 411, id="chunked-and-length"
        ),
        pytest.param(b"Content-Length: abc\r\n", 400, id="not-a-number"),
        pytest.param(b"Content-Length: -1\r\n", 400, id="negative"),
        pytest.param(b"Content-Length: \xb2\r\n", 400, id="latin-1-superscript-two"),
        pytest.param(b"Content-Length: 3\r\nContent-Length: 3\r\n", 400, id="two-lengths"),
        pytest.param(b"Expect: 100-continue\r\nContent-Length: 9999999\r\n", 413, id="expect"),
        pytest.param(b"X: " + b"a" * 20_000 + b"\r\n", 431, id="headers-over-16k"),
        pytest.param(b"".join(b"X%d: a\r\n" % i for i in range(200)), 431, id="200-headers"),
    ],
)
def test_bad_lengths_and_headers_are_refused_without_reading_a_body(
    witness: WitnessProcess, headers: bytes, status: int
) -> None:
    started = time.monotonic()
    # No body follows: the answer must come from the headers alone, then the
    # connection closes (a body left unread cannot be taken for the next request).
    raw = raw_exchange(witness.url, HEAD + headers + b"\r\n")
    assert _status(raw) == status, raw[:200]
    assert b"\r\nConnection: close\r\n" in raw
    assert b"100 Continue" not in raw
    assert time.monotonic() - started < TIMEOUT  # not waiting for a body or a timeout


@pytest.mark.parametrize(
    ("data", "status"),
    [
        pytest.param(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, id="long-request-line"),
        pytest.param(b"\x00\xff\x16\x03\x01 garbage\r\n\r\n", 400, id="binary-request-line"),
        pytest.param(b"GET / HTTP/9.9\r\n\r\n", 505, id="http-9.9"),
        pytest.param(b"POST /add-checkpoint HTTP/1.1 extra\r\n\r\n", 400, id="four-words"),
    ],
)
def test_malformed_request_lines(witness: WitnessProcess, data: bytes, status: int) -> None:
    assert _status(raw_exchange(witness.url, data)) == status


def test_hostile_bodies_are_answered_400(witness: WitnessProcess) -> None:
    for body in (bytes(range(256)) * 10, b"\xff" * 4096, b"old 0\n\n" + b"\xc0\x80" * 100):
        reply = request(witness.url, "POST", "/add-checkpoint", body)
        assert reply.status == 400, reply.body


def test_a_stalled_client_is_cut_off_and_others_are_served(witness: WitnessProcess) -> None:
    with _connect(witness) as stalled:
        stalled.sendall(HEAD + b"Content-Length: 100\r\n\r\n" + b"old 0\n")  # 94 bytes short
        # Meanwhile the witness answers everyone else at once.
        assert witness.latest(ORIGIN).status == 404
        elapsed = _closed_within(stalled, 10)
    assert TIMEOUT * 0.5 < elapsed < TIMEOUT + 1.5


def test_a_trickling_client_is_cut_off_at_the_request_deadline(witness: WitnessProcess) -> None:
    """One byte every 0.2 s never trips a read timeout; the whole request's deadline does."""
    with _connect(witness) as trickler:
        started = time.monotonic()
        try:
            for byte in HEAD + b"X-Slow: " + b"a" * 100:
                trickler.sendall(bytes([byte]))
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        elapsed = time.monotonic() - started + _closed_within(trickler, 10)
    assert elapsed < TIMEOUT + 1.5


def test_connections_are_bounded_and_the_extra_one_is_answered_503(
    witness: WitnessProcess,
) -> None:
    held = [_connect(witness) for _ in range(4)]
    try:
        time.sleep(0.2)  # let the witness take them
        raw = raw_exchange(witness.url, b"GET / HTTP/1.1\r\n\r\n")
        assert _status(raw) == 503
        assert raw.endswith(b"too many connections\n")
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while request(witness.url, "GET", "/").status != 404:  # a slot comes back
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_keep_alive_serves_several_requests_on_one_connection(witness: WitnessProcess) -> None:
    with _connect(witness) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n" * 2 + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 404 Not Found\r\n") == 3


def test_sigterm_stops_promptly_with_an_idle_connection_open(
    start_witness: Callable[..., WitnessProcess],
) -> None:
    w = start_witness([Log(ORIGIN)])  # the default 10 s timeout
    with _connect(w) as idle:
        idle.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 404")
        assert w.proc is not None
        started = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 2


def test_sigterm_at_once_after_start_stops_the_witness(
    start_witness: Callable[..., WitnessProcess],
) -> None:
    """Whichever thread the signal reaches, and however early: a clean exit, every time."""
    w = start_witness([Log(ORIGIN)])
    for _ in range(5):
        assert w.stop() == 0
        w.start()
        assert w.proc is not None
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(timeout=5) == 0
