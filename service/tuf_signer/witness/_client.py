"""Asking a witness for a cosignature (c2sp.org/tlog-witness), synchronously.

What the signer and ``audit verify`` call, from a thread of their own. Plain
``http.client``: no redirect is followed, every call has a deadline for the
whole exchange, and an answer larger than the cap is not read. A witness's
answer is either a verdict about our checkpoint (``WitnessConflict``,
``WitnessRejected``) or a sign that it cannot give one now (``WitnessUnavailable``).
The cosignature lines returned are checked for form only: the caller verifies
them with the witness keys it trusts.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

from tuf_signer._text import printable
from tuf_signer.audit._checkpoint import MAX_SIZE
from tuf_signer.audit._note import NoteFormatError, parse_decimal, parse_note
from tuf_signer.errors import BackendUnavailableError, RemoteError, RequestError
from tuf_signer.witness._protocol import (
    ADD_CHECKPOINT,
    SIZE_CONTENT_TYPE,
    format_submission,
    origin_hash,
)

MAX_COSIGNATURE_BYTES = 64 * 1024  # an add-checkpoint answer: a few signature lines
MAX_CHECKPOINT_BYTES = 1_000_000  # a monitoring answer: a signed note (audit/_note.py)
_REASON_CHARS = 200  # of a refusal's body, kept in the error

# The gRPC status name each refusal maps to, for callers that pass it on.
_CODES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ABORTED"}


class WitnessUnavailable(BackendUnavailableError):
    """The witness gave no verdict: unreachable, timed out, 5xx, a redirect or garbage.

    Like an HSM that does not answer, it may answer later; nothing was cosigned
    (as far as we know).
    """


class WitnessRejected(RemoteError):
    """The witness refused our checkpoint with a 4xx status other than 409.

    403: it does not trust our signature; 404: it does not know our origin;
    422: the checkpoint is not consistent with what it cosigned before; 400:
    it could not read the request.

    Attributes:
        status: the HTTP status.
        reason: the start of the witness's answer (untrusted text: escape it
            before showing it, as ``printable`` does).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason, _CODES.get(status, "FAILED_PRECONDITION"))
        self.status = status


class WitnessConflict(RemoteError):
    """409: the witness's latest cosigned size is not the old size we sent.

    Send the checkpoint again with a consistency proof from ``size``.

    Attributes:
        size: the witness's latest cosigned tree size for our origin.
    """

    code = "ABORTED"

    def __init__(self, size: int) -> None:
        super().__init__(f"the witness's latest cosigned size is {size}")
        self.size = size


def add_checkpoint(
    url: str, old_size: int, proof: Sequence[bytes], checkpoint_note: bytes, timeout: float
) -> bytes:
    """POST ``<url>/add-checkpoint`` and return the cosignature lines.

    Args:
        url: the witness's submission prefix, ``http://`` or ``https://``.
        old_size: the size of the witness's latest cosigned checkpoint (0 if
            unknown: a 409 then tells it).
        proof: the RFC 6962 consistency proof from ``old_size`` to the checkpoint.
        checkpoint_note: the signed checkpoint note.
        timeout: seconds for the whole exchange.

    Returns:
        The answer's body: one or more signature lines, each ending in a
        newline, checked for form (not verified).

    Raises:
        RequestError: the URL or the arguments cannot make a request.
        WitnessConflict: 409, with the witness's size.
        WitnessRejected: any other 4xx.
        WitnessUnavailable: no answer in time, a network error, 5xx, another
            status, or an answer that is not signature lines.
    """
    try:
        body = format_submission(old_size, proof, checkpoint_note)
    except NoteFormatError as e:
        raise RequestError(f"cannot make an add-checkpoint request: {e.reason}") from None
    status, content_type, data = _exchange(
        "POST", _join(url, ADD_CHECKPOINT), body, timeout, MAX_COSIGNATURE_BYTES
    )
    if status == 200:
        try:
            # tlog-witness: the client MAY append the answer to the checkpoint
            # and read it as a note; it must parse as signature lines.
            parse_note(checkpoint_note + data)
            if not data.startswith("\u2014 ".encode()):
                raise NoteFormatError("no signature line")
        except NoteFormatError as e:
            raise WitnessUnavailable(
                f"the witness answered 200 with no signature lines: {e.reason}"
            ) from None
        return data
    if status == 409:
        raise WitnessConflict(_size(content_type, data))
    _refused(status, data)
    raise AssertionError("unreachable")  # pragma: no cover


def fetch_checkpoint(url: str, origin: str, timeout: float) -> bytes | None:
    """GET ``<url>/<sha256hex(origin)>/checkpoint``: the witness's latest cosigned checkpoint.

    Args:
        url: the witness's monitoring prefix.
        origin: the log's origin.
        timeout: seconds for the whole exchange.

    Returns:
        The signed note (checked for form, not verified), or None on 404 (the
        witness never cosigned a checkpoint of that log).

    Raises:
        RequestError: the URL cannot make a request.
        WitnessRejected: any other 4xx.
        WitnessUnavailable: as for ``add_checkpoint``.
    """
    status, _, data = _exchange(
        "GET", _join(url, f"{origin_hash(origin)}/checkpoint"), None, timeout, MAX_CHECKPOINT_BYTES
    )
    if status == 404:
        return None
    if status == 200:
        try:
            parse_note(data)
        except NoteFormatError as e:
            raise WitnessUnavailable(f"the witness answered 200 with no note: {e.reason}") from None
        return data
    _refused(status, data)
    raise AssertionError("unreachable")  # pragma: no cover


def _join(url: str, path: str) -> str:
    return url.rstrip("/") + "/" + path


def _refused(status: int, data: bytes) -> None:
    if 400 <= status < 500:
        text = data[: _REASON_CHARS * 4].decode("utf-8", "replace").strip()
        raise WitnessRejected(status, text[:_REASON_CHARS] or f"HTTP {status}")
    raise WitnessUnavailable(f"the witness answered HTTP {status}")


def _size(content_type: str, data: bytes) -> int:
    """The body of a 409: the latest cosigned size in decimal, a newline (tlog-witness)."""
    if content_type.partition(";")[0].strip().lower() != SIZE_CONTENT_TYPE:
        raise WitnessUnavailable(f"the witness answered 409 as {printable(content_type[:60])!r}")
    try:
        text = data.decode("ascii")
        if not text.endswith("\n"):
            raise NoteFormatError("no newline")
        return parse_decimal(text[:-1], "size", MAX_SIZE)
    except (UnicodeDecodeError, NoteFormatError):
        raise WitnessUnavailable("the witness answered 409 without a tree size") from None


class _Deadline:
    """Shuts a connection's socket down when the exchange's time is up.

    ``http.client``'s timeout bounds each read, not the whole answer: a witness
    sending one byte per second would hold the caller for as long as it likes.
    A timer cuts the socket at the deadline; whatever is blocked on it wakes up.
    """

    def __init__(self, timeout: float) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.passed = False
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.passed:
                self._cut()

    def _fire(self) -> None:
        with self._lock:
            self.passed = True
            self._cut()

    def _cut(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown, also under TLS (no SSL state touched).
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _exchange(
    method: str, url: str, body: bytes | None, timeout: float, cap: int
) -> tuple[int, str, bytes]:
    """One request; (status, Content-Type, body) once the whole body is in.

    Raises:
        RequestError: the URL is not http(s)://HOST[:PORT][/PATH].
        WitnessUnavailable: a network error, the deadline passed, the body is
            incomplete or over ``cap``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RequestError(f"witness URL {url!r} is not http(s)://HOST[:PORT][/PATH]")
    try:
        port = parts.port
    except ValueError:
        raise RequestError(f"witness URL {url!r} has an invalid port") from None
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname, port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    headers = {"Content-Type": "text/plain; charset=utf-8"} if body is not None else {}
    deadline = _Deadline(timeout)
    try:
        connection.connect()
        deadline.watch(connection.sock)
        connection.request(method, parts.path or "/", body=body, headers=headers)
        response = connection.getresponse()
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise WitnessUnavailable(f"the witness's answer is larger than {cap} bytes")
        data = bytearray()
        while chunk := response.read1(min(65536, cap + 1 - len(data))):
            data += chunk
            if len(data) > cap:
                raise WitnessUnavailable(f"the witness's answer is larger than {cap} bytes")
        if deadline.passed:
            raise WitnessUnavailable(f"the witness did not answer within {timeout:g} s")
        if response.length:  # http.client's count of the announced bytes still to come
            raise WitnessUnavailable("the witness's answer ended early")
        return response.status, response.getheader("Content-Type", ""), bytes(data)
    except (OSError, http.client.HTTPException) as e:
        # Refused, reset, timed out, cut at the deadline, TLS failures, a bad status line...
        if deadline.passed:
            raise WitnessUnavailable(f"the witness did not answer within {timeout:g} s") from e
        raise WitnessUnavailable(f"cannot reach the witness at {url}: {type(e).__name__}") from e
    finally:
        deadline.cancel()
        connection.close()
