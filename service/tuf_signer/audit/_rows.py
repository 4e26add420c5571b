"""Rows and models: the columns of each table, the SQL that reads and writes them.

The SQL is shared by every dialect and written in qmark style (``?``; see
``Dialect.translate``). Each ``*_COLUMNS`` list fixes the order that the
``row_to_*`` and ``*_params`` functions below read and write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tuf_signer.audit._chain import EVENT_FIELDS, canonical_json, event_from_dict
from tuf_signer.audit._store import (
    AddVersion,
    AuditRecord,
    CreateKey,
    SetKeyRules,
    SetVersionState,
)
from tuf_signer.errors import AuditChainError, RequestError, StoreError, shown
from tuf_signer.model import (
    Algorithm,
    BinsDelegation,
    KeyRecord,
    KeyState,
    KeyVersion,
    RoleRule,
    RoleState,
)

# records() reads this many rows per query, so that a long log never sits in
# memory at once and no read transaction stays open between pages.
PAGE = 1000
_LOWER_HEX = frozenset("0123456789abcdef")

RECORD_COLUMNS = ("seq", *EVENT_FIELDS, "prev_hash", "hash")
SELECT_RECORDS = (
    f"SELECT {', '.join(RECORD_COLUMNS)} FROM audit_log WHERE seq >= ? ORDER BY seq LIMIT {PAGE}"
)
INSERT_RECORD = (
    f"INSERT INTO audit_log ({', '.join(RECORD_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in RECORD_COLUMNS)})"
)
HEAD = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
# Parameters: the digest, then the limit. Index ``audit_log_payload`` (schema 4).
FIND_RECORDS = (
    f"SELECT {', '.join(RECORD_COLUMNS)} FROM audit_log WHERE payload_sha256 = ?"
    " ORDER BY seq LIMIT ?"
)
# The same, granted signatures only: refusals (a gate retried many times) cannot
# push the record of a signature out of the limit (issue 13 review, finding 10).
FIND_GRANTED_SIGNS = (
    f"SELECT {', '.join(RECORD_COLUMNS)} FROM audit_log WHERE payload_sha256 = ?"
    " AND operation = 'sign' AND outcome = 'granted' ORDER BY seq LIMIT ?"
)

KEY_COLUMNS = "name, algorithm, backend, rules, created_at, bins"
VERSION_COLUMNS = (
    "key_name, version, state, keyid, public_key, handle, created_at, activated_at, retired_at"
)
ROLE_COLUMNS = (
    "key_name, role, version, payload_sha256, keyid, key_version, signature, expires, audit_seq"
)
INSERT_KEY = f"INSERT INTO keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
INSERT_VERSION = f"INSERT INTO key_versions ({VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_ROLE = f"INSERT INTO role_state ({ROLE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
# Parameters: role_params(state)[2:], then key_name and role.
UPDATE_ROLE = (
    "UPDATE role_state SET version = ?, payload_sha256 = ?, keyid = ?, key_version = ?,"
    " signature = ?, expires = ?, audit_seq = ? WHERE key_name = ? AND role = ?"
)
# Parameters: (at, key_name), then (at, key_name, version) for the next two.
RETIRE_ACTIVE = (
    "UPDATE key_versions SET state = 'RETIRED', retired_at = ?"
    " WHERE key_name = ? AND state = 'ACTIVE'"
)
ACTIVATE_VERSION = (
    "UPDATE key_versions SET state = 'ACTIVE', activated_at = ? WHERE key_name = ? AND version = ?"
)
RETIRE_VERSION = (
    "UPDATE key_versions SET state = 'RETIRED', retired_at = ? WHERE key_name = ? AND version = ?"
)

GET_ROLE = f"SELECT {ROLE_COLUMNS} FROM role_state WHERE key_name = ? AND role = ?"
GET_KEY = f"SELECT {KEY_COLUMNS} FROM keys WHERE name = ?"
GET_VERSION = f"SELECT {VERSION_COLUMNS} FROM key_versions WHERE key_name = ? AND version = ?"
LIST_KEYS = f"SELECT {KEY_COLUMNS} FROM keys"
LIST_VERSIONS = f"SELECT {VERSION_COLUMNS} FROM key_versions WHERE key_name = ? ORDER BY version"
LIST_ROLES = f"SELECT {ROLE_COLUMNS} FROM role_state"
LIST_KEY_ROLES = f"SELECT {ROLE_COLUMNS} FROM role_state WHERE key_name = ?"
SET_KEY_RULES = "UPDATE keys SET rules = ? WHERE name = ?"

# role_coherence (schema 5, issue 14): per (key, role), what the key's last
# snapshot listed (for "snapshot": what its last timestamp named), the digest
# of the delegations last signed, and a digest an admin approved.
COHERENCE_COLUMNS = ("listed", "delegations", "approved")
# What coherence reads of every role of a key: the mark and whether a signature set it.
LIST_KEY_MARKS = "SELECT role, version, payload_sha256 FROM role_state WHERE key_name = ?"
LIST_KEY_COHERENCE = (
    "SELECT role, listed, delegations, approved FROM role_coherence WHERE key_name = ?"
)


def get_coherence(count: int) -> str:
    """The ``role_coherence`` rows of ``count`` roles of one key: parameters key_name, roles."""
    marks = ", ".join("?" for _ in range(count))
    return (
        "SELECT role, listed, delegations, approved FROM role_coherence"
        f" WHERE key_name = ? AND role IN ({marks})"
    )


def upsert_coherence(column: str) -> str:
    """The statement that sets one ``role_coherence`` column: parameters key_name, role, value.

    ``INSERT … ON CONFLICT DO UPDATE`` (SQLite 3.24+, PostgreSQL 9.5+).
    """
    if column not in COHERENCE_COLUMNS:
        raise ValueError(f"unknown role_coherence column {column!r}")
    return (
        f"INSERT INTO role_coherence (key_name, role, {column}) VALUES (?, ?, ?)"
        f" ON CONFLICT (key_name, role) DO UPDATE SET {column} = excluded.{column}"
    )


def check_digest(payload_sha256: object) -> None:
    """Refuse anything but a SHA-256 digest as records store it: 64 lowercase hex digits.

    Raises:
        RequestError: names what is wrong, without echoing more than a bounded prefix.
    """
    if not isinstance(payload_sha256, str):
        raise RequestError("payload_sha256 must be a string")
    if len(payload_sha256) != 64 or not set(payload_sha256) <= _LOWER_HEX:
        raise RequestError(
            f"payload_sha256 {shown(payload_sha256)} is not 64 lowercase hex digits (a SHA-256)"
        )


def get_roles(count: int) -> str:
    """The query for ``count`` roles of one key: parameters key_name, then the roles."""
    marks = ", ".join("?" for _ in range(count))
    return f"SELECT {ROLE_COLUMNS} FROM role_state WHERE key_name = ? AND role IN ({marks})"


def record_params(record: AuditRecord) -> tuple[Any, ...]:
    """The ``audit_log`` row of ``record``, in ``RECORD_COLUMNS`` order."""
    event = record.event
    values: list[Any] = [record.seq]
    for name in EVENT_FIELDS:
        value = getattr(event, name)
        if name == "outcome":
            value = event.outcome.value
        elif name == "detail":
            value = canonical_json(event.detail)
        values.append(value)
    return (*values, record.prev_hash, record.hash)


def row_to_record(row: Sequence[Any]) -> AuditRecord:
    """The record stored in an ``audit_log`` row (unverified).

    Raises:
        AuditChainError: the row cannot be read back as a record (names it).
    """
    seq = row[0]
    try:
        d = dict(zip(EVENT_FIELDS, row[1 : 1 + len(EVENT_FIELDS)], strict=True))
        d["detail"] = json.loads(d["detail"])
        event = event_from_dict(d)
        prev_hash, hash_ = row[1 + len(EVENT_FIELDS)], row[2 + len(EVENT_FIELDS)]
        if not isinstance(prev_hash, str) or not isinstance(hash_, str):
            raise ValueError("prev_hash and hash must be strings")
    except (ValueError, TypeError) as e:
        raise AuditChainError(f"record {seq}: unreadable ({e})", seq=seq) from e
    return AuditRecord(seq=seq, event=event, prev_hash=prev_hash, hash=hash_)


def row_to_key(row: Sequence[Any]) -> KeyRecord:
    """The key stored in a ``keys`` row.

    Raises:
        StoreError: the row is unreadable (names the key).
    """
    try:
        rules = tuple(
            RoleRule(pattern=r["pattern"], max_validity=r["max_validity"])
            for r in json.loads(row[3])
        )
        return KeyRecord(
            name=row[0],
            algorithm=Algorithm(row[1]),
            backend=row[2],
            rules=rules,
            created_at=row[4],
            bins=BinsDelegation.parse(row[5]) if row[5] else None,
        )
    except (ValueError, TypeError, KeyError) as e:
        raise StoreError(f"audit store holds an unreadable row for key {row[0]!r}") from e


def key_params(key: KeyRecord) -> tuple[Any, ...]:
    """The ``keys`` row of ``key``, in ``KEY_COLUMNS`` order."""
    bins = str(key.bins) if key.bins is not None else ""
    return (
        key.name,
        key.algorithm.value,
        key.backend,
        rules_json(key.rules),
        key.created_at,
        bins,
    )


def row_to_version(row: Sequence[Any]) -> KeyVersion:
    """The key version stored in a ``key_versions`` row.

    Raises:
        StoreError: the row is unreadable (names the key and version).
    """
    try:
        return KeyVersion(
            key_name=row[0],
            version=row[1],
            state=KeyState(row[2]),
            keyid=row[3],
            public_key=json.loads(row[4]),
            handle=row[5],
            created_at=row[6],
            activated_at=row[7],
            retired_at=row[8],
        )
    except (ValueError, TypeError) as e:
        raise StoreError(
            f"audit store holds an unreadable row for version {row[1]} of key {row[0]!r}"
        ) from e


def version_params(v: KeyVersion) -> tuple[Any, ...]:
    """The ``key_versions`` row of ``v``, in ``VERSION_COLUMNS`` order."""
    return (
        v.key_name,
        v.version,
        v.state.value,
        v.keyid,
        canonical_json(v.public_key),
        v.handle,
        v.created_at,
        v.activated_at,
        v.retired_at,
    )


def row_to_role(row: Sequence[Any]) -> RoleState:
    """The role state stored in a ``role_state`` row."""
    return RoleState(
        key_name=row[0],
        role=row[1],
        version=row[2],
        payload_sha256=row[3],
        keyid=row[4],
        key_version=row[5],
        signature=row[6],
        expires=row[7],
        audit_seq=row[8],
    )


def role_params(s: RoleState) -> tuple[Any, ...]:
    """The ``role_state`` row of ``s``, in ``ROLE_COLUMNS`` order."""
    return (
        s.key_name,
        s.role,
        s.version,
        s.payload_sha256,
        s.keyid,
        s.key_version,
        s.signature,
        s.expires,
        s.audit_seq,
    )


def rules_json(rules: Sequence[RoleRule]) -> str:
    """A key's rules as the ``keys.rules`` column holds them."""
    return canonical_json([{"pattern": r.pattern, "max_validity": r.max_validity} for r in rules])


def key_change_writes(
    change: CreateKey | AddVersion | SetVersionState | SetKeyRules,
) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements, with their parameters, that write a key change the rules allowed."""
    match change:
        case CreateKey(key=key, first=first):
            return [(INSERT_KEY, key_params(key)), (INSERT_VERSION, version_params(first))]
        case AddVersion(version=version):
            return [(INSERT_VERSION, version_params(version))]
        case SetVersionState(key_name=name, version=number, state=KeyState.ACTIVE, at=at):
            # Activating a version retires the key's ACTIVE one in the same transaction (P6).
            return [(RETIRE_ACTIVE, (at, name)), (ACTIVATE_VERSION, (at, name, number))]
        case SetVersionState(key_name=name, version=number, at=at):  # to RETIRED
            return [(RETIRE_VERSION, (at, name, number))]
        case SetKeyRules(key_name=name, rules=rules):
            return [(SET_KEY_RULES, (rules_json(rules), name))]
