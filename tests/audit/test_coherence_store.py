"""Coherence (issue 14, P9) decided in the store's transaction, in every store.

A snapshot may list a bin neither below what the key's last snapshot listed nor
at a version the key never signed; a timestamp may name a snapshot version
neither below the last one named nor above the key's snapshot mark; changed
delegations need an admin's approval. Decided inside ``append``, so two stores
on one database (two workers, two replicas) and a reopened store (a restart)
hold the same line; the role_coherence rows come from migration 4 -> 5 too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tuf_signer.audit import (
    AdvanceRole,
    ApproveDelegations,
    AuditStore,
    Entry,
    ResetRole,
    SetKeyRules,
    SqliteAuditStore,
    verify_store,
)
from tuf_signer.model import RoleRule

from .conftest import AuditFactory, sha

Lists = Sequence[tuple[str, int, bool]]


def _sign(
    make: AuditFactory,
    role: str,
    version: int,
    payload: str = "",
    *,
    lists: Lists | None = None,
    delegations: str = "",
    known: bool = True,
) -> Entry:
    entry = make.sign(version, payload or f"{role}-{version}", role=role)
    change = entry.change
    assert isinstance(change, AdvanceRole)
    lists_ = None if lists is None else tuple(lists)
    change = replace(change, lists=lists_, delegations=delegations, delegations_known=known)
    return replace(entry, change=change)


def _snapshot(make: AuditFactory, version: int, *bins: tuple[str, int]) -> Entry:
    return _sign(make, "snapshot", version, lists=[(r, v, True) for r, v in bins])


def _timestamp(make: AuditFactory, version: int, snapshot: int) -> Entry:
    return _sign(make, "timestamp", version, lists=[("snapshot", snapshot, False)])


def _status(store: AuditStore, *entries: Entry) -> list[tuple[str, str]]:
    return [(c.status, c.reason) for c in store.append(list(entries))]


@pytest.fixture
def store(open_store: Callable[[], AuditStore], make: AuditFactory) -> AuditStore:
    s = open_store()
    assert s.append([make.create_key()])[0].status == "OK"
    return s


# --- snapshots -------------------------------------------------------------------------

SnapshotCase = tuple[list[tuple[str, int]], str, str]

# Each case: the bins signed before (role, version, in one batch), the snapshot's
# listing beyond what a first snapshot listed (bins-00@1, bins-01@2), and the
# refusal (status, reason fragment) or OK.
SNAPSHOT_CASES: dict[str, tuple[list[tuple[str, int]], list[tuple[str, int]], str, str]] = {
    "same-listing": ([], [("bins-00", 1), ("bins-01", 2)], "OK", ""),
    "a-bin-moves-up": ([("bins-00", 2)], [("bins-00", 2), ("bins-01", 2)], "OK", ""),
    "rolls-a-bin-back": (
        [],
        [("bins-00", 1), ("bins-01", 1)],
        "FAILED_PRECONDITION",
        "lists 'bins-01' at version 1, below version 2 that the last snapshot",
    ),
    "above-the-mark": (
        [],
        [("bins-00", 3)],
        "FAILED_PRECONDITION",
        "lists 'bins-00' at version 3, which key 'online' never signed "
        "(its mark for 'bins-00' is version 1",
    ),
    "a-bin-never-signed": (
        [],
        [("bins-7f", 1)],
        "FAILED_PRECONDITION",
        "it never signed 'bins-7f'",
    ),
}


@pytest.mark.parametrize("case", SNAPSHOT_CASES.values(), ids=SNAPSHOT_CASES.keys())
def test_snapshot_listing_is_held_against_the_marks_and_the_last_snapshot(
    store: AuditStore, make: AuditFactory, case: Any
) -> None:
    before, listing, status, reason = case
    out = _status(
        store,
        _sign(make, "bins-00", 1),
        _sign(make, "bins-01", 1),
        _sign(make, "bins-01", 2),
        _snapshot(make, 1, ("bins-00", 1), ("bins-01", 2)),
        *(_sign(make, r, v) for r, v in before),
    )
    assert {s for s, _ in out} == {"OK"}
    mark = store.get_role_state("online", "snapshot")
    (got,) = _status(store, _snapshot(make, 2, *listing))
    assert got[0] == status
    assert reason in got[1]
    if status != "OK":
        # Refused in the transaction: the mark did not move, nothing was listed.
        assert store.get_role_state("online", "snapshot") == mark
        (again,) = _status(store, _snapshot(make, 3, ("bins-00", 1), ("bins-01", 2)))
        assert again == ("OK", "")
    verify_store(store)


def test_a_bin_and_the_snapshot_listing_it_may_share_one_batch(
    store: AuditStore, make: AuditFactory
) -> None:
    out = _status(
        store,
        _sign(make, "bins-00", 1),
        _snapshot(make, 1, ("bins-00", 1)),
        _sign(make, "bins-00", 2),
        _snapshot(make, 2, ("bins-00", 2)),
        _snapshot(make, 3, ("bins-00", 1)),  # the batch's own listing counts already
    )
    assert [s for s, _ in out] == ["OK", "OK", "OK", "OK", "FAILED_PRECONDITION"]
    assert "below version 2" in out[-1][1]


def test_an_empty_bin_vouches_for_its_version_of_every_bin(
    store: AuditStore, make: AuditFactory
) -> None:
    # A role-less empty bin is attributed to the empty bin of its payload
    # (policy.empty_bin_role): the bins never signed by name may be listed at
    # its version, not at another.
    empty = "bins" + "-*empty-" + sha("empty v1")
    out = _status(
        store,
        _sign(make, empty, 1),
        _snapshot(make, 1, ("bins-00", 1), ("bins-ff", 1)),
        _snapshot(make, 2, ("bins-00", 2)),
    )
    assert [s for s, _ in out] == ["OK", "OK", "FAILED_PRECONDITION"]
    assert "no empty bin at version 2" in out[-1][1]
    # A bin that later held targets and became empty again is listed at the
    # empty version and can never be listed lower again.
    out = _status(
        store,
        _sign(make, "bins-00", 2),
        _sign(make, "bins" + "-*empty-" + sha("empty v3"), 3),
        _snapshot(make, 3, ("bins-00", 3), ("bins-ff", 1)),
        _snapshot(make, 4, ("bins-00", 2), ("bins-ff", 1)),
    )
    assert [s for s, _ in out] == ["OK", "OK", "OK", "FAILED_PRECONDITION"]
    assert "lists 'bins-00' at version 2, below version 3" in out[-1][1]


# --- timestamps ------------------------------------------------------------------------

TIMESTAMP_CASES = {
    "names-the-mark": (2, "OK", ""),
    "names-an-older-signed-version": (1, "FAILED_PRECONDITION", "below version 2"),
    "names-an-unsigned-version": (3, "FAILED_PRECONDITION", "never signed (its snapshot mark"),
}


@pytest.mark.parametrize("case", TIMESTAMP_CASES.values(), ids=TIMESTAMP_CASES.keys())
def test_timestamp_names_a_signed_snapshot_never_below_the_last(
    store: AuditStore, make: AuditFactory, case: tuple[int, str, str]
) -> None:
    named, status, reason = case
    out = _status(
        store,
        _snapshot(make, 1),
        _snapshot(make, 2),
        _timestamp(make, 1, 2),
    )
    assert {s for s, _ in out} == {"OK"}
    (got,) = _status(store, _timestamp(make, 2, named))
    assert got[0] == status and reason in got[1]


def test_a_key_without_snapshots_is_held_to_the_last_timestamp_only(
    store: AuditStore, make: AuditFactory
) -> None:
    # Its snapshots may be another key's; it still never names a lower one.
    out = _status(store, _timestamp(make, 1, 7), _timestamp(make, 2, 6))
    assert [s for s, _ in out] == ["OK", "FAILED_PRECONDITION"]


def test_entries_without_a_listing_are_not_held(store: AuditStore, make: AuditFactory) -> None:
    # A key without a bins declaration: the service sends no listing.
    out = _status(store, make.sign(1, role="snapshot"), make.sign(2, "b", role="timestamp"))
    assert [s for s, _ in out] == ["OK", "OK"]


# --- delegations -----------------------------------------------------------------------


def _approve(make: AuditFactory, role: str, digest: str) -> Entry:
    event = make.event("approve-delegations", identity="admin", key_name="online", role=role)
    return Entry(event, ApproveDelegations("online", role, digest))


def test_changed_delegations_need_an_approval_used_up_by_one_signature(
    store: AuditStore, make: AuditFactory
) -> None:
    a, b, c = sha("delegations a"), sha("delegations b"), sha("delegations c")
    out = _status(
        store,
        _sign(make, "targets", 1, delegations=a),  # the first one sets the line
        _sign(make, "targets", 2, delegations=a),
        _sign(make, "targets", 3, delegations=b),
    )
    assert [s for s, _ in out][:2] == ["OK", "OK"]
    assert out[2][0] == "FAILED_PRECONDITION"
    assert f"(sha256 {b}) differ" in out[2][1] and "approve-delegations" in out[2][1]
    out = _status(
        store,
        _approve(make, "targets", b),
        _sign(make, "targets", 3, delegations=b),
        _sign(make, "targets", 4, delegations=c),  # the approval was for b only
        _sign(make, "targets", 4, "again", delegations=b),
    )
    assert [s for s, _ in out] == ["OK", "OK", "FAILED_PRECONDITION", "OK"]
    # Approving b again and then signing a: a differs from b, not approved.
    out = _status(store, _approve(make, "targets", c), _sign(make, "targets", 5, delegations=a))
    assert [s for s, _ in out] == ["OK", "FAILED_PRECONDITION"]


def test_first_delegations_to_a_key_outside_the_registry_need_an_approval(
    store: AuditStore, make: AuditFactory
) -> None:
    # No trust on first use: a compromised backend signing top-level targets
    # first would choose who signs the bins.
    a, b = sha("delegations a"), sha("delegations b")
    out = _status(store, _sign(make, "targets", 1, delegations=a, known=False))
    assert out[0][0] == "FAILED_PRECONDITION"
    assert f"(sha256 {a}) are the first" in out[0][1] and "approve-delegations" in out[0][1]
    assert store.get_role_state("online", "targets") is None
    out = _status(
        store,
        _approve(make, "targets", a),
        _sign(make, "targets", 1, delegations=a, known=False),
        _sign(make, "snapshot", 1, delegations=b),  # another role: known keyids pass
    )
    assert [s for s, _ in out] == ["OK", "OK", "OK"]


def test_set_key_rules_replaces_the_rules(store: AuditStore, make: AuditFactory) -> None:
    rules = (RoleRule("targets", 365 * 86400), RoleRule("snapshot", 86400))
    event = make.event("set-key-rules", identity="admin", key_name="online")
    (c,) = store.append([Entry(event, SetKeyRules("online", rules))])
    assert c.status == "OK"
    key = store.get_key("online")
    assert key is not None and key.rules == rules
    (c,) = store.append([Entry(replace(event, key_name="nope"), SetKeyRules("nope", rules))])
    assert c.status == "NOT_FOUND"


# --- resets, restarts, two writers, migration ---------------------------------------------


def test_a_reset_brings_the_listing_down_so_a_repository_can_start_again(
    store: AuditStore, make: AuditFactory
) -> None:
    _status(
        store,
        _sign(make, "bins-00", 5),
        _snapshot(make, 5, ("bins-00", 5)),
        _timestamp(make, 5, 5),
    )
    # Without resets, starting again at 1 is refused...
    (got,) = _status(store, _sign(make, "bins-00", 1, "fresh"))
    assert got[0] == "FAILED_PRECONDITION"
    # ...after resetting bins-00, snapshot and timestamp to 0, it goes through.
    out = _status(
        store,
        make.reset(0, role="bins-00"),
        make.reset(0, role="snapshot"),
        make.reset(0, role="timestamp"),
        _sign(make, "bins-00", 1, "fresh"),
        _snapshot(make, 1, ("bins-00", 1)),
        _timestamp(make, 1, 1),
    )
    assert {s for s, _ in out} == {"OK"}, out
    verify_store(store)


def _reset(make: AuditFactory, role: str, *, drop_listings: bool = False) -> Entry:
    entry = make.reset(0, role=role)
    assert isinstance(entry.change, ResetRole)
    return replace(entry, change=replace(entry.change, drop_listings=drop_listings))


@pytest.mark.parametrize(
    ("drop_listings", "status"), [(False, "FAILED_PRECONDITION"), (True, "OK")], ids=str
)
def test_a_snapshot_reset_keeps_the_bins_floors_unless_every_role_starts_again(
    store: AuditStore, make: AuditFactory, drop_listings: bool, status: str
) -> None:
    _status(
        store,
        _sign(make, "bins-00", 1),
        _sign(make, "bins-00", 2, "two"),
        _snapshot(make, 2, ("bins-00", 2)),
    )
    # A reset of snapshot alone (keys reset-role) must not roll every bin back at
    # once; reset-roles (every role starts again) drops the floors.
    out = _status(
        store,
        _reset(make, "snapshot", drop_listings=drop_listings),
        _snapshot(make, 1, ("bins-00", 1)),
    )
    assert out[0][0] == "OK"
    assert out[1][0] == status, out
    if status != "OK":
        assert "below version 2 that the last snapshot" in out[1][1]


def test_coherence_holds_across_two_stores_and_a_reopen(
    open_store: Callable[[], AuditStore], make: AuditFactory
) -> None:
    one, two = open_store(), open_store()
    assert one.append([make.create_key()])[0].status == "OK"
    assert {s for s, _ in _status(one, _sign(make, "bins-00", 1), _sign(make, "bins-00", 2))} == {
        "OK"
    }
    assert _status(two, _snapshot(make, 1, ("bins-00", 2)))[0][0] == "OK"
    # The other worker's snapshot listed bins-00 at 2: a rollback to 1 is refused here.
    assert _status(one, _snapshot(make, 2, ("bins-00", 1)))[0][0] == "FAILED_PRECONDITION"
    one.close()
    two.close()
    again = open_store()
    assert _status(again, _snapshot(make, 2, ("bins-00", 1)))[0][0] == "FAILED_PRECONDITION"
    assert _status(again, _snapshot(make, 2, ("bins-00", 2)))[0][0] == "OK"
    again.close()


def test_a_snapshot_of_16384_bins_reads_the_key_in_two_queries(
    tmp_path: Path, make: AuditFactory
) -> None:
    store = SqliteAuditStore(tmp_path / "audit.db")
    store.append([make.create_key()])
    bins = [f"bins-{n:04x}" for n in range(1 << 14)]
    store.append([_sign(make, b, 1) for b in bins])
    statements: list[str] = []
    conn = store._connection()  # the writer thread's connection is this thread's
    conn.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    try:
        (got,) = _status(store, _snapshot(make, 1, *((b, 1) for b in bins)))
    finally:
        conn.set_trace_callback(None)  # type: ignore[attr-defined]
    assert got == ("OK", "")
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert sum("FROM role_state WHERE key_name" in s and " IN " not in s for s in selects) == 1
    assert sum("FROM role_coherence" in s for s in selects) == 1
    assert len(selects) < 10, selects
    # The next snapshot writes only what changed: nothing.
    statements.clear()
    conn.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    try:
        assert _status(store, _snapshot(make, 2, *((b, 1) for b in bins)))[0][0] == "OK"
    finally:
        conn.set_trace_callback(None)  # type: ignore[attr-defined]
    assert not any("role_coherence (key_name" in s for s in statements)
    # A timestamp reads its snapshot's rows only, not the key's 16,384 bins.
    statements.clear()
    conn.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    try:
        assert _status(store, _timestamp(make, 1, 2))[0] == ("OK", "")
    finally:
        conn.set_trace_callback(None)  # type: ignore[attr-defined]
    assert not any(
        "FROM role_state WHERE key_name = ?\n" in s
        or s.rstrip().endswith("FROM role_state WHERE key_name = 'online'")
        for s in statements
    ), statements
    assert any("FROM role_coherence WHERE key_name = 'online' AND role IN" in s for s in statements)
    store.close()


def test_a_version_4_store_gains_the_coherence_table(tmp_path: Path, make: AuditFactory) -> None:
    path = tmp_path / "audit.db"
    SqliteAuditStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE role_coherence")
        db.execute("UPDATE schema_version SET version = 4")
    store = SqliteAuditStore(path)
    store.append([make.create_key()])
    assert _status(store, _sign(make, "bins-00", 1), _snapshot(make, 1, ("bins-00", 1))) == [
        ("OK", ""),
        ("OK", ""),
    ]
    assert _status(store, _snapshot(make, 2, ("bins-00", 0 + 1)))[0][0] == "OK"
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(5,)]
        assert db.execute("SELECT role, listed FROM role_coherence").fetchall() == [("bins-00", 1)]
