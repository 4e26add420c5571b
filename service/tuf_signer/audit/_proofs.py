"""Proofs from the store's Merkle tree, against its signed checkpoints (issue 13, "Proofs").

Every proof is against a checkpoint the store holds, signed by the audit key, so
whoever receives it needs only the log's verifier key to check it:

- ``find_checkpoint``: a stored checkpoint, the newest or one of a given size;
- ``tlog_proof``: a record's inclusion proof (RFC 6962 §2.1.1) as a
  ``c2sp.org/tlog-proof@v1`` text, the checkpoint embedded verbatim;
- ``consistency``: the consistency proof (RFC 6962 §2.1.2) from an earlier tree
  size to a checkpoint, with that checkpoint; ``format_consistency`` writes it
  as ``tuf-signer audit consistency`` prints it (``parse_consistency`` reads it).

Before it hands a proof out, each function checks it against the root the
checkpoint signs (and, given the verifier key, the signature): a store whose
tree no longer matches what the audit key signed gives ``AuditChainError``, not
a proof that fails at the client. Blocking (store reads), no server, no HSM: the
server runs these in its executor and the CLI runs them offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from tuf_signer.audit._checkpoint import (
    MAX_PATH,
    Checkpoint,
    TlogProof,
    note_checkpoint,
    open_checkpoint,
)
from tuf_signer.audit._checkpoints import StoredCheckpoint
from tuf_signer.audit._merkle import (
    HASH_SIZE,
    ProofError,
    TreeRangeError,
    verify_consistency,
    verify_inclusion,
)
from tuf_signer.audit._note import (
    NoteError,
    NoteFormatError,
    VerifierKey,
    b64decode,
    b64encode,
)
from tuf_signer.audit._store import AuditStore
from tuf_signer.errors import AuditChainError, NotFoundError, RequestError, TufSignerError, shown

MAX_SIZE = 2**63 - 1  # a tree size or seq, as tlog-checkpoint and Go's tlog (int64)
# A consistency proof has at most about 2 * log2(n) hashes (RFC 6962 §2.1.2).
MAX_CONSISTENCY_HASHES = 2 * MAX_PATH
_RETRY = "retry after audit.checkpoint_interval_seconds"


class NoCheckpointError(TufSignerError):
    """No stored checkpoint covers what was asked for yet; one will after the next checkpoint."""

    code = "FAILED_PRECONDITION"


class Consistency(NamedTuple):
    """A consistency proof and the checkpoint it leads to.

    Attributes:
        hashes: PROOF(from_size, D[to_size]) (RFC 6962 §2.1.2), 32 bytes each.
        checkpoint: the signed checkpoint note of ``to_size``, with the
            cosignature lines stored with it, verbatim.
    """

    hashes: tuple[bytes, ...]
    checkpoint: bytes


def _size(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{what} must be an integer")
    if not minimum <= value <= MAX_SIZE:
        raise RequestError(f"{what} must be between {minimum} and 2**63-1, got {value}")
    return value


def find_checkpoint(
    store: AuditStore, origin: str, size: int | None = None, *, log_key: VerifierKey | None = None
) -> StoredCheckpoint:
    """The stored checkpoint of tree size ``size``, or the newest, checked against the tree.

    Args:
        store: the audit store.
        origin: the log's origin line (``audit.origin``).
        size: a checkpoint's tree size; None for the newest.
        log_key: the audit key's verifier key; when given, the checkpoint's
            signature is checked too.

    Raises:
        RequestError: ``size`` is not an integer between 0 and 2**63-1.
        TreeRangeError: ``size`` is beyond the log.
        NotFoundError: no checkpoint of ``size`` is stored.
        NoCheckpointError: ``size`` is None and no checkpoint is stored yet.
        AuditChainError: the stored checkpoint does not match the store's tree
            (or does not verify with ``log_key``).
        StoreError: the database failed.
    """
    found = _find(store, origin, size)
    _check_root(store, found, origin, log_key)
    return found


def tlog_proof(
    store: AuditStore,
    origin: str,
    seq: int,
    size: int | None = None,
    *,
    log_key: VerifierKey | None = None,
) -> bytes:
    """The inclusion proof of record ``seq`` as a c2sp.org/tlog-proof@v1 text.

    Leaf ``seq - 1`` of the checkpoint of ``size`` (or of the newest): ``index``,
    its audit path, then the checkpoint note verbatim with its cosignatures.
    ``verify_tlog_proof`` (with ``merkle_inclusion``) checks it, given the
    record's ``audit export`` line and the verifier key.

    Args:
        store: the audit store.
        origin: the log's origin line.
        seq: the record, from 1.
        size: a checkpoint's tree size; None for the newest checkpoint.
        log_key: as for ``find_checkpoint``.

    Raises:
        RequestError: ``seq`` or ``size`` is not an integer in range (seq from 1).
        TreeRangeError: ``seq`` is beyond the log, or not in the tree of ``size``;
            ``size`` is beyond the log.
        NotFoundError: no checkpoint of ``size`` is stored.
        NoCheckpointError: no checkpoint is stored yet, or (``size`` None) the
            newest does not cover ``seq`` yet.
        AuditChainError: the store's tree does not match the checkpoint.
        StoreError: the database failed.
    """
    seq = _size(seq, "seq", 1)
    if size is None:
        found = _newest(store, origin)
        if seq > found.size:
            _beyond_log(store, seq, f"record {seq}")
            raise NoCheckpointError(
                f"record {seq} is not covered by a checkpoint yet "
                f"(the newest covers {found.size}); {_RETRY}"
            )
    else:
        size = _size(size, "tree size", 1)
        if seq > size:
            raise TreeRangeError(f"record {seq} is not in the tree of size {size}")
        found = _find(store, origin, size)
    root = _check_root(store, found, origin, log_key)
    path = store.inclusion_proof(seq, found.size)
    # The leaf's stored hash: the path from it must reach the signed root.
    leaf = next((s.hash for s in store.stored_hashes(seq - 1, seq) if s.node.level == 0), None)
    try:
        if leaf is None:
            raise ProofError(f"the tree hash of record {seq} is missing (deleted?)")
        verify_inclusion(leaf, seq - 1, found.size, path, root.root_hash)
    except ProofError as e:
        raise _mismatch(found, e.reason) from None
    return TlogProof(index=seq - 1, path=path, checkpoint=found.note).format()


def consistency(
    store: AuditStore,
    origin: str,
    from_size: int,
    to_size: int | None = None,
    *,
    log_key: VerifierKey | None = None,
) -> Consistency:
    """The consistency proof from tree size ``from_size`` to a checkpoint, and that checkpoint.

    ``from_size`` need not be a stored checkpoint's size: it is the size of the
    earlier checkpoint the caller holds (or a witness holds).

    Args:
        store: the audit store.
        origin: the log's origin line.
        from_size: the earlier tree size, from 1 (every tree extends the empty one).
        to_size: a checkpoint's tree size; None for the newest checkpoint.
        log_key: as for ``find_checkpoint``.

    Raises:
        RequestError: a size is not an integer in range, or ``from_size > to_size``.
        TreeRangeError: a size is beyond the log.
        NotFoundError: no checkpoint of ``to_size`` is stored.
        NoCheckpointError: no checkpoint is stored yet, or (``to_size`` None) the
            newest is smaller than ``from_size``.
        AuditChainError: the store's tree does not match the checkpoint.
        StoreError: the database failed.
    """
    from_size = _size(from_size, "from size", 1)
    if to_size is None:
        found = _newest(store, origin)
        if from_size > found.size:
            _beyond_log(store, from_size, f"tree size {from_size}")
            raise NoCheckpointError(
                f"tree size {from_size} is not covered by a checkpoint yet "
                f"(the newest is of size {found.size}); {_RETRY}"
            )
    else:
        to_size = _size(to_size, "to size", 1)
        if from_size > to_size:
            raise RequestError(f"from size {from_size} is above to size {to_size}")
        found = _find(store, origin, to_size)
    root = _check_root(store, found, origin, log_key)
    hashes = store.consistency_proof(from_size, found.size)
    try:
        verify_consistency(
            from_size, found.size, hashes, store.tree_hash(from_size), root.root_hash
        )
    except ProofError as e:
        raise _mismatch(found, e.reason) from None
    return Consistency(hashes, found.note)


def format_consistency(proof: Consistency) -> bytes:
    """The text ``tuf-signer audit consistency`` prints.

    One line per proof hash, base64 (the proof lines of c2sp.org/tlog-witness's
    ``add-checkpoint`` body), then an empty line, then the checkpoint note
    verbatim. With no hashes (``from == to``) the text starts with the empty line.
    """
    lines = "".join(b64encode(h) + "\n" for h in proof.hashes)
    return (lines + "\n").encode("ascii") + proof.checkpoint


def parse_consistency(data: bytes) -> Consistency:
    """Read ``format_consistency``'s text strictly; the note is parsed, not verified.

    Raises:
        NoteFormatError: a hash line is not canonical base64 of 32 bytes, there
            are too many, the empty line is missing, or the note is malformed.
    """
    if data.startswith(b"\n"):
        head, note = b"", data[1:]
    else:
        head, separator, note = data.partition(b"\n\n")
        if not separator:
            raise NoteFormatError("consistency proof has no empty line before its checkpoint")
    try:
        lines = head.decode("ascii").split("\n") if head else []
    except UnicodeDecodeError:
        raise NoteFormatError("consistency proof lines are not ASCII") from None
    if len(lines) > MAX_CONSISTENCY_HASHES:
        raise NoteFormatError(f"consistency proof has more than {MAX_CONSISTENCY_HASHES} hashes")
    hashes = tuple(b64decode(line, "consistency proof hash") for line in lines)
    if any(len(h) != HASH_SIZE for h in hashes):
        raise NoteFormatError("consistency proof hash is not 32 bytes")
    note_checkpoint(note)
    return Consistency(hashes, note)


def merkle_inclusion(
    leaf_index: int, tree_size: int, leaf_hash: bytes, path: Sequence[bytes], root_hash: bytes, /
) -> None:
    """The ``InclusionVerifier`` that ``verify_tlog_proof`` takes: RFC 9162 §2.1.3.2.

    Raises:
        ProofError: the path does not lead from the leaf to the root.
    """
    verify_inclusion(leaf_hash, leaf_index, tree_size, path, root_hash)


# --- the stored checkpoints ---------------------------------------------------------------


def _newest(store: AuditStore, origin: str) -> StoredCheckpoint:
    found = store.latest_checkpoint(origin)
    if found is None:
        raise NoCheckpointError(f"the log {shown(origin)} has no checkpoint yet; {_RETRY}")
    return found


def _find(store: AuditStore, origin: str, size: int | None) -> StoredCheckpoint:
    if size is None:
        return _newest(store, origin)
    size = _size(size, "tree size", 0)
    found = store.checkpoint_at(origin, size)
    if found is not None:
        return found
    _beyond_log(store, size, f"tree size {size}")
    newest = store.latest_checkpoint(origin)
    latest = "none is stored yet" if newest is None else f"the newest is of size {newest.size}"
    raise NotFoundError(
        f"no checkpoint of tree size {size} is stored ({latest}; checkpoints are signed "
        "every audit.checkpoint_interval_seconds, not at every size)"
    )


def _beyond_log(store: AuditStore, size: int, what: str) -> None:
    tree = store.tree_size()
    if size > tree:
        raise TreeRangeError(f"{what} is beyond the log's {tree} records")


def _check_root(
    store: AuditStore, found: StoredCheckpoint, origin: str, log_key: VerifierKey | None
) -> Checkpoint:
    """The checkpoint's body, once it names ``origin`` and ``found.size``, its
    signature verifies (with ``log_key``) and its root is the store's tree hash.
    """
    try:
        if log_key is not None:
            parsed = open_checkpoint(found.note, origin=origin, log_key=log_key).checkpoint
        else:
            parsed = note_checkpoint(found.note)
    except NoteError as e:
        raise _mismatch(found, e.reason) from None
    if parsed.origin != origin or parsed.size != found.size:
        raise _mismatch(found, f"it names {shown(parsed.origin)} at size {parsed.size}")
    if store.tree_hash(found.size) != parsed.root_hash:
        raise _mismatch(found, "its root hash is not the store's tree hash (forked or restored?)")
    return parsed


def _mismatch(found: StoredCheckpoint, why: str) -> AuditChainError:
    return AuditChainError(
        f"the stored checkpoint of tree size {found.size} does not match the store: {why}; "
        "run `tuf-signer audit verify`",
        seq=None,
    )


__all__ = [
    "MAX_CONSISTENCY_HASHES",
    "Consistency",
    "NoCheckpointError",
    "consistency",
    "find_checkpoint",
    "format_consistency",
    "merkle_inclusion",
    "parse_consistency",
    "tlog_proof",
]
