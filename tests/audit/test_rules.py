"""The state-change rules, decided from values alone: no database, no cursor.

The store tests (test_store_contract.py) hold the same rules against every
database; these tables name each branch of each rule, one row per branch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from tuf_signer.audit import AddVersion, AdvanceRole, CreateKey, Entry, ResetRole, SetVersionState
from tuf_signer.audit._rules import (
    REPLAY_REASON,
    Decision,
    KeyChange,
    change_of,
    decide_add,
    decide_advance,
    decide_create,
    decide_reset,
    decide_set_state,
    recorded_event,
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
from tuf_signer.model import (
    Algorithm,
    AuditEvent,
    KeyRecord,
    KeyState,
    KeyVersion,
    Outcome,
    RoleState,
)

KEY = "online"
T0 = "2025-01-01T00:00:00.000000Z"
SEQ = 42  # the record the decided entry becomes

ACTIVE, PENDING, RETIRED = KeyState.ACTIVE, KeyState.PENDING, KeyState.RETIRED


def kv(state: KeyState = ACTIVE, keyid: str = "kid-1", version: int = 1) -> KeyVersion:
    return KeyVersion(KEY, version, state, keyid, {}, f"handle-{version}", T0)


def mark(version: int, payload: str = "a", keyid: str = "kid-1", seq: int = 7) -> RoleState:
    """A role state; payload "" makes it an admin reset's mark."""
    signature = f"sig-{payload}-{keyid}" if payload else ""
    expires = "2025-01-02T00:00:00Z" if payload else ""
    return RoleState(KEY, "snapshot", version, payload, keyid, 1, signature, expires, seq)


@dataclass(frozen=True)
class Want:
    """What a rule should decide: a refusal (its class and words), a replay, or a change."""

    error: type[TufSignerError] | None = None
    match: str = ""
    replayed: bool = False
    insert: bool = False


def check_role_decision(d: Decision, new: RoleState, stored: RoleState | None, want: Want) -> None:
    if want.error is not None:
        assert type(d.error) is want.error
        assert want.match in d.error.reason
        assert d == Decision(error=d.error, current=stored)
    elif want.replayed:
        assert d == Decision(current=stored, replayed=True)
    else:
        applied = replace(new, audit_seq=SEQ)
        assert d == Decision(current=applied, advance=applied, insert=want.insert)


# --- AdvanceRole ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "version", "new", "max_step", "replay_only", "want"),
    [
        pytest.param(None, kv(), mark(1), None, False, Want(insert=True), id="first"),
        pytest.param(mark(1), kv(), mark(2, "b"), None, False, Want(), id="higher"),
        pytest.param(mark(1), None, mark(2), None, False,
                     Want(KeyStateError, "does not exist"), id="no-version"),
        pytest.param(mark(1), kv(PENDING), mark(2), None, False,
                     Want(KeyStateError, "not ACTIVE yet"), id="pending"),
        pytest.param(mark(1), kv(RETIRED), mark(2), None, False,
                     Want(StaleKeyVersionError, "no longer ACTIVE"), id="retired"),
        pytest.param(mark(1), kv(keyid="kid-2"), mark(2), None, False,
                     Want(KeyStateError, "not the keyid"), id="other-keyid"),
        pytest.param(mark(3), kv(), mark(2), None, False,
                     Want(RollbackError, "rollback: version 2 is not above version 3"),
                     id="rollback"),
        pytest.param(None, kv(), mark(0), None, False,
                     Want(RollbackError, "not above 0"), id="zero"),
        pytest.param(mark(3), kv(), mark(3, "b"), None, False,
                     Want(RollbackError, "equivocation"), id="equivocation"),
        pytest.param(mark(3), kv(), mark(3), None, False, Want(replayed=True), id="replay"),
        pytest.param(mark(3), kv(keyid="kid-2"), mark(3, keyid="kid-2"), None, False,
                     Want(), id="rotated"),
        pytest.param(mark(3, ""), kv(), mark(3), None, False,
                     Want(RollbackError, "admin reset"), id="at-reset"),
        pytest.param(mark(3, ""), kv(), mark(4), None, False, Want(), id="above-reset"),
        pytest.param(mark(1), kv(), mark(6), 5, False, Want(), id="step-at-bound"),
        pytest.param(mark(1), kv(), mark(7), 5, False,
                     Want(VersionStepError, "more than max_version_step 5"), id="step-too-long"),
        pytest.param(None, kv(), mark(6), 5, False,
                     Want(VersionStepError, "counts from 0"), id="first-step-too-long"),
        pytest.param(mark(3), kv(), mark(3), None, True,
                     Want(replayed=True), id="replay-only-replays"),
        pytest.param(mark(1), kv(), mark(2), None, True,
                     Want(StaleReplayError, "stale replay"), id="replay-only-stale"),
        pytest.param(None, kv(), mark(1), None, True,
                     Want(StaleReplayError, "(none)"), id="replay-only-none"),
    ],
)  # fmt: skip
def test_advance(
    stored: RoleState | None,
    version: KeyVersion | None,
    new: RoleState,
    max_step: int | None,
    replay_only: bool,
    want: Want,
) -> None:
    change = AdvanceRole(new, max_step=max_step, replay_only=replay_only)
    check_role_decision(decide_advance(change, SEQ, stored, version), new, stored, want)


# --- ResetRole ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "version", "new", "want"),
    [
        pytest.param(None, kv(), mark(5, ""), Want(insert=True), id="first"),
        pytest.param(mark(9), kv(), mark(5, ""), Want(), id="down"),
        pytest.param(mark(9), kv(RETIRED), mark(5, ""), Want(), id="retired-version"),
        pytest.param(mark(9), None, mark(5, ""),
                     Want(NotFoundError, "does not exist"), id="no-version"),
        pytest.param(mark(9), kv(keyid="kid-2"), mark(5, ""),
                     Want(KeyStateError, "not the keyid"), id="other-keyid"),
    ],
)  # fmt: skip
def test_reset(
    stored: RoleState | None, version: KeyVersion | None, new: RoleState, want: Want
) -> None:
    check_role_decision(decide_reset(ResetRole(new), SEQ, stored, version), new, stored, want)


# --- key changes ----------------------------------------------------------------


def check_key_decision(d: Decision, change: KeyChange, want: Want) -> None:
    if want.error is None:
        assert d == Decision(key_change=change)
    else:
        assert type(d.error) is want.error
        assert want.match in d.error.reason
        assert d == Decision(error=d.error)


@pytest.mark.parametrize(
    ("exists", "want"),
    [
        pytest.param(False, Want(), id="new"),
        pytest.param(True, Want(AlreadyExistsError, "already exists"), id="taken"),
    ],
)
def test_create(exists: bool, want: Want) -> None:
    change = CreateKey(KeyRecord(KEY, Algorithm.ED25519, "pkcs11", (), T0), kv(PENDING))
    check_key_decision(decide_create(change, exists), change, want)


@pytest.mark.parametrize(
    ("exists", "stored", "want"),
    [
        pytest.param(True, None, Want(), id="new"),
        pytest.param(False, None, Want(NotFoundError, "does not exist"), id="no-key"),
        pytest.param(True, kv(version=2), Want(AlreadyExistsError, "already exists"), id="taken"),
    ],
)
def test_add(exists: bool, stored: KeyVersion | None, want: Want) -> None:
    change = AddVersion(kv(PENDING, version=2))
    check_key_decision(decide_add(change, exists, stored), change, want)


@pytest.mark.parametrize(
    ("stored", "target", "want"),
    [
        pytest.param(kv(PENDING), ACTIVE, Want(), id="pending-to-active"),
        pytest.param(kv(PENDING), RETIRED, Want(), id="pending-to-retired"),
        pytest.param(kv(ACTIVE), RETIRED, Want(), id="active-to-retired"),
        pytest.param(None, ACTIVE, Want(NotFoundError, "does not exist"), id="no-version"),
        pytest.param(kv(RETIRED), ACTIVE,
                     Want(KeyStateError, "retired versions never return"), id="retired-to-active"),
        pytest.param(kv(RETIRED), RETIRED,
                     Want(KeyStateError, "retired versions never return"), id="retired-again"),
        pytest.param(kv(ACTIVE), PENDING,
                     Want(KeyStateError, "never return to PENDING"), id="active-to-pending"),
        pytest.param(kv(PENDING), PENDING,
                     Want(KeyStateError, "never return to PENDING"), id="pending-again"),
        pytest.param(kv(ACTIVE), ACTIVE, Want(KeyStateError, "already ACTIVE"), id="active-again"),
    ],
)  # fmt: skip
def test_set_state(stored: KeyVersion | None, target: KeyState, want: Want) -> None:
    change = SetVersionState(KEY, 1, target, T0)
    check_key_decision(decide_set_state(change, stored), change, want)


# --- what an entry is decided as, and what its record says ---------------------


def sign_event(outcome: Outcome = Outcome.GRANTED, operation: str = "sign") -> AuditEvent:
    s = mark(3)
    return AuditEvent(
        time=T0,
        identity="repo",
        operation=operation,
        outcome=outcome,
        status="OK" if outcome is Outcome.GRANTED else "FAILED_PRECONDITION",
        key_name=s.key_name,
        keyid=s.keyid,
        key_version=s.key_version,
        role=s.role,
        metadata_version=s.version,
        expires=s.expires,
        payload_sha256=s.payload_sha256,
        signature=s.signature,
    )


def test_a_bare_granted_signature_is_decided_as_a_replay_only_advance() -> None:
    assert change_of(Entry(sign_event())) == AdvanceRole(mark(3, seq=0), replay_only=True)
    assert change_of(Entry(sign_event(Outcome.REFUSED))) is None
    assert change_of(Entry(sign_event(operation="note"))) is None
    change = AdvanceRole(mark(3, seq=0))
    assert change_of(Entry(sign_event(), change)) is change


def test_the_record_of_a_refusal_holds_no_signature_and_a_replay_the_stored_one() -> None:
    event = sign_event()
    error = RollbackError("rollback: no")
    refused = recorded_event(event, Decision(error=error, current=mark(3)))
    assert refused == replace(
        event, outcome=Outcome.REFUSED, status=error.code, reason=error.reason, signature=""
    )
    stored = mark(3, keyid="kid-0")
    replayed = recorded_event(event, Decision(current=stored, replayed=True))
    assert replayed == replace(event, signature=stored.signature, reason=REPLAY_REASON)
    assert recorded_event(event, Decision(current=mark(3), advance=mark(3))) is event
