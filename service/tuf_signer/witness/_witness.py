"""The witness's rules (c2sp.org/tlog-witness "add-checkpoint"), apart from HTTP.

``Witness.add_checkpoint`` takes a request body and returns the cosignature
lines, or raises the ``WitnessRefusal`` whose status the spec names. The
checks run in the spec's order: the body's format (400), the origin (404), the
log's signature (403), the old size against the checkpoint's (400), then,
inside the state's write transaction, the old size against the stored one
(409) and the consistency checks (422), and the cosignature is made and stored
in that same transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from tuf_signer.audit._checkpoint import EMPTY_ROOT
from tuf_signer.audit._merkle import ProofError, verify_consistency
from tuf_signer.audit._note import Note, NoteSignatureError, parse_note, verify_note
from tuf_signer.errors import shown
from tuf_signer.witness._config import TrustedLog
from tuf_signer.witness._key import WitnessKey
from tuf_signer.witness._protocol import (
    InconsistentCheckpoint,
    MalformedSubmission,
    Misbehaviour,
    SizeConflict,
    Submission,
    UnknownLog,
    UntrustedCheckpoint,
    origin_hash,
    parse_submission,
)
from tuf_signer.witness._state import Cosigned, WitnessState

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Witness:
    """Checks submitted checkpoints, cosigns the consistent ones, serves the latest.

    Args:
        key: the witness's signing key.
        logs: the logs it cosigns.
        state: where the latest cosigned checkpoints are kept.
        clock: POSIX time in seconds (injected for tests).
    """

    def __init__(
        self,
        key: WitnessKey,
        logs: Sequence[TrustedLog],
        state: WitnessState,
        clock: Clock = time.time,
    ) -> None:
        self.key = key
        self._logs = {trusted.origin: trusted for trusted in logs}
        self._by_hash = {origin_hash(trusted.origin): trusted.origin for trusted in logs}
        self._state = state
        self._clock = clock

    def add_checkpoint(self, body: bytes) -> bytes:
        """Check an add-checkpoint body and cosign its checkpoint.

        Returns:
            The answer's body: the cosignature line(s), each ending in a newline.

        Raises:
            MalformedSubmission: 400, the body is malformed, or its old size is
                above the checkpoint size.
            UnknownLog: 404, the origin is not configured.
            UntrustedCheckpoint: 403, no trusted log signature, or a failing one.
            SizeConflict: 409, the old size is not the stored size.
            InconsistentCheckpoint: 422, a consistency check failed (kept as evidence).
            StoreError: the state cannot be read or written.
        """
        submission = parse_submission(body)
        head = submission.head
        trusted = self._logs.get(head.origin)
        if trusted is None:
            raise UnknownLog(f"unknown log origin {shown(head.origin)}")
        signatures = _verified_log_signatures(submission.note, trusted)
        if submission.old_size > head.size:
            raise MalformedSubmission(
                f"old size {submission.old_size} is above the checkpoint size {head.size}"
            )
        stored = self._state.advance(
            head.origin, lambda current: self._cosign(submission, signatures, current)
        )
        log.info(
            "cosigned %s at size %d (old size %d)",
            shown(head.origin),
            head.size,
            submission.old_size,
        )
        # The answer: this witness's cosignature line(s) on the stored note.
        ours = (self.key.vkey.name, self.key.vkey.key_id)
        lines = [s.line() for s in parse_note(stored.note).signatures if (s.name, s.key_id) == ours]
        return "".join(lines).encode()

    def _cosign(
        self, submission: Submission, signatures: Note, current: Cosigned | None
    ) -> Cosigned:
        """The check and the cosignature, run inside the state's write transaction."""
        head = submission.head
        size, root = (0, EMPTY_ROOT) if current is None else (current.size, current.root_hash)
        if submission.old_size != size:
            raise SizeConflict(
                f"old size {submission.old_size} is not the latest cosigned size {size}", size
            )

        def inconsistent(kind: str, reason: str) -> InconsistentCheckpoint:
            evidence = Misbehaviour(
                kind=kind,
                origin=head.origin,
                size=head.size,
                root_hash=head.root_hash,
                old_size=submission.old_size,
                proof=submission.proof,
                checkpoint=submission.checkpoint,
                cosigned=None if current is None else current.note,
            )
            return InconsistentCheckpoint(reason, evidence)

        if head.size == 0 and head.root_hash != EMPTY_ROOT:
            raise inconsistent("empty-root", "checkpoint of size 0 does not have the empty root")
        if head.size == size and head.root_hash != root:
            raise inconsistent(
                "equivocation", f"checkpoint of size {size} has another root than the cosigned one"
            )
        try:
            verify_consistency(size, head.size, submission.proof, root, head.root_hash)
        except ProofError as e:
            raise inconsistent("proof", f"consistency proof: {e.reason}") from None
        # tlog-witness: the timestamp MUST NOT be zero.
        timestamp = max(1, int(self._clock()))
        cosignature = self.key.cosign(signatures.text, timestamp)
        note = signatures.with_signature(cosignature)
        return Cosigned(head.origin, head.size, head.root_hash, note.format(), timestamp)

    def checkpoint(self, hashed_origin: str) -> bytes:
        """The latest cosigned checkpoint of the log whose origin hashes to ``hashed_origin``.

        Raises:
            UnknownLog: 404, no such log, or none of its checkpoints was cosigned.
            StoreError: the state cannot be read.
        """
        origin = self._by_hash.get(hashed_origin)
        stored = None if origin is None else self._state.latest(origin)
        if stored is None:
            raise UnknownLog("no cosigned checkpoint for that origin hash")
        return stored.note


def _verified_log_signatures(note: Note, trusted: TrustedLog) -> Note:
    """The note with only its signatures by the log's keys, each verified.

    tlog-witness: signatures from unknown keys are ignored; 403 when none by a
    trusted key is there, or when one by a trusted key fails (signed-note).

    Raises:
        UntrustedCheckpoint: as above.
    """
    try:
        verify_note(note, trusted.keys)
    except NoteSignatureError as e:
        raise UntrustedCheckpoint(e.reason) from None
    known = {(key.name, key.key_id) for key in trusted.keys}
    seen: list[tuple[str, int]] = []
    kept = []
    for signature in note.signatures:
        which = (signature.name, signature.key_id)
        if which in known and which not in seen:
            seen.append(which)
            kept.append(signature)
    return Note(note.text, tuple(kept))
