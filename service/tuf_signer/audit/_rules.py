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
    Change,
    CreateKey,
    Entry,
    ResetRole,
    SetVersionState,
)
from tuf_signer.errors import (
    AlreadyExistsError,
    KeyStateError,
    NotFoundError,
    RollbackError,
    StaleKeyVersionError,
    StaleReplayError,
    TufSignerError,
    VersionStepError,
)
from tuf_signer.model import AuditEvent, KeyState, KeyVersion, Outcome, RoleState

# What an admin runs to move a mark (named in refusals).
RESET_HINT = "tuf-signer keys reset-role KEY ROLE --version N --reason TEXT"

REPLAY_REASON = "replay of an identical request"

KeyChange = CreateKey | AddVersion | SetVersionState


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
    """

    error: TufSignerError | None = None
    current: RoleState | None = None
    replayed: bool = False
    advance: RoleState | None = None
    insert: bool = False
    key_change: KeyChange | None = None


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


def decide_advance(
    change: AdvanceRole, seq: int, stored: RoleState | None, kv: KeyVersion | None
) -> Decision:
    """Decide a signature's ``AdvanceRole`` as record ``seq``.

    Args:
        change: the change (``change_of`` makes one for a bare granted sign).
        seq: the record the entry becomes (the new state's ``audit_seq``).
        stored: the role's state as earlier entries left it; None for none.
        kv: the key version ``change.state`` names; None when it does not exist.
    """
    new = dataclasses.replace(change.state, audit_seq=seq)
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
    return Decision(current=new, advance=new, insert=stored is None)


def decide_reset(
    change: ResetRole, seq: int, stored: RoleState | None, kv: KeyVersion | None
) -> Decision:
    """Decide an admin's ``ResetRole`` as record ``seq`` (arguments as ``decide_advance``)."""
    new = dataclasses.replace(change.state, audit_seq=seq)
    what = f"key version {new.key_version} of {new.key_name!r}"
    if kv is None:
        return _refuse(NotFoundError(f"{what} does not exist"), stored)
    if kv.keyid != new.keyid:
        return _refuse(KeyStateError(f"keyid {new.keyid} is not the keyid of {what}"), stored)
    return Decision(current=new, advance=new, insert=stored is None)


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
    "REPLAY_REASON",
    "RESET_HINT",
    "Decision",
    "KeyChange",
    "advance_decision",
    "change_of",
    "check_entry",
    "decide_add",
    "decide_advance",
    "decide_create",
    "decide_reset",
    "decide_set_state",
    "is_reset_mark",
    "recorded_event",
]
