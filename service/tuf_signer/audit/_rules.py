"""The rules of each state change: what it comes to, given the stored rows.

Every function here is pure. The store reads what a change depends on (the
role state, the key version, whether the key exists) inside its write
transaction, asks the rule, and writes what the ``Decision`` says; nothing here
touches the database, so each rule can be checked from values alone.

The rules (docs/design.md P3, P6):

- ``AdvanceRole``: the key version must exist, be ACTIVE and have the state's
  keyid, else FAILED_PRECONDITION. Then ``advance_decision``, the rule the
  service also applies before signing: no state or a higher version applies;
  the same version, digest and keyid is a replay; the same version and digest
  with another keyid applies (re-signed after a rotation); a version more than
  ``max_step`` above the stored one, and anything else, is FAILED_PRECONDITION
  (version step, rollback or equivocation).
- No change on a granted ``sign`` event: decided as ``AdvanceRole`` of the
  state the event describes, with ``replay_only`` (``change_of``), so that no
  granted signature reaches the record without the high-water check. A caller
  that answers a retry from its cache gets a replay; if its cache was stale, a
  refusal (FAILED_PRECONDITION below the stored mark, ABORTED above it: a reset
  elsewhere lowered the mark).
- ``ResetRole``: NOT_FOUND unless the key version it names exists,
  FAILED_PRECONDITION if the keyid is not that version's; else the role state
  becomes the reset mark, whatever it was.
- No change on any other event: the event is recorded as it is.
- ``CreateKey``: ALREADY_EXISTS when the name is taken.
- ``AddVersion``: NOT_FOUND without the key, ALREADY_EXISTS when the version
  number is taken.
- ``SetVersionState``: NOT_FOUND without the version; only PENDING -> ACTIVE
  (retiring the key's other ACTIVE version), PENDING -> RETIRED and
  ACTIVE -> RETIRED, else FAILED_PRECONDITION.

The high-water rule (``advance_decision``): TUF clients refuse metadata whose
version is lower than the one they trust (TUF spec §5.3-5.6, rollback attacks),
and two different payloads with one version would let a compromised repository
show different clients different views (equivocation). It also bounds how far
one signature may move the mark (``max_step``): TUF versions only grow, so a
compromised backend that got version 2**63 - 1 signed would leave the role
unsignable with this key for good (finding 8 of issue 10). An admin reset
(``ResetRole``) moves the mark on purpose, on the record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from tuf_signer.audit._chain import (
    RESET,
    SIGN,
    event_to_dict,
    is_granted_sign,
    state_differences,
    state_of,
)
from tuf_signer.audit._store import (
    AddVersion,
    AdvanceRole,
    ApproveDelegations,
    Change,
    CreateKey,
    Entry,
    ResetRole,
    SetKeyRules,
    SetVersionState,
)
from tuf_signer.errors import (
    AlreadyExistsError,
    KeyStateError,
    NotFoundError,
    PolicyError,
    RollbackError,
    StaleKeyVersionError,
    StaleReplayError,
    TufSignerError,
    VersionStepError,
)
from tuf_signer.model import AuditEvent, KeyState, KeyVersion, Outcome, RoleState, evolve

# What an admin runs to move a mark (named in refusals).
RESET_HINT = "tuf-signer keys reset-role KEY ROLE --version N --reason TEXT"

REPLAY_REASON = "replay of an identical request"

KeyChange = CreateKey | AddVersion | SetVersionState | SetKeyRules

# The operations that approve delegations and set a key's rules (issue 14, item 4).
APPROVE = "approve-delegations"
SET_RULES = "set-key-rules"
APPROVE_HINT = "tuf-signer keys approve-delegations KEY ROLE SHA256 --reason TEXT"

# A write to role_coherence: (column, key name, role, value); column is one of
# "listed", "delegations", "approved".
CoherenceWrite = tuple[str, str, str, int | str]


@dataclass(frozen=True)
class Decision:
    """What one entry's change comes to.

    Attributes:
        error: the refusal; None when the change (if any) applies.
        current: for a role change, the role state as the entry leaves it
            (the stored one when refused or replayed).
        replayed: the entry repeats the stored role state exactly.
        advance: the role state to write; None when it does not change.
        insert: ``advance`` is the role's first state (inserted, not updated).
        key_change: the key change to write; None when nothing changes.
        coherence: the ``role_coherence`` values to write (issue 14).
    """

    error: TufSignerError | None = None
    current: RoleState | None = None
    replayed: bool = False
    advance: RoleState | None = None
    insert: bool = False
    key_change: KeyChange | None = None
    coherence: tuple[CoherenceWrite, ...] = ()


def _refuse(error: TufSignerError, current: RoleState | None = None) -> Decision:
    return Decision(error=error, current=current)


# --- entry checks (caller bugs, raised before any transaction) --------------------


def check_entry(entry: Entry, index: int = 0) -> None:
    """Raise ValueError when an entry contradicts itself.

    An ``AdvanceRole`` must ride on a granted ``sign`` event that agrees with its
    state field by field: ``verify_store`` later holds each role state against
    the record that set it, so a mismatch here would look like tampering there.

    Raises:
        ValueError: the entry is inconsistent; names the entry and the field.
    """
    where = f"entry {index}"
    event, change = entry.event, entry.change
    event_to_dict(event)
    if change is None:
        return
    if event.outcome is not Outcome.GRANTED:
        raise ValueError(f"{where}: a refused event carries no change")
    if isinstance(change, AdvanceRole | ResetRole):
        s = change.state
        kind, operation = (
            ("AdvanceRole", SIGN) if isinstance(change, AdvanceRole) else ("ResetRole", RESET)
        )
        if event.operation != operation:
            raise ValueError(f"{where}: {kind} belongs to a {operation!r} event")
        differ = state_differences(s, event)
        if differ:
            name = "metadata_version" if differ[0] == "version" else differ[0]
            raise ValueError(f"{where}: event.{name} differs from the {kind} state")
        if isinstance(change, ResetRole) and (s.payload_sha256 or s.signature or s.expires):
            raise ValueError(f"{where}: a ResetRole state has no payload, signature or expiry")
        if isinstance(change, ResetRole) and s.version < 0:
            raise ValueError(f"{where}: a ResetRole version is not negative")
    elif isinstance(change, CreateKey):
        if change.first.key_name != change.key.name:
            raise ValueError(f"{where}: the first version belongs to another key")
    elif isinstance(change, AddVersion):
        if change.version.state is not KeyState.PENDING:
            raise ValueError(f"{where}: a new version starts PENDING")
    elif isinstance(change, ApproveDelegations):
        if event.operation != APPROVE or event.key_name != change.key_name:
            raise ValueError(f"{where}: ApproveDelegations belongs to its key's {APPROVE!r} event")
        digest = change.delegations_sha256
        if len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
            raise ValueError(f"{where}: delegations_sha256 is not 64 lowercase hex digits")
    elif isinstance(change, SetKeyRules):
        if event.operation != SET_RULES or event.key_name != change.key_name:
            raise ValueError(f"{where}: SetKeyRules belongs to its key's {SET_RULES!r} event")
    elif not isinstance(change, SetVersionState):
        raise ValueError(f"{where}: unknown change {type(change).__name__}")


def change_of(entry: Entry) -> Change | None:
    """The change ``entry`` is decided as.

    Every granted signature passes the high-water check (P3), also when the
    caller sent it without AdvanceRole (a replay answered from its cache): if
    that cache was stale, the check refuses it. Such an entry carries no new
    signature, so it may only replay the stored state (``replay_only``).
    """
    if entry.change is None and is_granted_sign(entry.event):
        return AdvanceRole(state_of(entry.event), replay_only=True)
    return entry.change


def refused_event(event: AuditEvent, error: TufSignerError) -> AuditEvent:
    """``event`` as the record keeps it when ``error`` refused it: with the
    status and reason, and no signature (a refused signature must not be
    obtainable from the log). The service and the store both build refusals here.
    """
    return dataclasses.replace(
        event, outcome=Outcome.REFUSED, status=error.code, reason=error.reason, signature=""
    )


def recorded_event(event: AuditEvent, decision: Decision) -> AuditEvent:
    """The event as the record keeps it, once its change is decided.

    A refused change is recorded as refused, with the status and reason and no
    signature (a refused signature must not be obtainable from the log); a
    replay carries the stored signature it repeats.
    """
    if decision.error is not None:
        return refused_event(event, decision.error)
    if decision.replayed and decision.current is not None:
        return dataclasses.replace(
            event, signature=decision.current.signature, reason=REPLAY_REASON
        )
    return event


# --- role changes -------------------------------------------------------------------


def is_reset_mark(state: RoleState) -> bool:
    """Whether ``state`` was set by an admin reset (a mark with no signature behind it)."""
    return not state.payload_sha256


def advance_decision(
    current: RoleState | None, new: RoleState, max_step: int | None = None
) -> Literal["apply", "replay"]:
    """Decide whether ``new`` may advance the role state ``current``.

    Args:
        current: the stored high-water mark, None when the role has none (the
            mark then counts as version 0).
        new: the state a signature would set.
        max_step: the largest ``new.version - current.version`` allowed; None
            for no bound.

    Returns:
        "apply" when ``new`` may be signed and stored: no state yet, a higher
        version (at most ``max_step`` above), or the very same payload under a
        different keyid (re-signed after a rotation); "replay" when ``new``
        repeats the stored state exactly (same version, payload and keyid):
        answer with the stored signature.

    Raises:
        RollbackError: a lower version (rollback) or the same version with a
            different payload (equivocation); the reason names the current
            high-water version.
        VersionStepError: a version more than ``max_step`` above the mark; the
            reason names the mark, the step and how an admin resets it.
    """
    where = f"role {new.role!r} with key {new.key_name!r}"
    mark = 0 if current is None else current.version
    if new.version > mark:
        if max_step is not None and new.version - mark > max_step:
            if current is None:
                since = "no version was signed yet (the mark counts from 0)"
            elif is_reset_mark(current):
                since = f"the mark is version {mark}, set by an admin reset"
            else:
                since = f"the mark is version {mark}"
            raise VersionStepError(
                f"version step: version {new.version} is {new.version - mark} above the mark "
                f"of {where}, more than max_version_step {max_step}; {since}. A repository "
                f"that moves on to a higher version on purpose (e.g. migrating) needs an "
                f"admin to move the mark first: {RESET_HINT}"
            )
        return "apply"
    if current is None:  # TUF versions start at 1 (the policy refuses 0 already)
        raise RollbackError(f"rollback: version {new.version} is not above 0 for {where}")
    if current.version == new.version and is_reset_mark(current):
        raise RollbackError(
            f"rollback: version {new.version} is not above version {current.version}, "
            f"the mark an admin reset set for {where}"
        )
    if new.version == current.version:
        if new.payload_sha256 != current.payload_sha256:
            raise RollbackError(
                f"equivocation: a different payload was already signed as version "
                f"{current.version} for {where}; the next version must be above {current.version}"
            )
        return "replay" if new.keyid == current.keyid else "apply"
    raise RollbackError(
        f"rollback: version {new.version} is not above version {current.version} "
        f"already signed for {where}"
    )


# A role's mark as coherence reads it: (version, whether a signature set it).
# Plain tuples: a 16,384-bin snapshot reads one per bin.
Mark = tuple[int, bool]


def mark_of(state: RoleState) -> Mark:
    """The mark ``state`` sets (an admin reset's has no payload)."""
    return (state.version, not is_reset_mark(state))


@dataclass
class CoherenceView:
    """What the coherence rules read of one key, inside one write transaction.

    Read once per transaction and kept up to date by the entries of the batch
    (``note_advance``, ``note_writes``), so a bin and the snapshot listing it
    may be signed in one batch.

    Attributes:
        marks: the key's marks by role (a lower bound is not enough: the
            stored ones, as the batch has left them), each (version, whether a
            signature set it rather than an admin reset).
        empty: the versions of the empty bins the key signed
            (``policy.empty_bin_role``; their roles hold ``*``).
        listed: by role, the version the key's last snapshot listed (for
            "snapshot": the version its last timestamp named).
        delegations: by role, the digest of the delegations last signed.
        approved: by role, the digest an admin approved for the next signature.
    """

    marks: dict[str, Mark]
    empty: set[int]
    listed: dict[str, int]
    delegations: dict[str, str]
    approved: dict[str, str]

    def note_advance(self, state: RoleState) -> None:
        """An entry of the batch advanced ``state``'s role."""
        self.marks[state.role] = mark_of(state)
        if "*" in state.role:
            self.empty.add(state.version)

    def note_writes(self, writes: tuple[CoherenceWrite, ...]) -> None:
        """An entry of the batch wrote these values."""
        for column, _key, role, value in writes:
            if column == "listed":
                self.listed[role] = int(value)
            elif column == "delegations":
                self.delegations[role] = str(value)
                self.approved.pop(role, None)
            else:
                self.approved[role] = str(value)


def coherence_writes(change: AdvanceRole, view: CoherenceView) -> tuple[CoherenceWrite, ...]:
    """Hold a signature's listing and delegations against the key (P9, issue 14).

    A snapshot may list a role the key signs neither below the version the
    key's last snapshot listed (a rollback a client would trust) nor at a
    version the key never signed: above the role's mark, at an admin reset
    mark, or a bin the key never signed, unless the key signed an empty bin
    at that version (an empty bin verifies as any bin). A role other than a
    bin that the key never signed at all is held to the first rule only (its
    metadata may be another key's, e.g. top-level targets signed offline).
    Each entry of ``change.lists`` is (role, version, whether it is a bin). A
    timestamp may name a snapshot version neither below the one its last
    timestamp named nor above the key's snapshot mark (a key that never signed
    a snapshot is held to the first rule only: its snapshots may come from
    another key; before its first snapshot, a timestamp naming a high version
    sets a high floor, which ``keys reset-role KEY snapshot`` lowers).

    Targets metadata other than a bin may carry delegations other than the
    ones last signed for its role only with an admin's approval; its first
    delegations too, unless every keyid they delegate to is a version of a
    key in the registry (``change.delegations_known``: the bins delegated to
    the online key).

    Returns:
        The values to write when the signature applies.

    Raises:
        RollbackError: a listing below the last one (names role and versions).
        PolicyError: a version the key never signed, or changed delegations
            without approval (FAILED_PRECONDITION; names role and versions).
    """
    new = change.state
    writes: list[CoherenceWrite] = []
    key = new.key_name
    what = f"{new.role} version {new.version}"
    for role, version, bin_role in change.lists or ():
        listed = view.listed.get(role, 0)
        if new.role == "timestamp":
            if version < listed:
                raise RollbackError(
                    f"coherence: {what} names snapshot version {version}, below version "
                    f"{listed} that the last timestamp of key {key!r} named"
                )
            mark = view.marks.get(role)
            if mark is not None and (version > mark[0] or (version == mark[0] and not mark[1])):
                raise PolicyError(
                    f"coherence: {what} names snapshot version {version}, which key {key!r} "
                    f"never signed (its snapshot mark is version {mark[0]})"
                )
        else:
            if version < listed:
                raise RollbackError(
                    f"coherence: {what} lists {role!r} at version {version}, below version "
                    f"{listed} that the last snapshot of key {key!r} listed"
                )
            mark = view.marks.get(role)
            signed = mark is not None and (version < mark[0] or (version == mark[0] and mark[1]))
            # A role other than a bin that this key never signed may be
            # another key's (top-level targets signed offline): not held.
            other_key = mark is None and not bin_role
            if not signed and not other_key and version not in view.empty:
                had = (
                    f"its mark for {role!r} is version {mark[0]}"
                    if mark is not None
                    else f"it never signed {role!r}"
                )
                raise PolicyError(
                    f"coherence: {what} lists {role!r} at version {version}, which key "
                    f"{key!r} never signed ({had}, and no empty bin at version {version})"
                )
        if version != listed:
            writes.append(("listed", key, role, version))
    digest = change.delegations
    if digest:
        last = view.delegations.get(new.role, "")
        approved = view.approved.get(new.role) == digest
        if last and digest != last and not approved:
            raise PolicyError(
                f"delegations of {new.role!r} version {new.version} (sha256 {digest}) differ "
                f"from the last ones key {key!r} signed for it (sha256 {last}); an admin "
                f"approves the change first: {APPROVE_HINT}"
            )
        # No trust on first use for a key outside the service: a compromised
        # backend signing top-level targets first would choose who signs the bins.
        if not last and not change.delegations_known and not approved:
            raise PolicyError(
                f"delegations of {new.role!r} version {new.version} (sha256 {digest}) are the "
                f"first key {key!r} signs for it and delegate to a keyid that is no version of "
                f"a key in the registry; an admin approves them first: {APPROVE_HINT}"
            )
        if digest != last:
            writes.append(("delegations", key, new.role, digest))
    return tuple(writes)


def decide_advance(
    change: AdvanceRole,
    seq: int,
    stored: RoleState | None,
    kv: KeyVersion | None,
    view: CoherenceView | None = None,
) -> Decision:
    """Decide a signature's ``AdvanceRole`` as record ``seq``.

    Args:
        change: the change (``change_of`` makes one for a bare granted sign).
        seq: the record the entry becomes (the new state's ``audit_seq``).
        stored: the role's state as earlier entries left it; None for none.
        kv: the key version ``change.state`` names; None when it does not exist.
        view: the key's coherence state, when ``change`` carries a listing or
            delegations (``coherence_writes``).
    """
    new = evolve(change.state, audit_seq=seq)
    what = f"key version {new.key_version} of {new.key_name!r}"
    if kv is None:
        return _refuse(KeyStateError(f"{what} does not exist"), stored)
    if kv.state is KeyState.PENDING:
        return _refuse(KeyStateError(f"{what} is not ACTIVE yet"), stored)
    if kv.state is KeyState.RETIRED:
        return _refuse(StaleKeyVersionError(f"{what} is no longer ACTIVE"), stored)
    if kv.keyid != new.keyid:
        return _refuse(KeyStateError(f"keyid {new.keyid} is not the keyid of {what}"), stored)
    try:
        decision = advance_decision(stored, new, change.max_step)
    except (RollbackError, VersionStepError) as e:
        return _refuse(e, stored)
    if decision == "replay":
        return Decision(current=stored, replayed=True)
    if change.replay_only:
        mark = "none" if stored is None else f"version {stored.version}, record {stored.audit_seq}"
        return _refuse(
            StaleReplayError(
                f"stale replay: version {new.version} of role {new.role!r} with key "
                f"{new.key_name!r} is not the stored mark ({mark}); the cached role state "
                "was stale (an admin reset?): send the request again"
            ),
            stored,
        )
    writes: tuple[CoherenceWrite, ...] = ()
    if view is not None:
        try:
            writes = coherence_writes(change, view)
        except PolicyError as e:
            return _refuse(e, stored)
    return Decision(current=new, advance=new, insert=stored is None, coherence=writes)


def decide_reset(
    change: ResetRole,
    seq: int,
    stored: RoleState | None,
    kv: KeyVersion | None,
    view: CoherenceView | None = None,
) -> Decision:
    """Decide an admin's ``ResetRole`` as record ``seq`` (arguments as ``decide_advance``).

    A listing above the new mark comes down to it (``view``), so that a
    repository that starts again (RSTUF's re-bootstrap) can list the role again.
    """
    new = dataclasses.replace(change.state, audit_seq=seq)
    what = f"key version {new.key_version} of {new.key_name!r}"
    if kv is None:
        return _refuse(NotFoundError(f"{what} does not exist"), stored)
    if kv.keyid != new.keyid:
        return _refuse(KeyStateError(f"keyid {new.keyid} is not the keyid of {what}"), stored)
    return Decision(
        current=new,
        advance=new,
        insert=stored is None,
        coherence=(
            reset_listings(new, view, drop_listings=change.drop_listings)
            if view is not None
            else ()
        ),
    )


def reset_listings(
    new: RoleState, view: CoherenceView, *, drop_listings: bool = False
) -> tuple[CoherenceWrite, ...]:
    """What an admin reset of ``new.role`` does to the listings (issue 14).

    The role starts again: what the key's last snapshot (or timestamp) listed
    of it comes down to the new mark. What a role listed of others (a
    snapshot each bin's rollback floor, a timestamp its snapshot's) is
    forgotten only with ``drop_listings`` (``reset-roles``: every role of the
    key starts again, RSTUF's re-bootstrap); a reset of ``snapshot`` or
    ``timestamp`` alone keeps the floors it set, so that it cannot roll every
    bin, or the snapshot, back at once (a role's own reset lowers its own
    floor). The reset is on the record; so is every signature after it.
    """
    key, role = new.key_name, new.role
    writes: list[CoherenceWrite] = []
    if view.listed.get(role, 0) > new.version:
        writes.append(("listed", key, role, new.version))
    if role == "timestamp" and drop_listings and view.listed.get("snapshot", 0):
        writes.append(("listed", key, "snapshot", 0))
    if role == "snapshot" and drop_listings:
        writes.extend(("listed", key, r, 0) for r, v in view.listed.items() if v and r != role)
    return tuple(writes)


def decide_approve(change: ApproveDelegations, key_exists: bool) -> Decision:
    """Decide an admin's ``ApproveDelegations``: NOT_FOUND without the key."""
    if not key_exists:
        return _refuse(NotFoundError(f"key {change.key_name!r} does not exist"))
    write: CoherenceWrite = ("approved", change.key_name, change.role, change.delegations_sha256)
    return Decision(coherence=(write,))


def decide_set_rules(change: SetKeyRules, key_exists: bool) -> Decision:
    """Decide an admin's ``SetKeyRules``: NOT_FOUND without the key."""
    if not key_exists:
        return _refuse(NotFoundError(f"key {change.key_name!r} does not exist"))
    return Decision(key_change=change)


# --- key changes --------------------------------------------------------------------


def decide_create(change: CreateKey, key_exists: bool) -> Decision:
    """Decide ``CreateKey``; ``key_exists``: a key of that name is stored."""
    if key_exists:
        return _refuse(AlreadyExistsError(f"key {change.key.name!r} already exists"))
    return Decision(key_change=change)


def decide_add(change: AddVersion, key_exists: bool, stored: KeyVersion | None) -> Decision:
    """Decide ``AddVersion``; ``stored``: the version of that number, None for none."""
    v = change.version
    if not key_exists:
        return _refuse(NotFoundError(f"key {v.key_name!r} does not exist"))
    if stored is not None:
        return _refuse(
            AlreadyExistsError(f"version {v.version} of key {v.key_name!r} already exists")
        )
    return Decision(key_change=change)


def decide_set_state(change: SetVersionState, kv: KeyVersion | None) -> Decision:
    """Decide ``SetVersionState``; ``kv``: the version it moves, None when it does not exist."""
    what = f"version {change.version} of {change.key_name!r}"
    target = change.state
    if kv is None:
        return _refuse(NotFoundError(f"{what} does not exist"))
    if kv.state is KeyState.RETIRED:
        return _refuse(KeyStateError(f"{what} is RETIRED; retired versions never return"))
    if target is KeyState.PENDING:
        return _refuse(
            KeyStateError(f"{what} is {kv.state.value}; versions never return to PENDING")
        )
    if target is kv.state:
        return _refuse(KeyStateError(f"{what} is already {target.value}"))
    # PENDING -> ACTIVE (the store retires the key's ACTIVE version with it),
    # PENDING -> RETIRED or ACTIVE -> RETIRED.
    return Decision(key_change=change)


__all__ = [
    "APPROVE",
    "APPROVE_HINT",
    "REPLAY_REASON",
    "RESET_HINT",
    "SET_RULES",
    "CoherenceView",
    "CoherenceWrite",
    "Decision",
    "KeyChange",
    "Mark",
    "advance_decision",
    "change_of",
    "check_entry",
    "coherence_writes",
    "decide_add",
    "decide_advance",
    "decide_approve",
    "decide_create",
    "decide_reset",
    "decide_set_rules",
    "decide_set_state",
    "is_reset_mark",
    "mark_of",
    "recorded_event",
    "reset_listings",
]
