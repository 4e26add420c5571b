"""The add-checkpoint request of c2sp.org/tlog-witness, and the refusals a witness answers.

Pure: no I/O. The witness parses a request body here; the client formats one
here, so the two read and write the same bytes. Each refusal carries the HTTP
status the spec names for it (and, like every ``TufSignerError``, a gRPC code
name), so the HTTP layer maps errors to statuses in one place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from tuf_signer.audit._checkpoint import EMPTY_ROOT, HASH_SIZE, MAX_SIZE, parse_checkpoint
from tuf_signer.audit._note import (
    Note,
    NoteFormatError,
    b64decode,
    b64encode,
    parse_decimal,
    parse_note,
)
from tuf_signer.errors import TufSignerError, shown

# tlog-witness "add-checkpoint": the client MUST NOT send more than 63 proof lines.
MAX_PROOF_LINES = 63
ADD_CHECKPOINT = "add-checkpoint"
SIZE_CONTENT_TYPE = "text/x.tlog.size"  # the 409 answer's type (tlog-witness)
_OLD_PREFIX = "old "


class WitnessRefusal(TufSignerError):
    """A submission the witness does not cosign; ``status`` is the HTTP status to answer."""

    status: ClassVar[int] = 400


class MalformedSubmission(WitnessRefusal):
    """400: the body breaks the request format, or its old size is above the checkpoint's."""

    code = "INVALID_ARGUMENT"
    status = 400


class UnknownLog(WitnessRefusal):
    """404: no log with that origin is configured (or, for a read, none was cosigned yet)."""

    code = "NOT_FOUND"
    status = 404


class UntrustedCheckpoint(WitnessRefusal):
    """403: no trusted log key signed the checkpoint, or a trusted key's signature fails."""

    code = "PERMISSION_DENIED"
    status = 403


class SizeConflict(WitnessRefusal):
    """409: the old size is not the size of the latest checkpoint cosigned for the origin.

    Attributes:
        size: that latest cosigned size (0 when none was), the body of the answer.
    """

    code = "ABORTED"
    status = 409

    def __init__(self, reason: str, size: int) -> None:
        super().__init__(reason)
        self.size = size


@dataclass(frozen=True)
class Misbehaviour:
    """A log-signed checkpoint that failed a consistency check: kept as evidence.

    Attributes:
        kind: ``equivocation`` (same size as the cosigned one, another root: two
            log signatures prove it), ``empty-root`` (size 0 with a root that is
            not the empty tree's), or ``proof`` (the consistency proof from the
            cosigned checkpoint fails; proofs are unsigned, so this alone proves
            nothing, but the checkpoint is worth keeping).
        origin, size, root_hash: the submitted tree head.
        old_size: the request's old size (the cosigned size, or the check would
            have been a 409).
        proof: the request's proof hashes.
        checkpoint: the submitted signed note, as received.
        cosigned: the witness's latest cosigned note for the origin, or None.
    """

    kind: str
    origin: str
    size: int
    root_hash: bytes
    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes
    cosigned: bytes | None


class InconsistentCheckpoint(WitnessRefusal):
    """422: the checkpoint does not extend the latest cosigned one (or breaks the empty tree).

    Attributes:
        evidence: what to keep as possible proof of log misbehaviour.
    """

    code = "FAILED_PRECONDITION"
    status = 422

    def __init__(self, reason: str, evidence: Misbehaviour) -> None:
        super().__init__(reason)
        self.evidence = evidence


@dataclass(frozen=True)
class TreeHead:
    """The first three lines of a checkpoint (tlog-checkpoint "Note text").

    Unlike ``Checkpoint``, a size-0 head may carry any root here: the witness
    must answer such a log-signed checkpoint 422 after checking its signature,
    not refuse it as malformed.
    """

    origin: str
    size: int
    root_hash: bytes


@dataclass(frozen=True)
class Submission:
    """A parsed add-checkpoint body (tlog-witness "add-checkpoint").

    Attributes:
        old_size: the size of the previous checkpoint the client has.
        proof: the RFC 6962 §2.1.2 consistency proof from ``old_size``.
        note: the checkpoint's signed note.
        head: its origin, size and root hash.
        checkpoint: the signed note's bytes, as received.
    """

    old_size: int
    proof: tuple[bytes, ...]
    note: Note
    head: TreeHead
    checkpoint: bytes


def origin_hash(origin: str) -> str:
    """The monitoring path's ``<origin hash>``: lowercase hex SHA-256 of the origin."""
    return hashlib.sha256(origin.encode()).hexdigest()


def format_submission(old_size: int, proof: Sequence[bytes], checkpoint: bytes) -> bytes:
    """The add-checkpoint body: ``old N``, one base64 hash per line, an empty line, the note.

    Raises:
        NoteFormatError: ``old_size`` is out of range, there are more than 63
            proof hashes, or one is not 32 bytes.
    """
    if isinstance(old_size, bool) or not 0 <= old_size <= MAX_SIZE:
        raise NoteFormatError(f"old size {old_size!r} is out of range")
    if len(proof) > MAX_PROOF_LINES:
        raise NoteFormatError(f"{len(proof)} proof hashes, more than {MAX_PROOF_LINES}")
    if any(not isinstance(h, bytes) or len(h) != HASH_SIZE for h in proof):
        raise NoteFormatError(f"a proof hash is not {HASH_SIZE} bytes")
    lines = [f"{_OLD_PREFIX}{old_size}", *(b64encode(h) for h in proof)]
    return ("".join(line + "\n" for line in lines) + "\n").encode("ascii") + checkpoint


def parse_submission(body: bytes) -> Submission:
    """Parse an add-checkpoint body strictly; verify nothing.

    The body is an ``old`` line, 0 to 63 proof lines, an empty line, then a
    signed checkpoint note. Proof lines are counted before any is decoded.

    Raises:
        MalformedSubmission: any part breaks its rule (400), naming which.
    """
    try:
        head, separator, checkpoint = body.partition(b"\n\n")
        if not separator:
            raise NoteFormatError("request has no empty line before the checkpoint")
        try:
            lines = head.decode("ascii").split("\n")
        except UnicodeDecodeError:
            raise NoteFormatError("request lines before the checkpoint are not ASCII") from None
        if not lines[0].startswith(_OLD_PREFIX):
            raise NoteFormatError(
                f"request does not start with an old size line: {shown(lines[0])}"
            )
        old_size = parse_decimal(lines[0].removeprefix(_OLD_PREFIX), "old size", MAX_SIZE)
        if len(lines) - 1 > MAX_PROOF_LINES:
            raise NoteFormatError(
                f"request has {len(lines) - 1} proof lines, more than {MAX_PROOF_LINES}"
            )
        proof = tuple(b64decode(line, "proof line") for line in lines[1:])
        if any(len(h) != HASH_SIZE for h in proof):
            raise NoteFormatError(f"a proof line is not a {HASH_SIZE}-byte hash")
        note = parse_note(checkpoint)
        tree = _tree_head(note.text)
    except NoteFormatError as e:
        raise MalformedSubmission(e.reason) from None
    return Submission(old_size, proof, note, tree, checkpoint)


def _tree_head(text: str) -> TreeHead:
    """Parse a checkpoint text with ``parse_checkpoint``, letting a size-0 head have any root.

    ``parse_checkpoint`` refuses a size-0 checkpoint whose root is not the empty
    tree's, which the witness must answer 422, not 400. So such a text is parsed
    a second time with the empty root in its place: if that passes, the only
    fault was the root, and the head keeps the root as written.

    Raises:
        NoteFormatError: the text is malformed in any other way.
    """
    try:
        checkpoint = parse_checkpoint(text)
    except NoteFormatError:
        lines = text.split("\n")
        if len(lines) < 4 or lines[1] != "0":
            raise
        root = b64decode(lines[2], "checkpoint root hash")
        lines[2] = b64encode(EMPTY_ROOT)
        checkpoint = parse_checkpoint("\n".join(lines))
        if len(root) != HASH_SIZE:
            raise NoteFormatError(f"checkpoint root hash has {len(root)} bytes, not 32") from None
        return TreeHead(checkpoint.origin, 0, root)
    return TreeHead(checkpoint.origin, checkpoint.size, checkpoint.root_hash)
