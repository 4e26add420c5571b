"""The audit store interface: the record, the role state and the key registry.

One store holds all three so that a signature's record and the role state it
advances are committed in one transaction (docs/design.md §3, step 5).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tuf_signer.audit._checkpoints import StoredCheckpoint
from tuf_signer.audit._merkle import StoredHash
from tuf_signer.errors import TufSignerError
from tuf_signer.model import AuditEvent, KeyRecord, KeyState, KeyVersion, RoleRule, RoleState

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditRecord:
    """An event as chained and stored: ``hash = H(prev_hash, seq, event)``."""

    seq: int
    event: AuditEvent
    prev_hash: str
    hash: str


# --- state changes, applied in the same transaction as their record ----------


@dataclass(frozen=True)
class AdvanceRole:
    """Compare-and-set of a (key, role) high-water mark (P3).

    Applied when there is no state yet, when ``state.version`` is above the
    stored version, or when version and payload digest are equal and the keyid
    differs (the same payload re-signed after a rotation). It also requires the
    key version to still be ACTIVE. ``state.audit_seq`` is filled in by the store.

    Attributes:
        state: the role state the signature sets.
        max_step: the largest step above the stored version allowed (the
            service's ``max_version_step`` for the role's class), so that every
            worker sharing the store applies it inside the transaction; None
            for no bound.
        replay_only: the caller answered an identical retry from its cache and
            holds no new signature: only an exact replay of the stored state
            is allowed. Anything else means its cache was stale (another
            worker's admin reset lowered the mark) and is refused ABORTED:
            the caller re-reads and signs again, under the step bound.
    """

    state: RoleState
    max_step: int | None = None
    replay_only: bool = False
    lists: tuple[tuple[str, int, bool], ...] | None = None
    delegations: str = ""
    delegations_known: bool = False


# AdvanceRole.lists and .delegations (issue 14, P9) are decided in the same
# transaction as the mark: ``lists``, for a snapshot or timestamp of a key that
# declares bins, the (role, version, is a bin) entries it lists of roles the
# key signs (``policy.listing``), held against the key's marks and against what its last
# snapshot or timestamp listed; ``delegations``, for targets metadata other
# than a bin, the digest of its ``delegations``, which may differ from the last
# one this key signed for the role only with an admin's approval
# (``ApproveDelegations``); ``delegations_known``, every keyid they delegate to
# is a version of a key in the registry: only then may a key's first
# delegations for a role go without approval.


@dataclass(frozen=True)
class ApproveDelegations:
    """An admin approves the next ``delegations`` of a targets role (issue 14, item 4).

    The next signature of ``role`` with ``key_name`` may carry delegations
    whose digest (``policy.delegations_digest``) is ``delegations_sha256``
    although they differ from the last ones signed; the approval is used up
    by that signature. Rides on a granted ``approve-delegations`` event.
    """

    key_name: str
    role: str
    delegations_sha256: str


@dataclass(frozen=True)
class SetKeyRules:
    """An admin replaces a key's role rules (issue 14, item 4). Rides on a
    granted ``set-key-rules`` event; the service checks the rules
    (``policy.validate_rules``) before."""

    key_name: str
    rules: tuple[RoleRule, ...]


@dataclass(frozen=True)
class ResetRole:
    """An admin moves a (key, role) high-water mark (issue 10, finding 8).

    ``state.version`` becomes the mark (0: the role is forgotten, the next
    signature may be version 1), with no payload digest, signature or expiry:
    the next signature must be above it. ``state.keyid`` and ``key_version``
    name a version of the key (the one ACTIVE at the reset), which must exist.
    It rides on a granted ``reset-role-state`` event that agrees with
    ``state`` field by field, so that ``verify_store`` can hold the role state
    against that record. ``state.audit_seq`` is filled in by the store.

    ``drop_listings``: for ``snapshot``, also forget the versions the key's
    last snapshot listed (each bin's rollback floor); only when every role of
    the key starts again (``reset-roles``). Otherwise the floors stay.
    """

    state: RoleState
    drop_listings: bool = False


@dataclass(frozen=True)
class CreateKey:
    """Register a new key and its first version."""

    key: KeyRecord
    first: KeyVersion


@dataclass(frozen=True)
class AddVersion:
    """Register a new (PENDING) version of an existing key."""

    version: KeyVersion


@dataclass(frozen=True)
class SetVersionState:
    """Move a key version along PENDING -> ACTIVE -> RETIRED (P6).

    Activating a version retires the key's previous ACTIVE version in the same
    transaction. A RETIRED version never changes again.
    """

    key_name: str
    version: int
    state: KeyState
    at: str


Change = (
    AdvanceRole
    | ResetRole
    | CreateKey
    | AddVersion
    | SetVersionState
    | ApproveDelegations
    | SetKeyRules
)


@dataclass(frozen=True)
class Entry:
    """One event to record, with the state change it carries (if any)."""

    event: AuditEvent
    change: Change | None = None


@dataclass(frozen=True)
class Committed:
    """What the store did with one entry.

    Attributes:
        seq: the sequence number of the record written for it.
        error: None when the change (if any) applied; otherwise the refusal
            itself (e.g. ``RollbackError``, ``StaleKeyVersionError``), and the
            record was written as refused with its status and reason.
        current: for ``AdvanceRole``, the role state after the transaction.
        replayed: the entry repeated the stored state exactly (same version,
            payload and keyid); nothing changed and the record was written as a
            granted replay carrying the stored signature.
    """

    seq: int
    error: TufSignerError | None = None
    current: RoleState | None = None
    replayed: bool = False

    @property
    def status(self) -> str:
        """The gRPC status name of the outcome: "OK", or the refusal's."""
        return "OK" if self.error is None else self.error.code

    @property
    def reason(self) -> str:
        """Why it was refused ("" when OK)."""
        return "" if self.error is None else self.error.reason


class AuditStore(abc.ABC):
    """Durable record + role state + key registry.

    ``append`` is called from one writer thread at a time; the read methods may
    be called from any thread. Every method raises ``StoreError`` when the
    database cannot be used.
    """

    @abc.abstractmethod
    def append(self, entries: Sequence[Entry]) -> list[Committed]:
        """Chain and write ``entries`` and apply their changes in ONE transaction.

        Durable when it returns (group commit: one fsync for the whole batch).
        A change that cannot apply does not fail the batch: its event is
        recorded as refused and its ``Committed.status`` says why.
        """

    @abc.abstractmethod
    def get_key(self, name: str) -> KeyRecord | None: ...

    @abc.abstractmethod
    def list_keys(self) -> list[KeyRecord]: ...

    @abc.abstractmethod
    def list_versions(self, key_name: str) -> list[KeyVersion]: ...

    @abc.abstractmethod
    def get_role_state(self, key_name: str, role: str) -> RoleState | None: ...

    @abc.abstractmethod
    def list_role_states(self, key_name: str | None = None) -> list[RoleState]: ...

    @abc.abstractmethod
    def records(self, start_seq: int = 1) -> Iterator[AuditRecord]:
        """Stored records in ascending ``seq`` order, as stored (unverified)."""

    @abc.abstractmethod
    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last record, ``(0, GENESIS_HASH)`` when empty."""

    @abc.abstractmethod
    def find_records(
        self, payload_sha256: str, limit: int = 100, *, granted_signs_only: bool = False
    ) -> list[AuditRecord]:
        """The records whose payload digest is ``payload_sha256``, oldest first, unverified.

        Where a client finds the record of its signature, and a monitor the
        record of a signature it saw in a repository (issue 13). Granted and
        refused records alike: the caller reads their outcome.

        Args:
            payload_sha256: 64 lowercase hex digits.
            limit: at most this many records (1 to 1000).
            granted_signs_only: only granted ``sign`` records (a monitor's
                question), so that refusals cannot fill the limit.

        Raises:
            RequestError: the digest is not 64 lowercase hex digits, or
                ``limit`` is out of range.
            StoreError: the database failed.
            AuditChainError: a row cannot be read back as a record.
        """

    # --- the Merkle tree over the records (issue 13, P5; RFC 6962 §2.1) ----------
    # Leaf i is record seq = i + 1 as ``audit export`` prints it (``record_leaf``).
    # Each call reads the head, then the stored hashes it needs in one query.

    @abc.abstractmethod
    def tree_size(self) -> int:
        """The number of leaves of the tree: the head's seq (0 when empty).

        Raises:
            StoreError: the database failed.
        """

    @abc.abstractmethod
    def tree_hash(self, size: int | None = None) -> bytes:
        """The Merkle Tree Hash MTH(D[size]) of the first ``size`` records (RFC 6962 §2.1).

        Args:
            size: the tree size; None for the whole log. 0 gives SHA-256 of nothing.

        Raises:
            RequestError: ``size`` is not an integer in [0, 2**64-1].
            TreeRangeError: ``size`` is beyond the log.
            StoreError: the database failed or a stored hash is missing.
        """

    @abc.abstractmethod
    def inclusion_proof(self, seq: int, size: int | None = None) -> tuple[bytes, ...]:
        """The audit path of record ``seq`` (leaf ``seq - 1``) in the tree of ``size``.

        RFC 6962 §2.1.1; ``_merkle.verify_inclusion`` checks it against
        ``tree_hash(size)``.

        Args:
            seq: the record.
            size: the tree size; None for the whole log.

        Raises:
            RequestError: ``seq`` or ``size`` is not an integer in range.
            TreeRangeError: ``seq`` is not in the tree of ``size`` (below 1,
                above ``size``), or ``size`` is beyond the log.
            StoreError: the database failed or a stored hash is missing.
        """

    @abc.abstractmethod
    def consistency_proof(self, old_size: int, new_size: int | None = None) -> tuple[bytes, ...]:
        """The consistency proof from tree size ``old_size`` to ``new_size`` (RFC 6962 §2.1.2).

        Empty when ``old_size`` is 0 or ``new_size`` (c2sp.org/tlog-witness).

        Args:
            old_size: the smaller tree.
            new_size: the larger tree; None for the whole log.

        Raises:
            RequestError: a size is not an integer in range, or ``old_size > new_size``.
            TreeRangeError: ``new_size`` is beyond the log.
            StoreError: the database failed or a stored hash is missing.
        """

    @abc.abstractmethod
    def stored_hashes(self, start: int, end: int | None = None) -> list[StoredHash]:
        """The subtree hashes stored by the appends of leaves ``start .. end - 1``.

        As stored, unverified, sorted by (level, index); ``end`` None: up to the
        last. ``verify_store`` holds them against the records.

        Raises:
            StoreError: the database failed or holds an unreadable hash.
        """

    # --- signed checkpoints and cosignatures (issue 13; see ``_checkpoints``) ----
    # Stored as received, unverified: readers verify them with the keys they trust.

    @abc.abstractmethod
    def add_checkpoint(self, origin: str, size: int, note: bytes, created_at: str) -> None:
        """Keep a checkpoint note signed by the audit key; one of the same size is ignored."""

    @abc.abstractmethod
    def add_cosignatures(
        self, origin: str, size: int, lines: Sequence[tuple[str, str]], received_at: str
    ) -> None:
        """Keep cosignature lines ``(witness key name, line)`` for a stored checkpoint."""

    @abc.abstractmethod
    def latest_checkpoint(self, origin: str) -> StoredCheckpoint | None:
        """The newest stored checkpoint of ``origin``, with its cosignatures."""

    @abc.abstractmethod
    def checkpoint_at(self, origin: str, size: int) -> StoredCheckpoint | None:
        """The stored checkpoint of ``origin`` at ``size``, with its cosignatures."""

    @abc.abstractmethod
    def latest_witnessed(self, origin: str, quorum: int = 1) -> StoredCheckpoint | None:
        """The newest checkpoint of ``origin`` with at least ``quorum`` cosignatures."""

    @abc.abstractmethod
    def probe(self, timeout: float = 5.0) -> None:
        """Check that an append could commit now, without adding a record.

        Takes the writers' lock on the same path as ``append``, writes and
        commits, so that a full disk, a read-only file or another session
        holding the lock fails here as it fails a Sign (issue 12, finding 3).
        The write changes nothing the record, the role states or the key
        registry hold, so ``audit verify`` sees no difference.

        Args:
            timeout: seconds the probe may wait for the writers' lock; a lock
                held longer is a failure, not a hang.

        Raises:
            StoreError: the lock was not free within ``timeout``, or the
                write or its commit failed.
        """

    @abc.abstractmethod
    def close(self) -> None: ...
