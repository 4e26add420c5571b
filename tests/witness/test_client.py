"""The witness client: a verdict, or ``WitnessUnavailable``, for every answer a witness may give."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import free_port
from tests.witness.conftest import Log, WitnessProcess
from tuf_signer.errors import BackendUnavailableError, RemoteError, RequestError
from tuf_signer.witness import (
    WitnessConflict,
    WitnessRejected,
    WitnessUnavailable,
    add_checkpoint,
    fetch_checkpoint,
)

ORIGIN = "log.test/a"
LOG = Log(ORIGIN)
CHECKPOINT = LOG.checkpoint(3)
COSIGNATURE = b"\xe2\x80\x94 w.test/w1 AAAAAQE=\n"  # a well-formed line (not verified here)


def test_verdicts_of_a_real_witness(start_witness: Callable[..., WitnessProcess]) -> None:
    log, unknown = Log(ORIGIN), Log("log.test/unknown")
    w = start_witness([log])
    assert fetch_checkpoint(w.url, ORIGIN, timeout=5) is None
    add_checkpoint(w.url + "/", 0, (), log.checkpoint(3), timeout=5)  # a trailing / is fine
    with pytest.raises(WitnessConflict) as conflict:
        add_checkpoint(w.url, 0, (), log.checkpoint(5), timeout=5)
    assert conflict.value.size == 3
    assert conflict.value.code == "ABORTED"
    cases = [
        (unknown.checkpoint(2), 0, (), 404, "NOT_FOUND"),
        (Log(ORIGIN).checkpoint(5), 3, log.proof(3, 5), 403, "PERMISSION_DENIED"),
        (log.checkpoint(5), 3, (bytes(32),), 422, "FAILED_PRECONDITION"),
        (log.checkpoint(2), 3, (), 400, "INVALID_ARGUMENT"),
    ]
    for checkpoint, old, proof, status, code in cases:
        with pytest.raises(WitnessRejected) as rejected:
            add_checkpoint(w.url, old, proof, checkpoint, timeout=5)
        assert (rejected.value.status, rejected.value.code) == (status, code)
        assert rejected.value.reason  # the witness's words, cut short
    assert issubclass(WitnessRejected, RemoteError) and issubclass(WitnessConflict, RemoteError)


@contextlib.contextmanager
def fake_witness(
    answer: bytes, *, drip: float | None = None, silent: bool = False
) -> Iterator[str]:
    """A loopback server that answers every connection with ``answer`` (or nothing)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)  # the request (small enough for one read here)
                    if silent:
                        done.wait(10)
                    elif drip is None:
                        conn.sendall(answer)
                    else:
                        for byte in answer:
                            if done.is_set():
                                break
                            conn.sendall(bytes([byte]))
                            time.sleep(drip)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(10)
        listener.close()


def _http(status: str, body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return (
        f"HTTP/1.1 {status}\r\n{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        pytest.param(_http("500 Internal Server Error", b"oops\n"), "HTTP 500", id="500"),
        pytest.param(_http("503 Service Unavailable", b""), "HTTP 503", id="503"),
        pytest.param(
            _http("302 Found", b"", "Location: http://elsewhere/"), "HTTP 302", id="redirect"
        ),
        pytest.param(_http("200 OK", b""), "no signature lines", id="200-empty"),
        pytest.param(_http("200 OK", b"hello\n"), "no signature lines", id="200-garbage"),
        pytest.param(
            _http("200 OK", COSIGNATURE + b"\n\nhello\n"), "no signature lines", id="200-more"
        ),
        pytest.param(_http("200 OK", COSIGNATURE[:-1]), "no signature lines", id="200-no-newline"),
        pytest.param(
            _http("409 Conflict", b"3\n", "Content-Type: text/plain"), "409", id="409-wrong-type"
        ),
        pytest.param(
            _http("409 Conflict", b"03\n", "Content-Type: text/x.tlog.size"),
            "without a tree size",
            id="409-leading-zero",
        ),
        pytest.param(
            _http("409 Conflict", b"3", "Content-Type: text/x.tlog.size"),
            "without a tree size",
            id="409-no-newline",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n", "larger than", id="huge-length"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"\xe2\x80\x94 " * 30_000,
            "larger than",
            id="huge-unannounced",
        ),
        pytest.param(b"garbage\r\n\r\n", "cannot reach", id="not-http"),
        pytest.param(b"", "cannot reach", id="closed-at-once"),
    ],
)
def test_answers_that_are_no_verdict_are_unavailable(answer: bytes, match: str) -> None:
    with fake_witness(answer) as url, pytest.raises(WitnessUnavailable, match=match) as caught:
        add_checkpoint(url, 0, (), CHECKPOINT, timeout=5)
    assert isinstance(caught.value, BackendUnavailableError)
    assert caught.value.code == "UNAVAILABLE"


def test_a_good_answer_is_returned_as_is() -> None:
    with fake_witness(_http("200 OK", COSIGNATURE)) as url:
        assert add_checkpoint(url, 0, (), CHECKPOINT, timeout=5) == COSIGNATURE
    with fake_witness(_http("418 I'm a teapot", b"\x1b[2Jno\n")) as url:
        with pytest.raises(WitnessRejected) as rejected:
            add_checkpoint(url, 0, (), CHECKPOINT, timeout=5)
        assert (rejected.value.status, rejected.value.code) == (418, "FAILED_PRECONDITION")


def test_fetch_checkpoint_checks_the_note_form() -> None:
    with fake_witness(_http("200 OK", CHECKPOINT)) as url:
        assert fetch_checkpoint(url, ORIGIN, timeout=5) == CHECKPOINT
    garbage = _http("200 OK", b"not a note\n")
    with fake_witness(garbage) as url, pytest.raises(WitnessUnavailable, match="no note"):
        fetch_checkpoint(url, ORIGIN, timeout=5)
    with fake_witness(_http("403 Forbidden", b"no\n")) as url, pytest.raises(WitnessRejected):
        fetch_checkpoint(url, ORIGIN, timeout=5)


def test_the_timeout_bounds_the_whole_exchange() -> None:
    # A witness that never answers, and one that drips its answer one byte at a time
    # (each byte well within the timeout): both end at the deadline.
    for kwargs in ({"silent": True}, {"drip": 0.05}):
        with fake_witness(_http("200 OK", COSIGNATURE * 50), **kwargs) as url:  # type: ignore[arg-type]
            started = time.monotonic()
            with pytest.raises(WitnessUnavailable):
                add_checkpoint(url, 0, (), CHECKPOINT, timeout=0.5)
            assert time.monotonic() - started < 1.5


def test_no_witness_listening_is_unavailable() -> None:
    with pytest.raises(WitnessUnavailable, match="cannot reach"):
        add_checkpoint(f"http://127.0.0.1:{free_port()}", 0, (), CHECKPOINT, timeout=2)
    with pytest.raises(WitnessUnavailable, match="cannot reach"):
        fetch_checkpoint(f"http://127.0.0.1:{free_port()}", ORIGIN, timeout=2)


@pytest.mark.parametrize(
    ("url", "old", "proof"),
    [
        pytest.param("ftp://w.test", 0, (), id="not-http"),
        pytest.param("http://", 0, (), id="no-host"),
        pytest.param("http://w.test:99999", 0, (), id="bad-port"),
        pytest.param("http://w.test", -1, (), id="negative-old-size"),
        pytest.param("http://w.test", 1, (bytes(31),), id="short-hash"),
        pytest.param("http://w.test", 1, (bytes(32),) * 64, id="64-hashes"),
    ],
)
def test_requests_that_cannot_be_made(url: str, old: int, proof: tuple[bytes, ...]) -> None:
    with pytest.raises(RequestError):
        add_checkpoint(url, old, proof, CHECKPOINT, timeout=1)
