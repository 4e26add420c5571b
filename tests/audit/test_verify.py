"""Offline verification: a healthy log passes; every kind of tampering is named."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tuf_signer.audit import (
    GENESIS_HASH,
    AuditRecord,
    SqliteAuditStore,
    event_from_dict,
    event_to_dict,
    record_hash,
    verify_records,
    verify_store,
)
from tuf_signer.audit._chain import chain
from tuf_signer.audit._rows import record_params
from tuf_signer.errors import AuditChainError
from tuf_signer.model import KeyState, Outcome

if TYPE_CHECKING:
    from conftest import AuditFactory


@pytest.fixture
def db(tmp_path: Path, make: AuditFactory) -> Path:
    """A closed store with twelve records; record 12 last set the snapshot state."""
    path = tmp_path / "audit.db"
    with SqliteAuditStore(path) as store:
        plan = [
            (make.create_key(), "OK"),  # 1
            (make.add_version("online", 2), "OK"),  # 2
            (make.sign(1, "s1"), "OK"),  # 3
            (make.sign(1, "t1", role="timestamp"), "OK"),  # 4
            (make.note(outcome=Outcome.REFUSED, status="PERMISSION_DENIED"), "OK"),  # 5
            (make.sign(2, "s2"), "OK"),  # 6
            (make.sign(1, "s1-again"), "FAILED_PRECONDITION"),  # 7
            (make.sign(1, "b1", role="bins-0000"), "OK"),  # 8
            (make.set_state("online", 2, KeyState.ACTIVE), "OK"),  # 9
            (make.sign(2, "s2", key_version=2), "OK"),  # 10: re-signed after rotation
            (make.sign(2, "t2", role="timestamp", key_version=2), "OK"),  # 11
            (make.sign(3, "s3", key_version=2), "OK"),  # 12
        ]
        out = store.append([entry for entry, _ in plan[:6]])
        out += store.append([entry for entry, _ in plan[6:]])
        assert [c.status for c in out] == [status for _, status in plan]
        assert [c.seq for c in out] == list(range(1, 13))
    return path


def _records(path: Path) -> list[AuditRecord]:
    with SqliteAuditStore(path) as store:
        return list(store.records())


def test_healthy_store_verifies(db: Path) -> None:
    with SqliteAuditStore(db) as store:
        report = verify_store(store)
        assert report.records == 12
        assert (report.head_seq, report.head_hash) == store.head()
        assert report.role_states == 3


def test_exported_records_verify(db: Path) -> None:
    # An auditor's copy: JSON lines of (seq, event, prev_hash, hash).
    lines = [
        json.dumps(
            {
                "seq": r.seq,
                "event": event_to_dict(r.event),
                "prev_hash": r.prev_hash,
                "hash": r.hash,
            }
        )
        for r in _records(db)
    ]
    parsed = []
    for line in lines:
        d = json.loads(line)
        parsed.append(AuditRecord(d["seq"], event_from_dict(d["event"]), d["prev_hash"], d["hash"]))
    assert verify_records(parsed) == 12


def test_empty_log_verifies(tmp_path: Path) -> None:
    assert verify_records([]) == 0
    with SqliteAuditStore(tmp_path / "empty.db") as store:
        report = verify_store(store)
    assert (report.records, report.head_seq, report.head_hash, report.role_states) == (
        0,
        0,
        GENESIS_HASH,
        0,
    )


@pytest.mark.parametrize(
    ("pick", "seq", "match"),
    [
        pytest.param(
            lambda rs: rs[1:],
            1,
            r"^record 2 is the first record: record 1 missing",
            id="first-missing",
        ),
        pytest.param(
            lambda rs: rs[:3] + rs[5:],
            4,
            r"^record 6 follows record 3: records 4\.\.5 missing",
            id="two-missing",
        ),
        pytest.param(
            lambda rs: rs[:3] + rs[2:],
            3,
            r"^record 3 follows record 3: records out of order",
            id="duplicated",
        ),
    ],
)
def test_verify_records_on_a_broken_list(
    db: Path, pick: Callable[[list[AuditRecord]], list[AuditRecord]], seq: int, match: str
) -> None:
    with pytest.raises(AuditChainError, match=match) as caught:
        verify_records(pick(_records(db)))
    assert caught.value.seq == seq


# --- tampering with the database file, with plain SQL -----------------------------


@dataclass(frozen=True)
class Tamper:
    sql: tuple[str, ...]
    seq: int
    match: str
    rehash: int | None = None  # recompute this record's hash after the edit


TAMPERING = [
    pytest.param(
        Tamper(("UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 5",), 5,
               r"^record 5: hash does not match its contents \(edited\?\)$"),
        id="edit-a-field",
    ),
    pytest.param(
        Tamper(("UPDATE audit_log SET metadata_version = 9 WHERE seq = 4",), 4,
               r"^record 4: hash does not match its contents"),
        id="edit-a-signed-version",
    ),
    pytest.param(
        Tamper(("UPDATE audit_log SET identity = 'someone-else' WHERE seq = 5",), 6,
               r"^record 6: previous-hash link broken \(record deleted or reordered\?\)$",
               rehash=5),
        id="edit-and-rehash",
    ),
    pytest.param(
        Tamper(("DELETE FROM audit_log WHERE seq = 5",), 5,
               r"^record 6 follows record 4: record 5 missing \(deleted\?\)$"),
        id="delete-a-record",
    ),
    pytest.param(
        Tamper(("DELETE FROM audit_log WHERE seq = 1",), 1,
               r"^record 2 is the first record: record 1 missing"),
        id="delete-the-first-record",
    ),
    pytest.param(
        Tamper(
            (
                "DELETE FROM audit_log WHERE seq = 5",
                *(f"UPDATE audit_log SET seq = {n - 1} WHERE seq = {n}" for n in range(6, 13)),
                "UPDATE role_state SET audit_seq = audit_seq - 1 WHERE audit_seq > 5",
            ),
            5,
            r"^record 5: previous-hash link broken",
        ),
        id="delete-and-renumber",
    ),
    pytest.param(
        Tamper(
            (
                "UPDATE audit_log SET seq = -1 WHERE seq = 4",
                "UPDATE audit_log SET seq = 4 WHERE seq = 7",
                "UPDATE audit_log SET seq = 7 WHERE seq = -1",
            ),
            4,
            r"^record 4: previous-hash link broken",
        ),
        id="swap-two-records",
    ),
    pytest.param(
        Tamper(("DELETE FROM audit_log WHERE seq = 12",), 12,
               r"^role 'snapshot' of key 'online': its record 12 is missing \(log truncated\?\)$"),
        id="delete-the-last-record",
    ),
    pytest.param(
        Tamper(("UPDATE audit_log SET detail = 'not json' WHERE seq = 3",), 3,
               r"^record 3: unreadable"),
        id="unreadable-row",
    ),
    pytest.param(
        Tamper(("UPDATE role_state SET signature = '00' WHERE role = 'timestamp'",), 11,
               r"^role 'timestamp' of key 'online' does not match its record 11: "
               r"signature differ \(role state edited\?\)$"),
        id="edit-role-state",
    ),
    pytest.param(
        Tamper(("UPDATE role_state SET version = 99 WHERE role = 'snapshot'",), 12,
               r"^role 'snapshot' of key 'online' does not match its record 12: version differ"),
        id="edit-role-state-version",
    ),
    pytest.param(
        Tamper(
            (
                "UPDATE role_state SET (version, payload_sha256, keyid, key_version, signature,"
                " audit_seq) = (SELECT metadata_version, payload_sha256, keyid, key_version,"
                " signature, seq FROM audit_log WHERE seq = 6) WHERE role = 'snapshot'",
            ),
            12,
            r"^role 'snapshot' of key 'online' \(version 2\) is not the last signature of that "
            r"role, record 12 \(version 3\); role state rolled back\?$",
        ),
        id="roll-role-state-back",
    ),
    pytest.param(
        Tamper(("UPDATE role_state SET audit_seq = 5 WHERE role = 'bins-0000'",), 5,
               r"^role 'bins-0000' of key 'online': its record 5 is not a granted signature"),
        id="point-role-state-elsewhere",
    ),
    pytest.param(
        Tamper(("DELETE FROM role_state WHERE role = 'bins-0000'",), 8,
               r"^role 'bins-0000' of key 'online': record 8 signed version 1 but there is no "
               r"role state \(role state deleted\?\)$"),
        id="delete-role-state",
    ),
]  # fmt: skip


@pytest.mark.parametrize("tamper", TAMPERING)
def test_tampering_is_named(db: Path, tamper: Tamper) -> None:
    conn = sqlite3.connect(db)  # a plain client: foreign keys off, no store rules
    for sql in tamper.sql:
        conn.execute(sql)
    conn.commit()
    if tamper.rehash is not None:
        [record] = [r for r in _records(db) if r.seq == tamper.rehash]
        forged = record_hash(record.prev_hash, record.seq, record.event)
        conn.execute("UPDATE audit_log SET hash = ? WHERE seq = ?", (forged, record.seq))
        conn.commit()
    conn.close()

    with (
        SqliteAuditStore(db) as store,
        pytest.raises(AuditChainError, match=tamper.match) as caught,
    ):
        verify_store(store)
    assert caught.value.seq == tamper.seq
    assert caught.value.code == "DATA_LOSS"


def test_a_tampered_store_verified_by_records_alone_misses_a_cut_tail(db: Path) -> None:
    # Documented limit: the chain alone cannot see its last records cut off; the
    # role-state cross-check (above) or, later, signed checkpoints can.
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM audit_log WHERE seq = 12")
    conn.commit()
    conn.close()
    assert verify_records(_records(db)) == 11


def test_replayed_state_record_verifies(db: Path, make: AuditFactory) -> None:
    with SqliteAuditStore(db) as store:
        [c] = store.append([make.sign(3, "s3", key_version=2)])
        assert c.replayed
        report = verify_store(store)
    assert report.records == 13


def test_a_forged_role_state_edit_needs_the_record_too(db: Path) -> None:
    # Editing the record and the role state together still breaks the chain.
    conn = sqlite3.connect(db)
    conn.execute("UPDATE role_state SET signature = 'ff' WHERE role = 'timestamp'")
    conn.execute("UPDATE audit_log SET signature = 'ff' WHERE seq = 11")
    conn.commit()
    conn.close()
    with (
        SqliteAuditStore(db) as store,
        pytest.raises(AuditChainError, match=r"^record 11: hash") as caught,
    ):
        verify_store(store)
    assert caught.value.seq == 11


def test_records_from_dict_round_trip_keep_the_hash(db: Path) -> None:
    for r in _records(db):
        again = replace(r, event=event_from_dict(event_to_dict(r.event)))
        assert record_hash(again.prev_hash, again.seq, again.event) == r.hash


@pytest.mark.parametrize(
    ("version", "payload", "match"),
    [
        pytest.param(
            2,
            "older",
            r"^record 13: rollback on record: version 2 of role 'snapshot' with key 'online' "
            r"was granted after version 3 \(record 12\)$",
            id="rollback",
        ),
        pytest.param(
            3,
            "other",
            r"^record 13: equivocation on record: version 3 of role 'snapshot' with key "
            r"'online' was granted for another payload in record 12$",
            id="equivocation",
        ),
    ],
)
def test_a_forged_grant_on_a_rebuilt_chain_breaks_p3(
    db: Path, make: AuditFactory, version: int, payload: str, match: str
) -> None:
    # A forger with write access appends a correctly chained record granting a
    # signature the store would have refused: the chain holds, P3 does not.
    last = _records(db)[-1]
    forged = chain(last.hash, 13, make.sign(version, payload, key_version=2).event)
    conn = sqlite3.connect(db)
    marks = ", ".join("?" * len(record_params(forged)))
    conn.execute(f"INSERT INTO audit_log VALUES ({marks})", record_params(forged))
    conn.commit()
    conn.close()
    for check in (lambda: verify_records(_records(db)), lambda: _verify_store_at(db)):
        with pytest.raises(AuditChainError, match=match) as caught:
            check()
        assert caught.value.seq == 13


def _verify_store_at(path: Path) -> None:
    with SqliteAuditStore(path) as store:
        verify_store(store)


# --- admin resets (issue 10, finding 8) ----------------------------------------------


@pytest.fixture
def reset_db(db: Path, make: AuditFactory) -> Path:
    """``db`` plus: snapshot reset from 3 down to 1 (record 13), then v2 signed (record 14);
    timestamp reset to 50 (record 15), nothing signed after it."""
    with SqliteAuditStore(db) as store:
        out = store.append(
            [
                make.reset(1, key_version=2),
                make.sign(2, "s2-after-reset", key_version=2),
                make.reset(50, role="timestamp", key_version=2),
            ]
        )
        assert [c.status for c in out] == ["OK"] * 3
    return db


def test_a_store_with_resets_verifies(reset_db: Path) -> None:
    # Version 2 of snapshot was granted twice (records 6 and 14) for different
    # payloads: the reset between them explains it.
    assert verify_records(_records(reset_db)) == 15
    with SqliteAuditStore(reset_db) as store:
        report = verify_store(store)
    assert (report.records, report.role_states) == (15, 3)


RESET_TAMPERING = [
    pytest.param(
        ("UPDATE role_state SET version = 2 WHERE role = 'timestamp'",), 15,
        r"^role 'timestamp' of key 'online' does not match its record 15: version differ "
        r"\(role state edited\?\)$",
        id="f8-edit-role-state-after-reset",
    ),
    pytest.param(
        # Back to the last signature before the reset, as if the reset never happened.
        ("UPDATE role_state SET (version, payload_sha256, keyid, key_version, signature,"
         " expires, audit_seq) = (SELECT metadata_version, payload_sha256, keyid, key_version,"
         " signature, expires, seq FROM audit_log WHERE seq = 11) WHERE role = 'timestamp'",),
        15,
        r"^role 'timestamp' of key 'online' \(version 2\) is not the last signature of that "
        r"role, record 15 \(version 50\); role state rolled back\?$",
        id="f8-undo-a-reset-in-the-role-state",
    ),
    pytest.param(
        ("DELETE FROM role_state WHERE role = 'timestamp'",), 15,
        r"^role 'timestamp' of key 'online': record 15 reset the mark to version 50 but there "
        r"is no role state \(role state deleted\?\)$",
        id="f8-delete-role-state-after-reset",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "seq", "match"), RESET_TAMPERING)
def test_tampering_after_a_reset_is_named(
    reset_db: Path, sql: tuple[str, ...], seq: int, match: str
) -> None:
    conn = sqlite3.connect(reset_db)
    for statement in sql:
        conn.execute(statement)
    conn.commit()
    conn.close()
    with pytest.raises(AuditChainError, match=match) as caught:
        _verify_store_at(reset_db)
    assert caught.value.seq == seq


@pytest.mark.parametrize("version", [50, 49], ids=["f8-at-the-reset", "f8-below-the-reset"])
def test_a_forged_grant_at_or_below_a_reset_breaks_p3(
    reset_db: Path, make: AuditFactory, version: int
) -> None:
    last = _records(reset_db)[-1]
    forged = chain(last.hash, 16, make.sign(version, "x", role="timestamp", key_version=2).event)
    conn = sqlite3.connect(reset_db)
    marks = ", ".join("?" * len(record_params(forged)))
    conn.execute(f"INSERT INTO audit_log VALUES ({marks})", record_params(forged))
    conn.commit()
    conn.close()
    match = (
        rf"^record 16: rollback on record: version {version} of role 'timestamp' with key "
        r"'online' was granted after an admin reset to version 50 \(record 15\)$"
    )
    with pytest.raises(AuditChainError, match=match):
        verify_records(_records(reset_db))
