"""Checkpoints (c2sp.org/tlog-checkpoint) and inclusion proofs (c2sp.org/tlog-proof).

A checkpoint is a signed note whose text is the log's origin, its tree size and
its RFC 6962 root hash, one per line, plus optional extension lines. The audit
key signs it (type 0x01); witnesses add cosignatures (type 0x04). A tlog-proof
bundles the index of one record, its RFC 6962 audit path and such a checkpoint
verbatim, so that anyone holding the verifier keys can check a signature's
record offline. Hashing and proof checking belong to the Merkle module: this
module takes them as a callable (``InclusionVerifier``) and imports none of it.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tuf_signer.audit._note import (
    ED25519,
    MAX_NOTE_BYTES,
    Note,
    NoteFormatError,
    NoteSignatureError,
    Signer,
    VerifiedSignature,
    VerifierKey,
    b64decode,
    b64encode,
    check_text,
    parse_decimal,
    parse_note,
    sign_text,
    verify_note,
)
from tuf_signer.errors import shown

HASH_SIZE = 32  # SHA-256, RFC 6962 §2.1
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 6962 §2.1: MTH({}) = SHA-256()
MAX_SIZE = 2**63 - 1  # as Go's tlog (int64); tlog-witness sizes fit in it too
MAX_PATH = 63  # an audit path in a tree of at most 2^63 - 1 leaves
PROOF_HEADER = "c2sp.org/tlog-proof@v1"


@dataclass(frozen=True)
class Checkpoint:
    """The note text of a checkpoint (tlog-checkpoint "Note text").

    Attributes:
        origin: the log's identity, first line; non-empty.
        size: number of leaves in the tree.
        root_hash: the 32-byte RFC 6962 root of the tree at ``size``.
        extensions: opaque non-empty extension lines (NOT RECOMMENDED).
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for what, line in (
            ("origin", self.origin),
            *(("extension line", e) for e in self.extensions),
        ):
            if not line:
                raise NoteFormatError(f"checkpoint {what} is empty")
            if "\n" in line:
                raise NoteFormatError(f"checkpoint {what} contains a newline: {shown(line)}")
            check_text(line, f"checkpoint {what}")
        if not 0 <= self.size <= MAX_SIZE:
            raise NoteFormatError(f"checkpoint size {self.size} is out of range")
        if len(self.root_hash) != HASH_SIZE:
            raise NoteFormatError(f"checkpoint root hash has {len(self.root_hash)} bytes, not 32")
        if self.size == 0 and self.root_hash != EMPTY_ROOT:
            # tlog-witness answers 422 to this; no honest log signs it.
            raise NoteFormatError("checkpoint of size 0 does not have the empty tree's root")

    def body(self) -> str:
        """The note text: ``origin\\nsize\\nbase64(root)\\n`` then extension lines."""
        lines = (self.origin, str(self.size), b64encode(self.root_hash), *self.extensions)
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint note text (tlog-checkpoint "Note text").

    At least three non-empty lines, each ending in a newline: origin, size in
    decimal with no leading zeroes, canonical base64 of a 32-byte root hash, then
    non-empty extension lines. The origin is not required to be a URL, as
    clients MUST NOT assume it is.

    Raises:
        NoteFormatError: the text breaks one of these rules.
    """
    if not text.endswith("\n"):
        raise NoteFormatError("checkpoint text does not end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteFormatError(f"checkpoint text has {len(lines)} lines, fewer than 3")
    origin, size, root, *extensions = lines
    return Checkpoint(
        origin=origin,
        size=parse_decimal(size, "checkpoint size", MAX_SIZE),
        root_hash=b64decode(root, "checkpoint root hash"),
        extensions=tuple(extensions),
    )


def note_checkpoint(note: bytes) -> Checkpoint:
    """The checkpoint a signed note carries, parsed; its signatures are not checked.

    Raises:
        NoteFormatError: the note or its checkpoint text is malformed.
    """
    return parse_checkpoint(parse_note(note).text)


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint whose log signature verified, with the cosignatures that verified.

    Attributes:
        checkpoint: the parsed note text.
        note: the note as received (every signature line, known or not).
        cosignatures: verified signatures by the given cosigner keys, in note
            order; each carries its timestamp.
    """

    checkpoint: Checkpoint
    note: Note
    cosignatures: tuple[VerifiedSignature, ...]


def sign_checkpoint(checkpoint: Checkpoint, key: VerifierKey, sign: Signer) -> Note:
    """Sign a checkpoint with the log's Ed25519 key (tlog-checkpoint "Signatures").

    The key name must be the origin: the spec says SHOULD, and a log that
    follows it lets verifiers find its key from the checkpoint alone.

    Raises:
        NoteFormatError: the key's name is not the origin, or it is not type 0x01.
        SignatureMismatchError: ``sign`` returned a signature that does not verify.
    """
    if key.name != checkpoint.origin:
        raise NoteFormatError(
            f"log key {shown(key.name)} is not named after the origin {shown(checkpoint.origin)}"
        )
    body = checkpoint.body()
    return Note(body, (sign_text(body, key, sign),))


def open_checkpoint(
    message: bytes,
    *,
    origin: str,
    log_key: VerifierKey,
    cosigners: Iterable[VerifierKey] = (),
    quorum: int = 0,
) -> SignedCheckpoint:
    """Parse and verify a signed checkpoint from a known log.

    The origin must be the expected one and ``log_key`` (type 0x01) must have
    signed it; every signature by ``log_key`` or a cosigner must verify (a
    failing one rejects the note, signed-note "Signatures"); signatures by other
    keys are ignored. At least ``quorum`` distinct cosigners must have cosigned
    (tlog-proof "Verifying a tlog proof", step 3: a k-of-n policy).

    Raises:
        NoteFormatError: the note or checkpoint text is malformed, the origin
            is not ``origin``, or ``log_key`` is not type 0x01.
        NoteSignatureError: a known key's signature fails, the log key did not
            sign, or fewer than ``quorum`` cosigners did.
    """
    if log_key.sig_type != ED25519:
        raise NoteFormatError(f"log key {shown(log_key.name)} is not an Ed25519 (0x01) key")
    note = parse_note(message)
    checkpoint = parse_checkpoint(note.text)
    if checkpoint.origin != origin:
        raise NoteFormatError(
            f"checkpoint origin {shown(checkpoint.origin)} is not {shown(origin)}"
        )
    witnesses = tuple(cosigners)
    if log_key in witnesses:
        raise NoteFormatError("the log key is also listed as a cosigner")
    try:
        verified = verify_note(note, (log_key, *witnesses))
    except NoteSignatureError as e:
        if e.name is None:
            raise NoteSignatureError(f"checkpoint is not signed by {log_key.text()}") from None
        raise
    if not any(v.key == log_key for v in verified):
        raise NoteSignatureError(f"checkpoint is not signed by {log_key.text()}")
    cosignatures = tuple(v for v in verified if v.key != log_key)
    distinct = len({v.key for v in cosignatures})
    if distinct < quorum:
        raise NoteSignatureError(
            f"checkpoint has {distinct} valid cosignatures of the {quorum} required"
        )
    return SignedCheckpoint(checkpoint, note, cosignatures)


class InclusionVerifier(Protocol):
    """Checks an RFC 6962 inclusion proof (RFC 9162 §2.1.3.2), raising when it fails.

    The Merkle module provides it; this module never hashes a tree itself.
    """

    def __call__(
        self,
        leaf_index: int,
        tree_size: int,
        leaf_hash: bytes,
        path: Sequence[bytes],
        root_hash: bytes,
        /,
    ) -> None: ...


@dataclass(frozen=True)
class TlogProof:
    """A tlog-proof@v1: one entry's index, audit path and the checkpoint note verbatim.

    Attributes:
        index: zero-based index of the entry (the record ``seq - 1``).
        path: the RFC 6962 §2.1.1 audit path, from the leaf's sibling up.
        checkpoint: the signed checkpoint note, byte for byte, with cosignatures.
        extra: opaque, unauthenticated extra data, or None (no ``extra`` line).
    """

    index: int
    path: tuple[bytes, ...]
    checkpoint: bytes
    extra: bytes | None = None

    def __post_init__(self) -> None:
        if self.extra is not None and not self.extra:
            raise NoteFormatError("proof extra data is empty (omit the line instead)")
        if len(self.path) > MAX_PATH:
            raise NoteFormatError(f"proof has {len(self.path)} hashes, more than {MAX_PATH}")
        if any(len(h) != HASH_SIZE for h in self.path):
            raise NoteFormatError("proof hash is not 32 bytes")
        size = note_checkpoint(self.checkpoint).size
        if not 0 <= self.index < size:
            raise NoteFormatError(f"proof index {self.index} is not below the tree size {size}")

    def format(self) -> bytes:
        """The proof text (tlog-proof "Format"); ends with the checkpoint's last newline."""
        lines = [PROOF_HEADER]
        if self.extra is not None:
            lines.append("extra " + b64encode(self.extra))
        lines.append(f"index {self.index}")
        lines.extend(b64encode(h) for h in self.path)
        return ("".join(line + "\n" for line in lines) + "\n").encode() + self.checkpoint


def parse_tlog_proof(data: bytes) -> TlogProof:
    """Parse a tlog-proof@v1 text strictly (tlog-proof "Format").

    The header line, an optional ``extra <base64>`` line, ``index <decimal>``,
    zero to 63 lines of base64 32-byte hashes, an empty line, then a checkpoint
    note that must itself parse (its signatures are checked by ``verify_tlog_proof``).

    Raises:
        NoteFormatError: any line breaks its rule, the index is not below the
            checkpoint's size, or the embedded checkpoint is malformed.
    """
    if len(data) > MAX_NOTE_BYTES + 8192:
        raise NoteFormatError("proof is too large")
    head, separator, checkpoint = data.partition(b"\n\n")
    if not separator:
        raise NoteFormatError("proof has no empty line before its checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise NoteFormatError("proof header lines are not ASCII") from None
    if lines[0] != PROOF_HEADER:
        raise NoteFormatError(f"proof does not start with {PROOF_HEADER}: {shown(lines[0])}")
    rest = lines[1:]
    extra = None
    if rest and rest[0].startswith("extra "):
        extra = b64decode(rest.pop(0).removeprefix("extra "), "proof extra data")
    if not rest or not rest[0].startswith("index "):
        raise NoteFormatError("proof has no index line")
    index = parse_decimal(rest.pop(0).removeprefix("index "), "proof index", MAX_SIZE)
    if len(rest) > MAX_PATH:
        raise NoteFormatError(f"proof has {len(rest)} hash lines, more than {MAX_PATH}")
    path = tuple(b64decode(line, "proof hash") for line in rest)
    return TlogProof(index=index, path=path, checkpoint=checkpoint, extra=extra)


def verify_tlog_proof(
    proof: TlogProof,
    *,
    leaf_hash: bytes,
    origin: str,
    log_key: VerifierKey,
    verify_inclusion: InclusionVerifier,
    cosigners: Iterable[VerifierKey] = (),
    quorum: int = 0,
) -> SignedCheckpoint:
    """Verify a tlog proof (tlog-proof "Verifying a tlog proof", steps 2 to 4).

    Step 1, the leaf hash, is the caller's: RFC 6962 ``SHA-256(0x00 || record)``.

    Raises:
        NoteFormatError: the checkpoint is malformed or from another origin.
        NoteSignatureError: the log did not sign it, a known signature fails, or
            fewer than ``quorum`` cosigners cosigned it.
        TufSignerError: whatever ``verify_inclusion`` raises when the path does
            not lead from ``leaf_hash`` to the checkpoint's root.
    """
    signed = open_checkpoint(
        proof.checkpoint, origin=origin, log_key=log_key, cosigners=cosigners, quorum=quorum
    )
    checkpoint = signed.checkpoint
    verify_inclusion(proof.index, checkpoint.size, leaf_hash, proof.path, checkpoint.root_hash)
    return signed
