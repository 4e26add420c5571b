"""The contract every AuditStore implementation passes (parametrised in conftest.py)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pytest

from tuf_signer.audit import (
    GENESIS_HASH,
    AuditStore,
    Committed,
    CreateKey,
    Entry,
    verify_records,
    verify_store,
)
from tuf_signer.audit._chain import chain
from tuf_signer.audit._sql import SqlAuditStore
from tuf_signer.errors import RollbackError, StaleKeyVersionError, StoreError
from tuf_signer.model import KeyState, Outcome

if TYPE_CHECKING:
    from conftest import AuditFactory

KEY = "online"


def _commit_ok(store: AuditStore, *entries: Entry) -> list[Committed]:
    out = store.append(entries)
    assert [c.status for c in out] == ["OK"] * len(entries), [c.reason for c in out]
    return out


# --- append and read back --------------------------------------------------------


def test_empty_store(store: AuditStore) -> None:
    assert store.head() == (0, GENESIS_HASH)
    assert list(store.records()) == []
    assert store.list_keys() == []
    assert store.list_versions(KEY) == []
    assert store.list_role_states() == []
    assert store.get_key(KEY) is None
    assert store.get_role_state(KEY, "snapshot") is None
    assert store.append([]) == []
    assert store.head() == (0, GENESIS_HASH)


def test_append_and_read_back(store: AuditStore, make: AuditFactory) -> None:
    events = [
        make.event(detail={"peer": "10.0.0.1", "n": [1, True, None], "ü": {"b": "é😀"}}),
        make.event(outcome=Outcome.REFUSED, status="PERMISSION_DENIED", reason="role not allowed"),
        make.event(operation="other", identity="admin"),
    ]
    committed = store.append([Entry(e) for e in events])
    assert [c.seq for c in committed] == [1, 2, 3]
    assert all(c.status == "OK" and c.current is None and not c.replayed for c in committed)

    expected = []
    prev = GENESIS_HASH
    for seq, event in enumerate(events, start=1):
        expected.append(chain(prev, seq, event))
        prev = expected[-1].hash
    assert list(store.records()) == expected
    assert store.head() == (3, expected[-1].hash)
    assert list(store.records(start_seq=3)) == expected[2:]
    assert list(store.records(start_seq=4)) == []


def test_seq_continues_across_batches(store: AuditStore, make: AuditFactory) -> None:
    for i in range(5):
        out = store.append([make.note(), make.note()])
        assert [c.seq for c in out] == [2 * i + 1, 2 * i + 2]
    records = list(store.records())
    assert [r.seq for r in records] == list(range(1, 11))
    assert verify_records(records) == 10
    assert store.head() == (10, records[-1].hash)


def test_records_stream_past_one_page(store: AuditStore, make: AuditFactory) -> None:
    # More than one page of _rows.PAGE rows, read back in order from an offset.
    store.append([make.note(detail={"i": i}) for i in range(2500)])
    records = list(store.records(start_seq=1499))
    assert [r.seq for r in records] == list(range(1499, 2501))
    assert records[0].event.detail == {"i": 1498}
    assert verify_records(store.records()) == 2500


@pytest.mark.parametrize(
    ("build", "match"),
    [
        pytest.param(
            lambda m: Entry(replace(m.sign(1).event, metadata_version=2), m.sign(1).change),
            "metadata_version differs",
            id="sign-state-mismatch",
        ),
        pytest.param(
            lambda m: Entry(replace(m.sign(1).event, operation="x"), m.sign(1).change),
            "AdvanceRole belongs to a 'sign' event",
            id="advance-on-other-operation",
        ),
        pytest.param(
            lambda m: Entry(
                replace(m.create_key().event, outcome=Outcome.REFUSED), m.create_key().change
            ),
            "refused event carries no change",
            id="refused-with-change",
        ),
        pytest.param(
            lambda m: Entry(replace(m.reset(1).event, operation="sign"), m.reset(1).change),
            "ResetRole belongs to a 'reset-role-state' event",
            id="f8-reset-on-other-operation",
        ),
        pytest.param(
            lambda m: Entry(replace(m.reset(1).event, metadata_version=2), m.reset(1).change),
            "event.metadata_version differs from the ResetRole state",
            id="f8-reset-disagrees-with-its-event",
        ),
        pytest.param(lambda m: m.note(detail={"x": 1.5}), "floating-point", id="float-detail"),
        pytest.param(lambda m: m.note(key_version="1"), "must be an integer", id="wrong-type"),
    ],
)
def test_inconsistent_entry_is_a_caller_bug(
    store: AuditStore, make: AuditFactory, build: Callable[[AuditFactory], Entry], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        store.append([make.note(), build(make)])
    assert store.head() == (0, GENESIS_HASH)


# --- AdvanceRole -----------------------------------------------------------------


@dataclass(frozen=True)
class AdvanceCase:
    """Sign ``request`` after ``before`` was signed; (version, payload, key version)."""

    before: tuple[tuple[int, str, int], ...]
    request: tuple[int, str, int]
    status: str
    reason: str  # regex; "" when applied
    after: tuple[int, str, int] | None  # the role state afterwards
    replayed: bool = False
    rotate: bool = False  # activate key version 2 between `before` and `request`


ADVANCE_CASES = [
    pytest.param(AdvanceCase((), (1, "a", 1), "OK", "", (1, "a", 1)), id="first-sign"),
    pytest.param(
        AdvanceCase(((1, "a", 1),), (2, "b", 1), "OK", "", (2, "b", 1)), id="higher-version"
    ),
    pytest.param(
        AdvanceCase(
            ((7, "a", 1),),
            (5, "b", 1),
            "FAILED_PRECONDITION",
            r"^rollback: version 5 is not above version 7 already signed "
            r"for role 'snapshot' with key 'online'$",
            (7, "a", 1),
        ),
        id="lower-version-refused",
    ),
    pytest.param(
        AdvanceCase(
            ((7, "a", 1),),
            (7, "b", 1),
            "FAILED_PRECONDITION",
            r"^equivocation: a different payload was already signed as version 7 "
            r"for role 'snapshot' with key 'online'; the next version must be above 7$",
            (7, "a", 1),
        ),
        id="equal-version-other-payload-refused",
    ),
    pytest.param(
        AdvanceCase(((7, "a", 1),), (7, "a", 1), "OK", "", (7, "a", 1), replayed=True),
        id="identical-replay",
    ),
    pytest.param(
        AdvanceCase(((7, "a", 1),), (7, "a", 2), "OK", "", (7, "a", 2), rotate=True),
        id="same-payload-new-keyid",
    ),
    pytest.param(
        AdvanceCase(
            ((7, "a", 1),),
            (6, "a", 2),
            "FAILED_PRECONDITION",
            "^rollback: version 6 is not above version 7",
            (7, "a", 1),
            rotate=True,
        ),
        id="new-keyid-lower-version-refused",
    ),
    pytest.param(
        AdvanceCase(
            ((7, "a", 1),),
            (8, "b", 1),
            "FAILED_PRECONDITION",
            "^key version 1 of 'online' is no longer ACTIVE$",
            (7, "a", 1),
            rotate=True,
        ),
        id="retired-key-version-refused",
    ),
    pytest.param(
        AdvanceCase(
            (),
            (1, "a", 2),
            "FAILED_PRECONDITION",
            "^key version 2 of 'online' is not ACTIVE yet$",
            None,
        ),
        id="pending-key-version-refused",
    ),
    pytest.param(
        AdvanceCase(
            (),
            (1, "a", 9),
            "FAILED_PRECONDITION",
            "^key version 9 of 'online' does not exist$",
            None,
        ),
        id="unknown-key-version-refused",
    ),
]


@pytest.mark.parametrize("case", ADVANCE_CASES)
def test_advance_role(store: AuditStore, make: AuditFactory, case: AdvanceCase) -> None:
    _commit_ok(store, make.create_key(), make.add_version(KEY, 2))
    for version, payload, key_version in case.before:
        _commit_ok(store, make.sign(version, payload, key_version=key_version))
    if case.rotate:
        _commit_ok(store, make.set_state(KEY, 2, KeyState.ACTIVE))
    before = store.get_role_state(KEY, "snapshot")

    version, payload, key_version = case.request
    # A fresh signature value, as ECDSA would give for the same payload.
    entry = make.sign(version, payload, key_version=key_version, signature="fresh-signature")
    [c] = store.append([entry])

    assert c.status == case.status
    assert c.replayed is case.replayed
    # The verdict is the error itself, typed: the service decides by its class.
    assert (c.error is None) == (case.status == "OK")
    assert isinstance(c.error, StaleKeyVersionError) == ("no longer ACTIVE" in case.reason)
    assert isinstance(c.error, RollbackError) == case.reason.startswith(("^rollback", "^equivoc"))
    if case.reason:
        assert re.search(case.reason, c.reason), c.reason
    else:
        assert c.reason == ""
    current = store.get_role_state(KEY, "snapshot")
    assert c.current == current
    if case.after is None:
        assert current is None
    else:
        assert current is not None
        after_version, after_payload, after_key_version = case.after
        assert (current.version, current.payload_sha256, current.key_version) == (
            after_version,
            make.digest(after_payload),
            after_key_version,
        )
        assert current.keyid == make.keyid(KEY, after_key_version)

    [record] = list(store.records(start_seq=c.seq))
    event = record.event
    if case.status != "OK":
        assert current == before  # nothing moved
        assert (event.outcome, event.status, event.reason) == (
            Outcome.REFUSED,
            case.status,
            c.reason,
        )
        assert event.signature == ""  # a refused signature is never handed out
    elif case.replayed:
        assert current == before
        assert current is not None
        assert event.outcome is Outcome.GRANTED
        assert event.reason == "replay of an identical request"
        assert event.signature == current.signature != "fresh-signature"
    else:
        assert current is not None
        assert current.audit_seq == c.seq
        assert current.signature == event.signature == "fresh-signature"
        assert event.outcome is Outcome.GRANTED
    verify_store(store)


@pytest.mark.parametrize(
    ("version", "payload", "status", "replayed"),
    [
        pytest.param(7, "a", "OK", True, id="current-replay"),
        pytest.param(6, "old", "FAILED_PRECONDITION", False, id="stale-refused"),
        pytest.param(7, "b", "FAILED_PRECONDITION", False, id="equivocation-refused"),
        # Its cache holds a mark the store no longer has (an admin reset on
        # another worker lowered it): no new signature is behind this entry, so
        # it must not move the mark past the step bound (issue 10, finding 8).
        pytest.param(8, "b", "ABORTED", False, id="f8-stale-cache-above-the-mark-refused"),
    ],
)
def test_granted_sign_without_change_is_checked_too(
    store: AuditStore, make: AuditFactory, version: int, payload: str, status: str, replayed: bool
) -> None:
    # A caller answering a retry from its cache sends the sign event alone: the
    # store still holds it against the high-water mark (no unchecked grant).
    _commit_ok(store, make.create_key(), make.sign(7, "a"))
    [c] = store.append([Entry(make.sign(version, payload, signature="cached").event)])
    assert (c.status, c.replayed) == (status, replayed)
    state = store.get_role_state(KEY, "snapshot")
    assert c.current == state
    assert state is not None
    [record] = list(store.records(start_seq=c.seq))
    assert record.event.signature == ("" if status != "OK" else state.signature)
    assert state.version == max(7, version if status == "OK" else 7)
    verify_store(store)


# --- max_step and ResetRole (issue 10, finding 8) ----------------------------------

MAX = 2**63 - 1


@pytest.mark.parametrize(
    ("before", "version", "max_step", "status", "reason"),
    [
        pytest.param((), 1_000_000, 1_000_000, "OK", "", id="f8-first-step-at-the-bound"),
        pytest.param(
            (),
            1_000_001,
            1_000_000,
            "FAILED_PRECONDITION",
            r"^version step: version 1000001 is 1000001 above the mark of role 'snapshot' "
            r"with key 'online', more than max_version_step 1000000; no version was signed "
            r"yet \(the mark counts from 0\)\. .*tuf-signer keys reset-role KEY ROLE",
            id="f8-first-step-too-far",
        ),
        pytest.param(
            (7,),
            MAX,
            1_000_000,
            "FAILED_PRECONDITION",
            rf"^version step: version {MAX} is {MAX - 7} above the mark .*; the mark is "
            r"version 7\. ",
            id="f8-fast-forward-refused",
        ),
        pytest.param((7,), MAX, None, "OK", "", id="f8-no-bound"),
        pytest.param((7,), 17, 10, "OK", "", id="f8-step-at-the-bound"),
    ],
)
def test_advance_role_bounds_the_version_step(
    store: AuditStore,
    make: AuditFactory,
    before: tuple[int, ...],
    version: int,
    max_step: int | None,
    status: str,
    reason: str,
) -> None:
    _commit_ok(store, make.create_key(), *(make.sign(v, f"p{v}") for v in before))
    [c] = store.append([make.sign(version, "new", max_step=max_step)])
    assert c.status == status
    if reason:
        assert re.search(reason, c.reason), c.reason
    state = store.get_role_state(KEY, "snapshot")
    expected = version if status == "OK" else (before[-1] if before else None)
    assert (state.version if state else None) == expected
    verify_store(store)


def test_reset_role_moves_the_mark_down_and_up(store: AuditStore, make: AuditFactory) -> None:
    _commit_ok(store, make.create_key(), make.sign(MAX, "forward"), make.sign(1, "t", role="x"))
    [c] = _commit_ok(store, make.reset(5))
    state = store.get_role_state(KEY, "snapshot")
    assert state is not None and c.current == state
    assert (state.version, state.payload_sha256, state.signature, state.audit_seq) == (
        5,
        "",
        "",
        c.seq,
    )
    [record] = list(store.records(start_seq=c.seq))
    assert record.event.operation == "reset-role-state"
    assert record.event.detail == {"reason": "recover from a fast-forward"}
    # At the mark: refused, naming the reset; above it: granted.
    [at] = store.append([make.sign(5, "again", max_step=10)])
    assert at.status == "FAILED_PRECONDITION"
    assert re.search(r"^rollback: version 5 is not above version 5, the mark an admin", at.reason)
    _commit_ok(store, make.sign(6, "after", max_step=10))
    # Up too (a repository migrating at a high version), and to 0 (forgotten).
    _commit_ok(store, make.reset(5_000_000), make.sign(5_000_001, "migrated", max_step=10))
    _commit_ok(store, make.reset(0), make.sign(1, "restart", max_step=10))
    assert store.get_role_state(KEY, "x") is not None  # other roles untouched
    report = verify_store(store)
    assert report.role_states == 2


def test_reset_role_without_state_and_in_one_batch(store: AuditStore, make: AuditFactory) -> None:
    # A reset of a role never signed creates its mark; a later entry of the
    # same batch compares with it.
    _commit_ok(store, make.create_key())
    out = store.append([make.reset(100), make.sign(100, "a"), make.sign(101, "b")])
    assert [c.status for c in out] == ["OK", "FAILED_PRECONDITION", "OK"]
    state = store.get_role_state(KEY, "snapshot")
    assert state is not None and state.version == 101
    verify_store(store)


@pytest.mark.parametrize(
    ("key_version", "keyid", "status", "reason"),
    [
        pytest.param(9, None, "NOT_FOUND", "^key version 9 of 'online' does not exist$",
                     id="f8-reset-unknown-key-version"),
        pytest.param(1, "ff" * 32, "FAILED_PRECONDITION", "^keyid f{64} is not the keyid",
                     id="f8-reset-wrong-keyid"),
    ],
)  # fmt: skip
def test_reset_role_refused(
    store: AuditStore,
    make: AuditFactory,
    key_version: int,
    keyid: str | None,
    status: str,
    reason: str,
) -> None:
    _commit_ok(store, make.create_key(), make.sign(7))
    [c] = store.append([make.reset(1, key_version=key_version, keyid=keyid)])
    assert c.status == status
    assert re.search(reason, c.reason), c.reason
    state = store.get_role_state(KEY, "snapshot")
    assert state is not None and state.version == 7
    [record] = list(store.records(start_seq=c.seq))
    assert record.event.outcome is Outcome.REFUSED
    verify_store(store)


def test_advance_role_refuses_a_keyid_that_is_not_the_versions(
    store: AuditStore, make: AuditFactory
) -> None:
    _commit_ok(store, make.create_key(), make.add_version(KEY, 2))
    [c] = store.append([make.sign(1, key_version=1, keyid=make.keyid(KEY, 2))])
    assert c.status == "FAILED_PRECONDITION"
    assert re.search(
        r"^keyid [0-9a-f]{64} is not the keyid of key version 1 of 'online'$", c.reason
    )
    assert store.get_role_state(KEY, "snapshot") is None


def test_roles_and_keys_are_independent(store: AuditStore, make: AuditFactory) -> None:
    _commit_ok(store, make.create_key("online"), make.create_key("other"))
    _commit_ok(
        store,
        make.sign(5, role="snapshot"),
        make.sign(1, role="timestamp"),
        make.sign(1, role="bins-0001", key="other"),
        make.sign(1, role="bins-0000", key="other"),
    )
    assert [(s.key_name, s.role, s.version) for s in store.list_role_states()] == [
        ("online", "snapshot", 5),
        ("online", "timestamp", 1),
        ("other", "bins-0000", 1),
        ("other", "bins-0001", 1),
    ]
    assert [s.role for s in store.list_role_states("other")] == ["bins-0000", "bins-0001"]
    assert store.list_role_states("nobody") == []


# --- batches -----------------------------------------------------------------------


def test_batch_mixing_applied_and_refused_commits_every_record(
    store: AuditStore, make: AuditFactory
) -> None:
    _commit_ok(store, make.create_key())
    seq0, _ = store.head()
    out = store.append(
        [
            make.sign(1, "a"),
            make.sign(1, "b"),  # equivocation against the entry before it
            make.note(outcome=Outcome.REFUSED, status="INVALID_ARGUMENT", reason="not JSON"),
            make.create_key(),  # duplicate
            make.sign(1, "t", role="timestamp"),
            make.sign(1, "a"),  # replay of the first entry
        ]
    )
    assert [c.seq for c in out] == list(range(seq0 + 1, seq0 + 7))
    assert [(c.status, c.replayed) for c in out] == [
        ("OK", False),
        ("FAILED_PRECONDITION", False),
        ("OK", False),
        ("ALREADY_EXISTS", False),
        ("OK", False),
        ("OK", True),
    ]
    records = list(store.records(start_seq=seq0 + 1))
    assert [r.event.outcome for r in records] == [
        Outcome.GRANTED,
        Outcome.REFUSED,
        Outcome.REFUSED,
        Outcome.REFUSED,
        Outcome.GRANTED,
        Outcome.GRANTED,
    ]
    snapshot = store.get_role_state(KEY, "snapshot")
    assert snapshot is not None
    assert snapshot.payload_sha256 == make.digest("a")
    assert snapshot.audit_seq == seq0 + 1
    assert out[1].current == out[5].current == snapshot
    assert store.head()[0] == seq0 + 6
    verify_store(store)


def test_batch_racing_one_version_applies_exactly_one(
    store: AuditStore, make: AuditFactory
) -> None:
    _commit_ok(store, make.create_key())
    out = store.append([make.sign(3, "first"), make.sign(3, "second")])
    assert [c.status for c in out] == ["OK", "FAILED_PRECONDITION"]
    assert out[1].reason.startswith("equivocation: a different payload was already signed")
    state = store.get_role_state(KEY, "snapshot")
    assert state is not None
    assert state.payload_sha256 == make.digest("first")
    assert out[0].current == out[1].current == state


def test_batch_replay_then_advance_keeps_the_replayed_signature(
    store: AuditStore, make: AuditFactory
) -> None:
    _commit_ok(store, make.create_key())
    [first] = _commit_ok(store, make.sign(7, "a"))
    replay, advance = store.append([make.sign(7, "a", signature="again"), make.sign(8, "b")])
    assert replay.replayed
    assert replay.current == first.current
    assert replay.current is not None
    [record] = list(store.records(start_seq=replay.seq))[:1]
    assert record.event.signature == replay.current.signature == make.sign(7, "a").event.signature
    assert advance.current == store.get_role_state(KEY, "snapshot")
    assert advance.current is not None
    assert advance.current.version == 8


def test_one_batch_orders_key_changes_and_role_writes(
    store: AuditStore, make: AuditFactory
) -> None:
    """Role states written in bulk still meet the key created earlier in their batch."""
    out = store.append(
        [
            make.create_key("k2"),
            make.sign(1, "a", key="k2"),  # a new role state for a key of this batch
            make.sign(2, "b", key="k2"),  # and its update, in the same batch
            make.add_version("k2", 2),
            make.set_state("k2", 2, KeyState.ACTIVE),
            make.sign(3, "c", key="k2", key_version=2),  # with the version activated above
            make.sign(3, "d", key="k2", key_version=2),  # equivocation against it
        ]
    )
    assert [c.status for c in out] == ["OK"] * 6 + ["FAILED_PRECONDITION"]
    state = store.get_role_state("k2", "snapshot")
    assert state is not None
    assert (state.version, state.key_version, state.payload_sha256) == (3, 2, make.digest("c"))
    assert state.audit_seq == out[5].seq
    verify_store(store)


def test_a_batch_over_many_roles_reads_and_writes_each_one(
    store: AuditStore, make: AuditFactory
) -> None:
    """Hundreds of bins in one append (more than one prefetch query), some seen before."""
    _commit_ok(store, make.create_key())
    _commit_ok(store, *[make.sign(1, f"old-{i}", role=f"bins-{i}") for i in range(0, 450, 3)])
    out = store.append(
        [make.sign(1, f"old-{i}", role=f"bins-{i}") for i in range(0, 450, 9)]  # replays
        + [make.sign(2, f"new-{i}", role=f"bins-{i}") for i in range(450)]
        + [make.sign(2, "other", role="bins-0")]  # equivocation within the batch
    )
    replays = len(range(0, 450, 9))
    assert all(c.replayed and c.status == "OK" for c in out[:replays])
    assert all(c.status == "OK" and not c.replayed for c in out[replays:-1])
    assert out[-1].status == "FAILED_PRECONDITION"
    states = {s.role: s for s in store.list_role_states(KEY)}
    assert len(states) == 450
    assert all(states[f"bins-{i}"].payload_sha256 == make.digest(f"new-{i}") for i in range(450))
    verify_store(store)


# --- key lifecycle -------------------------------------------------------------------


@dataclass(frozen=True)
class KeyCase:
    """After ``create_key`` (version 1 ACTIVE) and ``setup``, ``step`` gives ``status``."""

    setup: tuple[Callable[[AuditFactory], Entry], ...]
    step: Callable[[AuditFactory], Entry]
    status: str
    reason: str  # regex; "" when applied
    states: dict[int, KeyState]  # the key's versions afterwards


A, P, R = KeyState.ACTIVE, KeyState.PENDING, KeyState.RETIRED
AT = "2025-02-01T00:00:00.000000Z"

KEY_CASES = [
    pytest.param(
        KeyCase(
            (), lambda m: m.create_key(), "ALREADY_EXISTS", "^key 'online' already exists$", {1: A}
        ),
        id="duplicate-create",
    ),
    pytest.param(
        KeyCase((), lambda m: m.add_version(KEY, 2), "OK", "", {1: A, 2: P}), id="add-version"
    ),
    pytest.param(
        KeyCase(
            (lambda m: m.add_version(KEY, 2),),
            lambda m: m.add_version(KEY, 2),
            "ALREADY_EXISTS",
            "^version 2 of key 'online' already exists$",
            {1: A, 2: P},
        ),
        id="add-duplicate-version",
    ),
    pytest.param(
        KeyCase(
            (),
            lambda m: m.add_version("nokey", 2),
            "NOT_FOUND",
            "^key 'nokey' does not exist$",
            {1: A},
        ),
        id="add-version-unknown-key",
    ),
    pytest.param(
        KeyCase(
            (lambda m: m.add_version(KEY, 2),),
            lambda m: m.set_state(KEY, 2, A, AT),
            "OK",
            "",
            {1: R, 2: A},
        ),
        id="activate-retires-previous",
    ),
    pytest.param(
        KeyCase(
            (lambda m: m.add_version(KEY, 2),),
            lambda m: m.set_state(KEY, 2, R, AT),
            "OK",
            "",
            {1: A, 2: R},
        ),
        id="retire-pending",
    ),
    pytest.param(
        KeyCase((), lambda m: m.set_state(KEY, 1, R, AT), "OK", "", {1: R}), id="retire-active"
    ),
    pytest.param(
        KeyCase(
            (lambda m: m.add_version(KEY, 2), lambda m: m.set_state(KEY, 2, A)),
            lambda m: m.set_state(KEY, 1, A, AT),
            "FAILED_PRECONDITION",
            "^version 1 of 'online' is RETIRED; retired versions never return$",
            {1: R, 2: A},
        ),
        id="reactivate-retired-refused",
    ),
    pytest.param(
        KeyCase(
            (lambda m: m.set_state(KEY, 1, R),),
            lambda m: m.set_state(KEY, 1, R, AT),
            "FAILED_PRECONDITION",
            "^version 1 of 'online' is RETIRED; retired versions never return$",
            {1: R},
        ),
        id="retire-retired-refused",
    ),
    pytest.param(
        KeyCase(
            (),
            lambda m: m.set_state(KEY, 1, A, AT),
            "FAILED_PRECONDITION",
            "^version 1 of 'online' is already ACTIVE$",
            {1: A},
        ),
        id="activate-active-refused",
    ),
    pytest.param(
        KeyCase(
            (),
            lambda m: m.set_state(KEY, 1, P, AT),
            "FAILED_PRECONDITION",
            "^version 1 of 'online' is ACTIVE; versions never return to PENDING$",
            {1: A},
        ),
        id="back-to-pending-refused",
    ),
    pytest.param(
        KeyCase(
            (),
            lambda m: m.set_state(KEY, 9, A, AT),
            "NOT_FOUND",
            "^version 9 of 'online' does not exist$",
            {1: A},
        ),
        id="unknown-version",
    ),
]


@pytest.mark.parametrize("case", KEY_CASES)
def test_key_lifecycle(store: AuditStore, make: AuditFactory, case: KeyCase) -> None:
    _commit_ok(store, make.create_key())
    for build in case.setup:
        _commit_ok(store, build(make))
    before = store.list_versions(KEY)

    [c] = store.append([case.step(make)])

    assert c.status == case.status
    assert c.current is None
    versions = store.list_versions(KEY)
    assert {v.version: v.state for v in versions} == case.states
    [record] = list(store.records(start_seq=c.seq))
    if case.status == "OK":
        assert c.reason == ""
        assert record.event.outcome is Outcome.GRANTED
    else:
        assert re.search(case.reason, c.reason), c.reason
        assert versions == before
        assert (record.event.outcome, record.event.status, record.event.reason) == (
            Outcome.REFUSED,
            case.status,
            c.reason,
        )


def test_create_key_reads_back(store: AuditStore, make: AuditFactory) -> None:
    entry = make.create_key()
    _commit_ok(store, entry, make.create_key("another", KeyState.PENDING))
    assert isinstance(entry.change, CreateKey)
    assert store.get_key(KEY) == entry.change.key
    assert [k.name for k in store.list_keys()] == ["another", KEY]
    assert store.list_versions(KEY) == [entry.change.first]


def test_activation_stamps_times(store: AuditStore, make: AuditFactory) -> None:
    _commit_ok(store, make.create_key(), make.add_version(KEY, 2), make.add_version(KEY, 3))
    _commit_ok(store, make.set_state(KEY, 2, A, AT))
    _commit_ok(store, make.set_state(KEY, 3, R, "2025-03-01T00:00:00.000000Z"))
    v1, v2, v3 = store.list_versions(KEY)
    assert (v1.state, v1.retired_at) == (R, AT)
    assert (v2.state, v2.activated_at, v2.retired_at) == (A, AT, None)
    assert (v3.state, v3.activated_at, v3.retired_at) == (R, None, "2025-03-01T00:00:00.000000Z")
    assert [v.version for v in store.list_versions(KEY)] == [1, 2, 3]


# --- durability ------------------------------------------------------------------------


def test_state_survives_reopen(open_store: Callable[[], AuditStore], make: AuditFactory) -> None:
    first = open_store()
    _commit_ok(first, make.create_key(), make.add_version(KEY, 2))
    _commit_ok(first, make.sign(1), make.sign(1, role="timestamp"))
    _commit_ok(first, make.set_state(KEY, 2, A, AT))
    records = list(first.records())
    keys, versions = first.list_keys(), first.list_versions(KEY)
    states, head = first.list_role_states(), first.head()
    first.close()
    with pytest.raises(StoreError, match="closed"):
        first.head()

    second = open_store()
    assert list(second.records()) == records
    assert second.list_keys() == keys
    assert second.list_versions(KEY) == versions
    assert second.list_role_states() == states
    assert second.head() == head
    # The chain and the high-water marks carry on where they were.
    out = second.append([make.sign(1, "other", key_version=2)])
    assert out[0].status == "FAILED_PRECONDITION"
    assert out[0].seq == head[0] + 1
    assert verify_store(second).records == head[0] + 1


# --- concurrency ---------------------------------------------------------------------


def test_reads_run_while_one_thread_appends(store: AuditStore, make: AuditFactory) -> None:
    _commit_ok(store, make.create_key())
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader(n: int) -> None:
        try:
            last_head = 0
            while not stop.is_set():
                seq, _ = store.head()
                assert seq >= last_head
                last_head = seq
                if n == 0:
                    verify_store(store)
                else:
                    assert verify_records(store.records()) >= seq
                    store.list_role_states()
                    store.get_role_state(KEY, f"bins-{n:04x}")
                    store.list_versions(KEY)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    try:
        for version in range(1, 41):
            store.append(
                [make.sign(version, f"p{version}", role=f"bins-{n:04x}") for n in range(8)]
                + [make.note()]
            )
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    report = verify_store(store)
    assert report.records == 1 + 40 * 9
    assert report.role_states == 8


# --- the health probe (issue 12, finding 3) ----------------------------------------------


def test_probe_writes_no_record(store: AuditStore, make: AuditFactory) -> None:
    store.append([make.create_key(), make.sign(1)])
    head = store.head()
    for _ in range(3):
        store.probe(timeout=2)
    assert store.head() == head
    assert verify_store(store).records == 2
    # The chain goes on from the same head.
    assert store.append([make.sign(2)])[0].seq == 3
    verify_store(store)


def _hold_writers_lock(other: AuditStore) -> Callable[[], None]:
    """Open a write transaction on ``other``'s connection, as an append does, and keep it.

    Another session of the same database: a second SQLite connection in BEGIN
    IMMEDIATE, or a PostgreSQL session holding the log's advisory lock.
    Returns the function that releases it.
    """
    assert isinstance(other, SqlAuditStore)
    conn = other._connection()
    cur = conn.cursor()
    for stmt in other._dialect.begin_write:
        cur.execute(stmt)
    return conn.rollback


def test_probe_fails_within_its_timeout_while_another_session_holds_the_lock(
    open_store: Callable[[], AuditStore], make: AuditFactory
) -> None:
    store, other = open_store(), open_store()
    store.append([make.create_key()])
    release = _hold_writers_lock(other)
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="audit store unavailable"):
            store.probe(timeout=0.5)
        assert time.monotonic() - started < 3  # a failure, not a hang
    finally:
        release()
    store.probe(timeout=2)  # the lock is free again: no reopen needed
    assert store.head()[0] == 1
