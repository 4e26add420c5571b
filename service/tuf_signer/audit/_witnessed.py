"""Holding a store against signed checkpoints: what a host compromise cannot fake (issue 13, P5).

``verify_store`` proves that a store agrees with itself. An attacker on the
signer host can make a store that does: restore an old backup (role marks and
all), cut the tail, or rebuild the chain and the tree after an edit. What they
cannot make is a store that agrees with a checkpoint that left the host
before: a file an auditor kept, a witness's latest cosigned checkpoint
(c2sp.org/tlog-witness), or one the store itself holds with enough witness
cosignatures. ``verify_log`` holds the store against each of them:

- the checkpoint must verify: the log's key (``name+id+base64(0x01 || key)``,
  c2sp.org/signed-note) signed it for the log's origin, and at least
  ``quorum`` of the given witness keys cosigned it (c2sp.org/tlog-cosignature);
- the store must hold at least as many records as it covers (else it is an
  older copy, or records were removed);
- the Merkle root (RFC 6962 §2.1) recomputed from the records at its size
  must be its root (else the store forked, or records were edited).

Two ways to run:

- **full** (the default): ``verify_store`` re-hashes every record, checks the
  chain, the role states and the stored tree, and recomputes the root at each
  checkpoint's size on the way;
- **incremental** (``since``): from a trusted checkpoint of size ``m`` it reads
  only records ``m + 1 .. n``, without stopping a live store. Nothing the
  store says about the first ``m`` records is taken on trust: the stored
  frontier of size ``m`` (one hash per set bit of ``m``) must fold to the
  trusted root, record ``m`` (whose hash the chain links to) must be proven
  included in it, and the new leaves are hashed from the records and appended
  to that frontier, so every root after ``m`` is computed here. The stored
  hashes of the new leaves are held against them, the newest stored
  checkpoint's root against the computed one, and the store's consistency
  proof from ``m`` is verified (RFC 9162 §2.1.4.2). Role states are not read
  (a live re-sign keeps changing them; the full run checks them), and P3 is
  checked within the new records only.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from tuf_signer.audit._checkpoint import Checkpoint, open_checkpoint
from tuf_signer.audit._checkpoints import StoredCheckpoint
from tuf_signer.audit._merkle import (
    EMPTY_ROOT,
    ProofError,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from tuf_signer.audit._note import (
    COSIGNATURE_V1,
    ED25519,
    NoteError,
    VerifierKey,
    b64encode,
)
from tuf_signer.audit._store import GENESIS_HASH, AuditStore
from tuf_signer.audit._tree import Frontier, frontier_nodes, record_leaf
from tuf_signer.audit._verify import (
    RootedTreeCheck,
    VerifyReport,
    checked_records,
    verify_store,
)
from tuf_signer.errors import AuditChainError, RequestError, shown


class CheckpointError(AuditChainError):
    """The store fails against a checkpoint, or the checkpoint itself fails.

    Attributes:
        source: the checkpoint, as the messages name it (``checkpoint FILE``,
            ``witness NAME``, ``the store's newest checkpoint``).
        kind: which verdict (class constant): ``untrusted``, ``behind``, ``forked``.
    """

    kind: ClassVar[str] = "checkpoint"

    def __init__(self, reason: str, source: str) -> None:
        super().__init__(reason, seq=None)
        self.source = source


class UntrustedCheckpointError(CheckpointError):
    """The checkpoint does not verify: bad signature, another origin, too few cosignatures."""

    kind = "untrusted"


class StoreBehindError(CheckpointError):
    """The store holds fewer records than the checkpoint covers: an older copy, or a cut."""

    kind = "behind"


class StoreForkError(CheckpointError):
    """The store's tree at the checkpoint's size has another root: forked or edited."""

    kind = "forked"


class UnwitnessedError(CheckpointError):
    """A witness quorum was required, and no checkpoint in the store meets it."""

    kind = "unwitnessed"


@dataclass(frozen=True)
class LogKeys:
    """The keys an auditor trusts: the log's and, optionally, its witnesses'.

    Attributes:
        log_key: the audit key's verifier key (type 0x01); its name is the origin.
        witnesses: witnesses' cosignature/v1 verifier keys (type 0x04).
        quorum: how many distinct witnesses must have cosigned a checkpoint
            from outside the store (0 to ``len(witnesses)``).
    """

    log_key: VerifierKey
    witnesses: tuple[VerifierKey, ...] = ()
    quorum: int = 0

    def __post_init__(self) -> None:
        if self.log_key.sig_type != ED25519:
            raise RequestError("the log's verifier key is not an Ed25519 (0x01) key")
        for key in self.witnesses:
            if key.sig_type != COSIGNATURE_V1:
                raise RequestError(
                    f"witness key {shown(key.name)} is not a cosignature/v1 (0x04) key"
                )
        if len(set(self.witnesses)) != len(self.witnesses):
            raise RequestError("a witness key is given twice")
        if not 0 <= self.quorum <= len(self.witnesses):
            raise RequestError(
                f"quorum {self.quorum} is not between 0 and the {len(self.witnesses)} witness keys"
            )

    @property
    def origin(self) -> str:
        """The log's origin line: the log key's name (tlog-checkpoint "Signatures")."""
        return self.log_key.name


@dataclass(frozen=True)
class Anchor:
    """A checkpoint from outside the store, to hold the store against.

    Attributes:
        source: how messages name it, e.g. ``checkpoint cp.txt`` or ``witness w1``.
        note: the signed checkpoint note as received, cosignatures included.
        witness: for a witness's own latest checkpoint: that witness's key,
            whose cosignature it must carry (instead of ``LogKeys.quorum``).
    """

    source: str
    note: bytes
    witness: VerifierKey | None = None


@dataclass(frozen=True)
class CheckedCheckpoint:
    """A checkpoint that verified and that the store was held against.

    Attributes:
        source: as in ``Anchor``.
        size: its tree size.
        root_hash: its root hash.
        cosigners: names of the witnesses whose cosignatures verified.
    """

    source: str
    size: int
    root_hash: bytes
    cosigners: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogReport:
    """What ``verify_log`` checked.

    Attributes:
        tree_size: the records verified, 1 to ``tree_size``.
        root_hash: MTH of those records, recomputed from them.
        new_records: the records this run read and re-hashed (all of them
            in a full run; those after ``since`` in an incremental one).
        store: the full run's ``verify_store`` report (None when incremental).
        since: the trusted checkpoint an incremental run started from.
        checkpoints: every other checkpoint the store was held against.
        notes: what was not checked, in words for the auditor.
    """

    tree_size: int
    root_hash: bytes
    new_records: int
    store: VerifyReport | None = None
    since: CheckedCheckpoint | None = None
    checkpoints: tuple[CheckedCheckpoint, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def checkpoints_checked(self) -> bool:
        """Whether any signed checkpoint backed this run."""
        return self.since is not None or bool(self.checkpoints)


NEWEST = "the store's newest checkpoint"
NEWEST_WITNESSED = "the store's newest witnessed checkpoint"


def verify_log(
    store: AuditStore,
    keys: LogKeys | None = None,
    *,
    anchors: Sequence[Anchor] = (),
    since: Anchor | None = None,
    require_witnessed: bool = False,
) -> LogReport:
    """Verify the store, and hold it against signed checkpoints (see the module docstring).

    Without ``keys`` this is ``verify_store`` and nothing more (and ``notes``
    says that no checkpoint was checked). With them, the store's newest
    checkpoint must verify with the log key (and any cosignature by a given
    witness key with it) and match the records; when ``keys.quorum`` is above
    0, so must the store's newest checkpoint with that many valid witness
    cosignatures (``notes`` says so when there is none). Each anchor must
    verify (the log key, and the quorum or its witness's cosignature) and the
    store must be a consistent extension of it.

    Args:
        store: the store to check; it may be serving (appends may run).
        keys: the verifier keys; required with ``anchors`` or ``since``.
        anchors: checkpoints from outside the store.
        since: a trusted checkpoint: verify only the records added after it.
        require_witnessed: the auditor asked for ``keys.quorum`` (``--quorum``,
            ``--witness-vkey``): a store with no checkpoint that meets it
            fails instead of getting a note.

    Returns:
        What was checked.

    Raises:
        RequestError: ``anchors`` or ``since`` without ``keys``.
        UntrustedCheckpointError: a checkpoint does not verify (names it and why).
        StoreBehindError: the store holds fewer records than a checkpoint covers.
        StoreForkError: the store's root at a checkpoint's size is another.
        UnwitnessedError: ``require_witnessed`` and ``keys.quorum`` above 0, and
            no stored checkpoint carries that many valid witness cosignatures.
        AuditChainError: a record, role state or stored hash does not verify.
        StoreError: the store cannot be read.
    """
    if keys is None:
        if anchors or since is not None:
            raise RequestError("checking checkpoints needs the log's verifier key")
        report = verify_store(store)
        return LogReport(
            tree_size=report.head_seq,
            root_hash=report.root_hash,
            new_records=report.records,
            store=report,
            notes=("checkpoints were NOT checked: no verifier key of the log was given",),
        )
    opened = [_open(a, keys) for a in anchors]
    trusted = _open(since, keys) if since is not None else None
    # Read before the records: every checkpoint covers records committed before it.
    stored, notes = _stored(store, keys)
    if require_witnessed and keys.quorum and not any(c.source == NEWEST_WITNESSED for c in stored):
        raise UnwitnessedError(
            f"{notes[0] if notes else 'no witnessed checkpoint'}; a quorum of {keys.quorum} "
            f"was asked for (witnesses {', '.join(shown(k.name) for k in keys.witnesses)})",
            NEWEST_WITNESSED,
        )
    if trusted is None:
        report = verify_store(store, roots_at={c.size for c in (*stored, *opened)})
        for c in (*stored, *opened):
            _hold(c, report.head_seq, report.roots)
        return LogReport(
            tree_size=report.head_seq,
            root_hash=report.root_hash,
            new_records=report.records,
            store=report,
            checkpoints=(*stored, *opened),
            notes=notes,
        )
    return _incremental(store, trusted, (*stored, *opened), notes)


# --- checkpoints --------------------------------------------------------------------------


def _open(anchor: Anchor, keys: LogKeys) -> CheckedCheckpoint:
    """Verify an anchor's note; raise ``UntrustedCheckpointError`` naming it."""
    cosigners = list(keys.witnesses)
    if anchor.witness is not None and anchor.witness not in cosigners:
        cosigners.append(anchor.witness)
    quorum = 0 if anchor.witness is not None else keys.quorum
    try:
        signed = open_checkpoint(
            anchor.note,
            origin=keys.origin,
            log_key=keys.log_key,
            cosigners=cosigners,
            quorum=quorum,
        )
    except NoteError as e:
        raise UntrustedCheckpointError(f"{anchor.source}: {e.reason}", anchor.source) from None
    names = tuple(sorted({v.key.name for v in signed.cosignatures}))
    if anchor.witness is not None and anchor.witness not in {v.key for v in signed.cosignatures}:
        raise UntrustedCheckpointError(
            f"{anchor.source}: no valid cosignature by {anchor.witness.text()}", anchor.source
        )
    return _checked(anchor.source, signed.checkpoint, names)


def _checked(source: str, checkpoint: Checkpoint, cosigners: tuple[str, ...]) -> CheckedCheckpoint:
    return CheckedCheckpoint(source, checkpoint.size, checkpoint.root_hash, cosigners)


def _stored(
    store: AuditStore, keys: LogKeys
) -> tuple[tuple[CheckedCheckpoint, ...], tuple[str, ...]]:
    """The store's newest checkpoint, and its newest witnessed one, verified; notes on gaps.

    Cosignatures by keys not given are ignored (signed-note "Signatures"): a
    stored checkpoint short of the quorum is a note, not a failure. A known
    key's signature that fails is a failure.
    """
    newest = store.latest_checkpoint(keys.origin)
    if newest is None:
        return (), (f"the store holds no checkpoint of {shown(keys.origin)}",)
    found = [_open_stored(newest, NEWEST, keys)]
    if not keys.quorum:
        return tuple(found), ()
    if len(found[0].cosigners) >= keys.quorum:  # the newest is witnessed: one check
        return (dataclasses.replace(found[0], source=NEWEST_WITNESSED),), ()
    short = f"no checkpoint in the store is cosigned by {keys.quorum} of the given witnesses"
    witnessed = store.latest_witnessed(keys.origin, keys.quorum)
    if witnessed is None:
        return tuple(found), (short,)
    checked = _open_stored(witnessed, NEWEST_WITNESSED, keys)
    if len(checked.cosigners) < keys.quorum:
        mine = len(checked.cosigners)
        return tuple(found), (
            f"{short} (the newest with {keys.quorum} cosignatures, of size {checked.size}, "
            f"has {mine} by them)",
        )
    return (*found, checked), ()


def _open_stored(stored: StoredCheckpoint, source: str, keys: LogKeys) -> CheckedCheckpoint:
    try:
        signed = open_checkpoint(
            stored.note, origin=keys.origin, log_key=keys.log_key, cosigners=keys.witnesses
        )
    except NoteError as e:
        raise UntrustedCheckpointError(
            f"{source} (size {stored.size}): {e.reason}", source
        ) from None
    if signed.checkpoint.size != stored.size:
        raise UntrustedCheckpointError(
            f"{source}: stored as size {stored.size}, its note is of size "
            f"{signed.checkpoint.size} (row edited?)",
            source,
        )
    names = tuple(sorted({v.key.name for v in signed.cosignatures}))
    return _checked(source, signed.checkpoint, names)


def _behind(held: int, checkpoint: CheckedCheckpoint) -> StoreBehindError:
    return StoreBehindError(
        f"the store holds {held} records but {checkpoint.source} covers {checkpoint.size}: "
        "it is an older copy, or records were removed",
        checkpoint.source,
    )


def _forked(checkpoint: CheckedCheckpoint, root: bytes) -> StoreForkError:
    return StoreForkError(
        f"the store's tree at size {checkpoint.size} does not match {checkpoint.source}: "
        "the store forked or records were edited (its root is "
        f"{b64encode(root)}, the checkpoint's {b64encode(checkpoint.root_hash)})",
        checkpoint.source,
    )


def _hold(checkpoint: CheckedCheckpoint, held: int, roots: Mapping[int, bytes]) -> None:
    """Raise unless the store reaches the checkpoint's size with the checkpoint's root."""
    if checkpoint.size > held:
        raise _behind(held, checkpoint)
    root = roots[checkpoint.size]
    if root != checkpoint.root_hash:
        raise _forked(checkpoint, root)


# --- incremental --------------------------------------------------------------------------


def _incremental(
    store: AuditStore,
    trusted: CheckedCheckpoint,
    others: Iterable[CheckedCheckpoint],
    notes: tuple[str, ...],
) -> LogReport:
    others = tuple(others)
    start = trusted.size
    end = store.tree_size()  # the head now: the run stops there, appends may go on
    if end < start:
        raise _behind(end, trusted)
    frontier = _proven_frontier(store, trusted)
    prev_hash = _proven_hash_of_last(store, trusted)
    tree = RootedTreeCheck(
        store, frontier, roots_at={c.size for c in others if start <= c.size <= end}
    )
    count = 0
    # Pages are read as needed and no transaction stays open: leaving early is harmless.
    upto = itertools.takewhile(lambda r: r.seq <= end, store.records(start + 1))
    for record in checked_records(upto, start=start + 1, prev_hash=prev_hash):
        tree.add(record)
        count += 1
    if tree.size < end:
        raise AuditChainError(
            f"the log ends at record {tree.size} but its head was record {end} (truncated?)",
            seq=tree.size + 1,
        )
    tree.finish()
    roots = tree.roots
    for c in others:
        if c.size > end:
            raise _behind(end, c)
        if c.size >= start:
            _hold(c, end, roots)
            _consistent(store, trusted, c)
        else:
            _consistent(store, c, trusted)
    return LogReport(
        tree_size=end,
        root_hash=tree.root(),
        new_records=count,
        since=trusted,
        checkpoints=others,
        notes=(*notes, "role states were not checked (a full run checks them)"),
    )


def _proven_frontier(store: AuditStore, trusted: CheckedCheckpoint) -> Frontier:
    """The stored frontier of the trusted tree, once it folds to the trusted root.

    Each node ``Node(level, j)`` was stored by the append of leaf
    ``(j + 1) * 2**level - 1``: one read per set bit of the size.
    """
    nodes = frontier_nodes(trusted.size)
    hashes = {}
    for node in nodes:
        leaf = ((node.index + 1) << node.level) - 1
        stored = {s.node: s.hash for s in store.stored_hashes(leaf, leaf + 1)}
        if node not in stored:
            raise StoreForkError(
                f"the store has no tree hash at level {node.level}, index {node.index}, "
                f"which the tree of {trusted.source} (size {trusted.size}) needs "
                "(deleted?)",
                trusted.source,
            )
        hashes[node] = stored[node]
    root = EMPTY_ROOT if not nodes else hashes[nodes[-1]]
    for node in reversed(nodes[:-1]):
        root = node_hash(hashes[node], root)
    if root != trusted.root_hash:
        raise _forked(trusted, root)
    return Frontier(trusted.size, hashes)


def _proven_hash_of_last(store: AuditStore, trusted: CheckedCheckpoint) -> str:
    """The hash of the trusted tree's last record (the chain's link), once proven in it."""
    size = trusted.size
    if size == 0:
        return GENESIS_HASH
    record = next(store.records(size), None)
    if record is None or record.seq != size:
        raise AuditChainError(f"record {size} is missing (deleted?)", seq=size)
    try:
        verify_inclusion(
            leaf_hash(record_leaf(record)),
            size - 1,
            size,
            store.inclusion_proof(size, size),
            trusted.root_hash,
        )
    except ProofError:
        raise StoreForkError(
            f"record {size} is not the last leaf of {trusted.source}: "
            "the store forked or records were edited",
            trusted.source,
        ) from None
    return record.hash


def _consistent(store: AuditStore, old: CheckedCheckpoint, new: CheckedCheckpoint) -> None:
    """Verify the store's consistency proof from ``old`` to ``new`` (RFC 9162 §2.1.4.2)."""
    try:
        proof = store.consistency_proof(old.size, new.size)
        verify_consistency(old.size, new.size, proof, old.root_hash, new.root_hash)
    except ProofError as e:
        raise StoreForkError(
            f"{old.source} (size {old.size}) and {new.source} (size {new.size}) are not "
            f"consistent by the store's proof ({e.reason}): the log forked between them, "
            "or the store's tree was edited",
            new.source,
        ) from None
