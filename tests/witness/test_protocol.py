"""c2sp.org/tlog-witness against a real witness process: every status, the happy path, evidence.

The table sends one bad request per row to a witness holding log A at size 5
and log B never cosigned, and checks the status the spec names for it, then
that neither log's state moved.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.witness.conftest import Log, WitnessProcess, make_witness, request
from tuf_signer.audit._checkpoint import open_checkpoint
from tuf_signer.audit._note import Note, NoteSignature, parse_note, verify_note
from tuf_signer.witness import (
    WitnessState,
    add_checkpoint,
    fetch_checkpoint,
    format_submission,
    origin_hash,
)

A, B, C = "log.test/a", "log.test/b", "log.test/unknown"
ZERO = bytes(32)


@dataclass(frozen=True)
class Logs:
    """Log A (cosigned at size 5), log B (never cosigned), log C (not configured)."""

    a: Log
    b: Log
    c: Log


@pytest.fixture(scope="module")
def logs() -> Logs:
    return Logs(Log(A), Log(B), Log(C))


@pytest.fixture(scope="module")
def witness(tmp_path_factory: pytest.TempPathFactory, logs: Logs) -> Iterator[WitnessProcess]:
    """One witness for the table: A cosigned at size 5, B at nothing."""
    w = make_witness(tmp_path_factory.mktemp("table"), [logs.a, logs.b])
    w.start()
    try:
        assert w.post(logs.a.submission(0, 5)).status == 200
        yield w
    finally:
        w.stop()


def _forged_line(log: Log) -> NoteSignature:
    """A line with the log's name and key ID whose signature is wrong."""
    return NoteSignature(log.origin, log.vkey.key_id, bytes(64))


def _b64_with_padding_bits() -> str:
    """A 32-byte hash in base64 whose unused bits are not zero (non-canonical)."""
    text = base64.b64encode(ZERO).decode()  # "AAAA...A="
    return text[:-2] + "B="


def _proof_lines(*lines: str) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode()


# Each row: (method, path, body) built from the logs, and the status the spec names.
Build = Callable[[Logs], tuple[str, str, bytes | None]]


def post(body: Callable[[Logs], bytes]) -> Build:
    return lambda logs: ("POST", "/add-checkpoint", body(logs))


def at(method: str, path: Callable[[Logs], str]) -> Build:
    return lambda logs: (method, path(logs), None)


BAD_REQUESTS = [
    # 404: the origin is not one of the configured logs.
    pytest.param(post(lambda logs: logs.c.submission(0, 3)), 404, id="unknown-origin"),
    # 403: no trusted signature, or a trusted key's signature fails.
    pytest.param(
        post(lambda logs: format_submission(5, logs.a.proof(5, 8), logs.c.sign(logs.a.text(8)))),
        403,
        id="signed-by-a-stranger",
    ),
    pytest.param(
        post(lambda logs: format_submission(5, logs.a.proof(5, 8), Log(A).sign(logs.a.text(8)))),
        403,
        id="other-key-same-name",
    ),
    pytest.param(
        post(
            lambda logs: format_submission(
                5, logs.a.proof(5, 8), Note(logs.a.text(8), (_forged_line(logs.a),)).format()
            )
        ),
        403,
        id="trusted-key-bad-signature",
    ),
    pytest.param(
        post(
            lambda logs: format_submission(
                5, logs.a.proof(5, 8), logs.a.sign(logs.a.text(8), _forged_line(logs.a))
            )
        ),
        403,
        id="good-and-bad-trusted-signatures",
    ),
    # 400: the old size is above the checkpoint's.
    pytest.param(
        post(lambda logs: format_submission(5, (), logs.a.checkpoint(3))), 400, id="old-above"
    ),
    pytest.param(
        post(lambda logs: format_submission(4, (), logs.b.checkpoint(3))), 400, id="old-above-fresh"
    ),
    # 400: malformed bodies.
    pytest.param(post(lambda logs: b""), 400, id="empty"),
    pytest.param(post(lambda logs: b"hello"), 400, id="garbage"),
    pytest.param(
        post(lambda logs: b"old 0\n\n\xff\xfe\n\n\xe2\x80\x94 x AAAAAA==\n"), 400, id="not-utf8"
    ),
    pytest.param(
        post(lambda logs: "old 5\né\n\n".encode() + logs.a.checkpoint(8)), 400, id="not-ascii"
    ),
    pytest.param(post(lambda logs: b"\n" + logs.a.checkpoint(5)), 400, id="no-old-line"),
    pytest.param(
        post(lambda logs: b"old 05\n\n" + logs.a.checkpoint(5)), 400, id="old-leading-zero"
    ),
    pytest.param(post(lambda logs: b"old +5\n\n" + logs.a.checkpoint(5)), 400, id="old-plus-sign"),
    pytest.param(post(lambda logs: b"old -1\n\n" + logs.a.checkpoint(5)), 400, id="old-negative"),
    pytest.param(post(lambda logs: b"old  5\n\n" + logs.a.checkpoint(5)), 400, id="old-two-spaces"),
    pytest.param(
        post(lambda logs: f"old {2**63}\n\n".encode() + logs.a.checkpoint(5)),
        400,
        id="old-above-2^63-1",
    ),
    pytest.param(post(lambda logs: b"old 5\r\n\r\n" + logs.a.checkpoint(5)), 400, id="crlf"),
    pytest.param(
        post(lambda logs: b"old 5\n" + _proof_lines("!!!") + b"\n" + logs.a.checkpoint(8)),
        400,
        id="proof-not-base64",
    ),
    pytest.param(
        post(
            lambda logs: (
                b"old 5\n"
                + _proof_lines(base64.b64encode(bytes(31)).decode())
                + b"\n"
                + logs.a.checkpoint(8)
            )
        ),
        400,
        id="proof-hash-31-bytes",
    ),
    pytest.param(
        post(
            lambda logs: (
                b"old 5\n" + _proof_lines(_b64_with_padding_bits()) + b"\n" + logs.a.checkpoint(8)
            )
        ),
        400,
        id="proof-noncanonical-base64",
    ),
    pytest.param(
        post(
            lambda logs: (
                b"old 5\n"
                + _proof_lines(*[base64.b64encode(ZERO).decode()] * 64)
                + b"\n"
                + logs.a.checkpoint(8)
            )
        ),
        400,
        id="64-proof-lines",
    ),
    pytest.param(
        post(lambda logs: b"old 5\n\n" + logs.a.text(8).encode() + b"\n"),
        400,
        id="no-signature-line",
    ),
    pytest.param(
        post(lambda logs: b"old 5\n\n" + logs.a.checkpoint(8)[:-1]), 400, id="truncated-signature"
    ),
    pytest.param(
        post(lambda logs: b"old 5\n\n" + logs.a.sign(f"{A}\n8\n")), 400, id="checkpoint-two-lines"
    ),
    pytest.param(
        post(lambda logs: b"old 5\n\n" + logs.a.sign(logs.a.text(8).replace("\n8\n", "\n08\n"))),
        400,
        id="checkpoint-size-leading-zero",
    ),
    pytest.param(
        post(lambda logs: b"old 5\n\n" + logs.a.sign(logs.a.text(8) + "\n")),
        400,
        id="checkpoint-empty-extension",
    ),
    pytest.param(
        post(lambda logs: b"old 0\n\n" + logs.b.sign(logs.b.text(0, root=bytes(31)))),
        400,
        id="size-0-root-31-bytes",
    ),
    pytest.param(
        post(
            lambda logs: (
                b"old 5\n\n" + logs.a.checkpoint(8).replace(b"\n\n", b"\x01\n\n", 1)
            )  # a control character
        ),
        400,
        id="control-character",
    ),
    # 409: the old size is not the stored one; the body says which it is.
    pytest.param(post(lambda logs: logs.a.submission(3, 8)), 409, id="stale-old-size"),
    pytest.param(post(lambda logs: logs.a.submission(0, 8)), 409, id="old-zero-when-cosigned"),
    pytest.param(post(lambda logs: logs.a.submission(6, 8)), 409, id="old-size-ahead"),
    # 422: a size-0 checkpoint must have the empty tree's root.
    pytest.param(
        post(
            lambda logs: (
                b"old 0\n\n" + logs.b.sign(logs.b.text(0, root=hashlib.sha256(b"x").digest()))
            )
        ),
        422,
        id="size-0-wrong-root",
    ),
    # 422: no proof from 0; proofs that do not verify; same size, another root.
    pytest.param(
        post(lambda logs: format_submission(0, (logs.b.root(1),), logs.b.checkpoint(3))),
        422,
        id="proof-with-old-0",
    ),
    pytest.param(
        post(lambda logs: format_submission(5, (ZERO,) * 3, logs.a.checkpoint(8))),
        422,
        id="proof-of-zeroes",
    ),
    pytest.param(
        post(lambda logs: format_submission(5, logs.a.proof(5, 8)[:-1], logs.a.checkpoint(8))),
        422,
        id="proof-truncated",
    ),
    pytest.param(
        post(lambda logs: format_submission(5, (*logs.a.proof(5, 8), ZERO), logs.a.checkpoint(8))),
        422,
        id="proof-one-too-many",
    ),
    pytest.param(
        post(lambda logs: format_submission(5, (), logs.a.checkpoint(8))), 422, id="proof-missing"
    ),
    pytest.param(
        post(lambda logs: format_submission(5, (ZERO,), logs.a.checkpoint(5))),
        422,
        id="proof-for-the-same-size",
    ),
    pytest.param(
        post(lambda logs: Log(A, private=logs.a.private, prefix="forked").submission(5, 8)),
        422,
        id="fork-with-its-own-proof",
    ),
    pytest.param(
        post(lambda logs: format_submission(5, (), logs.a.sign(logs.a.text(5, root=ZERO)))),
        422,
        id="same-size-other-root",
    ),
    # 405 and 404: methods and paths.
    pytest.param(at("GET", lambda logs: "/add-checkpoint"), 405, id="get-add-checkpoint"),
    pytest.param(at("PUT", lambda logs: "/add-checkpoint"), 405, id="put-add-checkpoint"),
    pytest.param(at("BREW", lambda logs: "/add-checkpoint"), 405, id="brew-add-checkpoint"),
    pytest.param(at("POST", lambda logs: f"/{origin_hash(A)}/checkpoint"), 405, id="post-monitor"),
    pytest.param(at("DELETE", lambda logs: f"/{origin_hash(A)}/checkpoint"), 405, id="delete"),
    pytest.param(at("GET", lambda logs: "/"), 404, id="root"),
    pytest.param(at("POST", lambda logs: "/add-checkpoint/"), 404, id="trailing-slash"),
    pytest.param(
        at("GET", lambda logs: f"/{origin_hash(A).upper()}/checkpoint"), 404, id="hex-upper"
    ),
    pytest.param(at("GET", lambda logs: f"/{origin_hash(A)}"), 404, id="no-checkpoint-suffix"),
    pytest.param(
        at("GET", lambda logs: f"/{origin_hash(C)}/checkpoint"), 404, id="monitor-unknown"
    ),
    pytest.param(at("GET", lambda logs: f"/{origin_hash(B)}/checkpoint"), 404, id="never-cosigned"),
]


@pytest.mark.parametrize(("build", "status"), BAD_REQUESTS)
def test_bad_requests_get_the_spec_status_and_change_nothing(
    witness: WitnessProcess, logs: Logs, build: Build, status: int
) -> None:
    before = witness.latest(A)
    assert before.status == 200
    method, path, body = build(logs)
    headers = {} if body is None else {"Content-Length": str(len(body))}
    reply = request(witness.url, method, path, body, headers)
    assert reply.status == status, reply.body
    if status == 409:
        # tlog-witness: the latest cosigned size, a newline, as text/x.tlog.size.
        assert reply.headers["Content-Type"] == "text/x.tlog.size"
        assert reply.body == b"5\n"
    if status == 405:
        assert reply.headers["Allow"] in ("GET", "POST")
    # Nothing moved: A is still at 5 with the same note, B still has nothing.
    assert (witness.latest(A).status, witness.latest(A).body) == (200, before.body)
    assert witness.latest(B).status == 404
    assert witness.alive()


def test_a_checkpoint_is_cosigned_extended_and_served(
    start_witness: Callable[..., WitnessProcess],
) -> None:
    log = Log(A)
    w = start_witness([log])
    # Old size 0: no proof. The client returns the cosignature line(s).
    checkpoint = log.checkpoint(3)
    started = time.time()
    lines = add_checkpoint(w.url, 0, (), checkpoint, timeout=10)
    assert lines.startswith(f"\u2014 {w.vkey.name} ".encode())
    assert lines.count(b"\n") == 1 and lines.endswith(b"\n")
    (verified,) = verify_note(parse_note(checkpoint + lines), [w.vkey])
    assert verified.timestamp is not None
    assert int(started) <= verified.timestamp <= time.time() + 1  # POSIX seconds, never 0

    # An extension with a real RFC 6962 proof; an unknown signature line is ignored.
    stranger = Ed25519PrivateKey.generate()
    extra = Log("stranger.test", private=stranger).sign(log.text(7)).split(b"\n\n")[1]
    submitted = log.checkpoint(7) + extra
    lines = add_checkpoint(w.url, 3, log.proof(3, 7), submitted, timeout=10)
    signed = open_checkpoint(
        submitted + lines, origin=A, log_key=log.vkey, cosigners=[w.vkey], quorum=1
    )
    assert signed.checkpoint.size == 7

    # The monitoring endpoint: the log signature the witness verified, its cosignature, no other.
    note = fetch_checkpoint(w.url, A, timeout=10)
    assert note is not None
    served = open_checkpoint(note, origin=A, log_key=log.vkey, cosigners=[w.vkey], quorum=1)
    assert served.checkpoint.size == 7
    assert [(s.name, s.key_id) for s in parse_note(note).signatures] == [
        (A, log.vkey.key_id),
        (w.vkey.name, w.vkey.key_id),
    ]
    assert note.endswith(lines)  # the very cosignature add-checkpoint returned

    # The same checkpoint again (old size = size, no proof) is cosigned again.
    assert add_checkpoint(w.url, 7, (), log.checkpoint(7), timeout=10).startswith("\u2014".encode())
    assert fetch_checkpoint(w.url, "log.test/never", timeout=10) is None


def test_a_log_with_two_keys_needs_one_and_keeps_both(
    start_witness: Callable[..., WitnessProcess], tmp_path: Path
) -> None:
    old, new = Log(A), Log(A)  # a key rotation: both keys trusted for a while
    w = start_witness([old])
    w.stop()
    text = w.config.read_text().replace(
        f'vkeys = ["{old.vkey.text()}"]', f'vkeys = ["{old.vkey.text()}", "{new.vkey.text()}"]'
    )
    w.config.write_text(text)
    w.start()
    body = new.text(3)
    both = Note(
        body, (*parse_note(old.sign(body)).signatures, *parse_note(new.sign(body)).signatures)
    )
    assert w.post(format_submission(0, (), new.sign(body))).status == 200
    assert w.post(format_submission(3, (), both.format())).status == 200
    names = [(s.name, s.key_id) for s in parse_note(w.latest(A).body).signatures]
    assert names == [(A, old.vkey.key_id), (A, new.vkey.key_id), (w.vkey.name, w.vkey.key_id)]


def test_inconsistent_signed_checkpoints_are_kept_as_evidence(
    start_witness: Callable[..., WitnessProcess],
) -> None:
    a, b = Log(A), Log(B)
    w = start_witness([a, b])
    assert w.post(a.submission(0, 5)).status == 200
    other_root = a.sign(a.text(5, root=ZERO))
    empty = b.sign(b.text(0, root=ZERO))
    refused: list[tuple[bytes, int]] = [
        (format_submission(5, (), other_root), 422),  # equivocation
        (format_submission(5, (), other_root), 422),  # the same again: kept once
        (format_submission(0, (), empty), 422),  # size 0, not the empty root
        (format_submission(5, (ZERO,), a.checkpoint(8)), 422),  # a proof that fails
        # Not evidence: unsigned, unknown or merely stale.
        (format_submission(5, (), Note(a.text(6), (_forged_line(a),)).format()), 403),
        (Log(C).submission(0, 2), 404),
        (a.submission(3, 8), 409),
    ]
    for body, status in refused:
        assert w.post(body).status == status
    evidence = WitnessState(w.directory / "witness.db").evidence()
    assert [
        (e.misbehaviour.kind, e.misbehaviour.origin, e.misbehaviour.size) for e in evidence
    ] == [
        ("equivocation", A, 5),
        ("empty-root", B, 0),
        ("proof", A, 8),
    ]
    first = evidence[0].misbehaviour
    assert first.checkpoint == other_root
    assert first.cosigned == w.latest(A).body  # the conflicting cosigned note, kept beside it
    assert "possible log misbehaviour (equivocation)" in w.log()
    # The state itself did not move.
    assert open_checkpoint(w.latest(A).body, origin=A, log_key=a.vkey).checkpoint.size == 5
