"""Offline verification of the audit record (P5).

``verify_records`` needs nothing but the records (an export will do): it checks
the hash chain described in ``_chain``. ``verify_store`` also holds the role
state, the thing that stops rollback and equivocation, against the records that
set it, and the stored Merkle tree against the tree it rebuilds from the records
(``RootedTreeCheck``, which also hands back the roots at the sizes asked for).
Both raise ``AuditChainError`` naming the first bad record; neither returns a
boolean to forget. Holding a store against signed checkpoints, which is what a
host compromise cannot fake, is ``_witnessed``'s job.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from tuf_signer.audit._chain import (
    is_granted_reset,
    is_granted_sign,
    record_hash,
    sets_role_state,
    state_differences,
)
from tuf_signer.audit._merkle import EMPTY_ROOT, tree_hash
from tuf_signer.audit._store import GENESIS_HASH, AuditRecord, AuditStore
from tuf_signer.audit._tree import Frontier, TreeCheck
from tuf_signer.errors import AuditChainError, StoreError

# How often verify_store re-reads when appends keep landing between its reads.
_SNAPSHOT_TRIES = 20


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_store`` checked.

    Attributes:
        records: how many records were verified.
        head_seq: seq of the last verified record (0 for an empty log).
        head_hash: hash of the last verified record (``GENESIS_HASH`` when empty).
        role_states: how many role states were checked against their records.
        root_hash: MTH of the ``head_seq`` records, recomputed from them (RFC 6962 §2.1).
        roots: the recomputed MTH at each size asked for (``roots_at``) up to ``head_seq``.
    """

    records: int
    head_seq: int
    head_hash: str
    role_states: int
    root_hash: bytes = EMPTY_ROOT
    roots: Mapping[int, bytes] = field(default_factory=lambda: MappingProxyType({}))


class RootedTreeCheck(TreeCheck):
    """``TreeCheck`` that may start from a proven frontier, and keeps the roots asked for.

    The roots are computed from the leaves this check hashed itself (and the
    frontier it started from), never read from the store: a checkpoint is held
    against what the records say, not against what the store's hashes say.
    """

    def __init__(
        self, store: AuditStore, start: Frontier | None = None, roots_at: Collection[int] = ()
    ) -> None:
        super().__init__(store)
        if start is not None:  # taken over: the caller no longer appends to it
            self._tree = start
            self._start = start.size
        self._wanted = frozenset(roots_at)
        self._roots: dict[int, bytes] = {}
        self._keep()

    @property
    def size(self) -> int:
        """The number of leaves so far."""
        return self._tree.size

    def root(self) -> bytes:
        """MTH of the leaves so far (RFC 6962 §2.1), folded from the frontier."""
        return tree_hash(self._tree.size, self._tree)

    @property
    def roots(self) -> Mapping[int, bytes]:
        """The root at each size asked for that the check has passed."""
        return MappingProxyType(dict(self._roots))

    def add(self, record: AuditRecord) -> None:
        """Add the next record as the next leaf (see ``TreeCheck.add``).

        Raises:
            AuditChainError: a stored hash of the chunk just completed is wrong.
            StoreError: the store cannot be read.
        """
        super().add(record)
        self._keep()

    def _keep(self) -> None:
        if self._tree.size in self._wanted:
            self._roots[self._tree.size] = self.root()


def checked_records(
    records: Iterable[AuditRecord], *, start: int = 1, prev_hash: str = GENESIS_HASH
) -> Iterator[AuditRecord]:
    """Yield each record once it has passed the chain checks; raise at the first break.

    ``records`` must start at record ``start``, whose ``prev_hash`` must be
    ``prev_hash`` (the hash of record ``start - 1``). The P3 checks see only
    the records yielded here: a run that starts after record 1 checks P3
    within the records it reads.
    """
    expected = start
    # The last record that set each role's state: a granted signature or an admin reset.
    granted: dict[tuple[str, str], AuditRecord] = {}
    for r in records:
        if r.seq != expected:
            if r.seq > expected:
                missing = (
                    f"record {expected}"
                    if r.seq == expected + 1
                    else f"records {expected}..{r.seq - 1}"
                )
                after = f"follows record {expected - 1}" if expected > 1 else "is the first record"
                raise AuditChainError(
                    f"record {r.seq} {after}: {missing} missing (deleted?)", seq=expected
                )
            raise AuditChainError(
                f"record {r.seq} follows record {expected - 1}: records out of order "
                "(duplicated or reordered?)",
                seq=r.seq,
            )
        if r.prev_hash != prev_hash:
            raise AuditChainError(
                f"record {r.seq}: previous-hash link broken (record deleted or reordered?)",
                seq=r.seq,
            )
        try:
            digest = record_hash(r.prev_hash, r.seq, r.event)
        except ValueError as e:
            raise AuditChainError(f"record {r.seq}: cannot be serialised ({e})", seq=r.seq) from e
        if digest != r.hash:
            raise AuditChainError(
                f"record {r.seq}: hash does not match its contents (edited?)", seq=r.seq
            )
        if sets_role_state(r.event):
            which = (r.event.key_name, r.event.role)
            if is_granted_sign(r.event):
                _check_p3(granted.get(which), r)
            granted[which] = r
        prev_hash = r.hash
        expected += 1
        yield r


def verify_records(records: Iterable[AuditRecord]) -> int:
    """Check the hash chain of ``records``, which must start at record 1.

    Checks, record by record: ``seq`` is 1, 2, 3, ... without gaps; each
    ``prev_hash`` is the previous record's ``hash`` (``GENESIS_HASH`` for record
    1); each ``hash`` recomputes from the record's contents (``record_hash``).
    And the granted signatures keep P3: per (key, role), versions never go down
    and one version never has two payloads, which catches a forger who rebuilt
    the chain from some record on. An admin reset (a granted
    ``reset-role-state`` record) moves the mark to its version, up or down: the
    next signature of that role must be above it.

    Dropping records from the end cannot be seen from the records alone (see
    ``verify_store``).

    Args:
        records: the records in the order stored, e.g. ``store.records()``.

    Returns:
        The number of records verified.

    Raises:
        AuditChainError: at the first broken record; ``seq`` names it (for
            missing records, the first missing one).
    """
    return sum(1 for _ in checked_records(records))


def _check_p3(prior: AuditRecord | None, r: AuditRecord) -> None:
    """Raise unless granted signature ``r`` keeps P3 after ``prior``, the last one of its role.

    The store grants a signature only above the high-water mark, or for the
    same payload again, so on an intact record the versions of one (key, role)
    never go down and one version never has two payloads. ``prior`` may be an
    admin reset: then ``r`` must be above the version it set.
    """
    if prior is None:
        return
    e, p = r.event, prior.event
    where = f"role {e.role!r} with key {e.key_name!r}"
    if is_granted_reset(p):
        if e.metadata_version <= p.metadata_version:
            raise AuditChainError(
                f"record {r.seq}: rollback on record: version {e.metadata_version} of {where} "
                f"was granted after an admin reset to version {p.metadata_version} "
                f"(record {prior.seq})",
                seq=r.seq,
            )
        return
    if e.metadata_version < p.metadata_version:
        raise AuditChainError(
            f"record {r.seq}: rollback on record: version {e.metadata_version} of {where} "
            f"was granted after version {p.metadata_version} (record {prior.seq})",
            seq=r.seq,
        )
    if e.metadata_version == p.metadata_version and e.payload_sha256 != p.payload_sha256:
        raise AuditChainError(
            f"record {r.seq}: equivocation on record: version {e.metadata_version} of {where} "
            f"was granted for another payload in record {prior.seq}",
            seq=r.seq,
        )


def verify_store(store: AuditStore, *, roots_at: Collection[int] = ()) -> VerifyReport:
    """Verify a store's chain, then its role state against the records.

    After the checks of ``verify_records``, every role state must point
    (``audit_seq``) at a record that exists and is a granted signature (or a
    granted admin reset, ``reset-role-state``) of the same key, role, metadata
    version, payload digest, keyid, key version, signature and expiry; it must
    also match the *last* such record of its (key, role) in the log, and every
    (key, role) that the log shows signed or reset must have a role state. This
    catches a truncated tail whose last record set a role state, and any edit,
    deletion or rollback of role state. It cannot catch the removal of trailing
    records that set no role state.

    It also rebuilds the Merkle tree from the records (leaf: ``record_leaf``)
    and holds every stored tree hash against it (``_tree.TreeCheck``): an
    edited, missing or extra hash is named by its level and index.

    Appends may run meanwhile: role states are read together with the head,
    and only records up to that head are held against them.

    Args:
        store: the store to check.
        roots_at: tree sizes whose root to recompute on the way (``roots``),
            e.g. those of checkpoints to hold the store against.

    Returns:
        What was checked.

    Raises:
        AuditChainError: a record or role state does not verify; the message
            names it and ``seq`` is the record concerned.
        StoreError: the store cannot be read, or kept changing too fast to
            take a consistent view of its role state.
    """
    for _ in range(_SNAPSHOT_TRIES):
        head = store.head()
        states = store.list_role_states()
        if store.head() == head:
            break
    else:
        raise StoreError("the audit store kept changing; could not read its role state")
    head_seq = head[0]

    wanted = {s.audit_seq for s in states}
    by_seq: dict[int, AuditRecord] = {}
    last_sign: dict[tuple[str, str], AuditRecord] = {}  # the same, up to the head read
    count = 0
    last: AuditRecord | None = None
    tree = RootedTreeCheck(store, roots_at=roots_at)
    for r in checked_records(store.records()):
        count += 1
        last = r
        tree.add(r)
        if not sets_role_state(r.event):
            if r.seq <= head_seq and r.seq in wanted:
                by_seq[r.seq] = r
            continue
        which = (r.event.key_name, r.event.role)
        if r.seq <= head_seq:  # later ones were appended after the role state was read
            last_sign[which] = r
            if r.seq in wanted:
                by_seq[r.seq] = r

    end = last.seq if last is not None else 0
    if end < head_seq:
        raise AuditChainError(
            f"the log ends at record {end} but its head was record {head_seq} (truncated?)",
            seq=end + 1,
        )

    for s in states:
        name = f"role {s.role!r} of key {s.key_name!r}"
        rec = by_seq.get(s.audit_seq)
        if rec is None:
            raise AuditChainError(
                f"{name}: its record {s.audit_seq} is missing (log truncated?)", seq=s.audit_seq
            )
        if not sets_role_state(rec.event):
            raise AuditChainError(
                f"{name}: its record {rec.seq} is not a granted signature or admin reset "
                "(role state edited?)",
                seq=rec.seq,
            )
        diff = state_differences(s, rec.event)
        if diff:
            raise AuditChainError(
                f"{name} does not match its record {rec.seq}: {', '.join(diff)} differ "
                "(role state edited?)",
                seq=rec.seq,
            )
        latest = last_sign[(s.key_name, s.role)]
        if state_differences(s, latest.event):
            raise AuditChainError(
                f"{name} (version {s.version}) is not the last signature of that role, "
                f"record {latest.seq} (version {latest.event.metadata_version}); "
                "role state rolled back?",
                seq=latest.seq,
            )

    have = {(s.key_name, s.role) for s in states}
    for (key_name, role), r in sorted(last_sign.items(), key=lambda kv: kv[1].seq):
        if (key_name, role) not in have:
            did = "reset the mark to" if is_granted_reset(r.event) else "signed"
            raise AuditChainError(
                f"role {role!r} of key {key_name!r}: record {r.seq} {did} version "
                f"{r.event.metadata_version} but there is no role state (role state deleted?)",
                seq=r.seq,
            )

    tree.finish()
    return VerifyReport(
        records=count,
        head_seq=end,
        head_hash=last.hash if last is not None else GENESIS_HASH,
        role_states=len(states),
        root_hash=tree.root(),
        roots=tree.roots,
    )
