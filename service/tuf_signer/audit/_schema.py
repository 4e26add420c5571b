"""The store's tables, what differs between SQL databases, and schema migration.

The store is written once against DB-API 2.0 (PEP 249); a ``Dialect`` holds
the few things that differ (placeholder style, 64-bit integer type, how to take
the write lock, how to ask whether a table exists, the driver's error class).

The tables are plain columns, so an auditor can read them with plain SQL:

- ``audit_log``: one row per record, the event's fields as columns (``detail``
  as JSON text, written as ``_chain.canonical_json`` writes it), plus
  ``prev_hash`` and ``hash`` (see ``_chain`` for the chain).
- ``keys``, ``key_versions``: the key registry (``rules`` and ``public_key`` are
  JSON text).
- ``role_state``: the high-water mark of each (key, role), with ``audit_seq``,
  the record that set it.
- ``audit_tree``: the Merkle tree over the records (issue 13, P5): the hash of
  every complete subtree ``(level, idx)``, lowercase hex, written with the
  records it covers (see ``_tree``).
- ``audit_checkpoints``, ``audit_cosignatures``: the signed checkpoints of the
  tree and the witnesses' cosignatures of them (see ``_checkpoints``).
- ``role_coherence``: per (key, role), what the key's last snapshot listed of
  the role (for ``snapshot``: what its last timestamp named), the digest of the
  delegations it last signed for the role, and a digest an admin approved
  (issue 14, P9). Not part of the record: each value follows from the granted
  records before it.
- ``schema_version``: one row, the version of this layout.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tuf_signer.audit._checkpoints import add_checkpoint_tables, checkpoint_tables
from tuf_signer.audit._tree import backfill
from tuf_signer.errors import AuditChainError, StoreError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 5


# --- the DB-API surface we use ---------------------------------------------------


class Cursor(Protocol):
    """The part of a PEP 249 cursor that the store uses."""

    def execute(self, operation: str, parameters: Sequence[Any] = ..., /) -> object: ...

    def executemany(
        self, operation: str, seq_of_parameters: Iterable[Sequence[Any]], /
    ) -> object: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...

    def close(self) -> None: ...


class Connection(Protocol):
    """The part of a PEP 249 connection that the store uses."""

    def cursor(self) -> Cursor: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Dialect:
    """What differs between SQL databases, and nothing else.

    Attributes:
        name: the database's name, for messages.
        placeholder: the driver's parameter marker, ``"?"`` (qmark) or ``"%s"``
            (format); the shared SQL is written with ``?`` and never contains ``%``.
        bigint: the column type of a 64-bit integer (SQLite ``INTEGER``, which
            also makes ``audit_log.seq`` the rowid; PostgreSQL ``BIGINT``).
        begin_write: statements that open a write transaction and take the
            store-wide writer lock, so that two writers never chain onto the same
            head (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``BEGIN`` then a
            transaction-level advisory lock keyed by ``audit_log``'s OID, which,
            unlike ``LOCK TABLE``, autovacuum never waits on or blocks).
        begin_schema: statements that open the transaction creating the tables,
            serialising two processes that create them at once (SQLite
            ``BEGIN IMMEDIATE``; PostgreSQL ``SELECT pg_advisory_xact_lock(...)``:
            ``audit_log`` cannot be locked before it exists).
        table_exists: a query, with one ``?`` for a table name, that returns a
            row when that table exists.
        errors: the driver's exception classes (its PEP 249 ``Error``).
    """

    name: str
    placeholder: str
    bigint: str
    begin_write: tuple[str, ...]
    begin_schema: tuple[str, ...]
    table_exists: str
    errors: tuple[type[Exception], ...]

    def translate(self, sql: str) -> str:
        """Return ``sql``, written with ``?`` markers, in this driver's parameter style."""
        return _translate(sql, self.placeholder)


@functools.cache
def _translate(sql: str, placeholder: str) -> str:
    return sql if placeholder == "?" else sql.replace("?", placeholder)


# A migration step: a statement, or a function of the cursor and dialect.
_Step = str | Callable[["Cursor", "Dialect"], None]


def _add_tree(cur: Cursor, dialect: Dialect) -> None:
    """2 -> 3: the Merkle tree table, with the hashes of the records already stored."""
    cur.execute(_tree_table(dialect))
    backfill(cur, dialect)


def _add_coherence(cur: Cursor, dialect: Dialect) -> None:
    """4 -> 5: the coherence table (issue 14), empty."""
    cur.execute(_coherence_table(dialect))


# Schema migrations: version -> the steps that take it to version + 1.
# 1 -> 2: keys.bins, a key's hash-bin declaration ("PREFIX:BIT_LENGTH" or "").
# 2 -> 3: audit_tree (issue 13), filled in from the records.
# 3 -> 4: audit_checkpoints and audit_cosignatures (issue 13), empty.
# 4 -> 5: role_coherence (issue 14), empty: coherence starts from the next
#   snapshot and timestamp each key signs.
_MIGRATIONS: dict[int, tuple[_Step, ...]] = {
    1: ("ALTER TABLE keys ADD COLUMN bins TEXT NOT NULL DEFAULT ''",),
    2: (_add_tree,),
    3: (add_checkpoint_tables,),
    4: (_add_coherence,),
}


def unavailable(e: BaseException) -> StoreError:
    """Return the StoreError for a database failure, without leaking data.

    Only the exception's class and the first line of its message are kept:
    drivers put row values (digests, signatures) on later lines.
    """
    first_line = (str(e).splitlines() or [""])[0][:200]
    return StoreError(f"audit store unavailable: {type(e).__name__}: {first_line}")


# --- the tables --------------------------------------------------------------------


def _tree_table(dialect: Dialect) -> str:
    i = dialect.bigint
    return f"""CREATE TABLE IF NOT EXISTS audit_tree (
            level {i} NOT NULL,
            idx {i} NOT NULL,
            hash TEXT NOT NULL,
            PRIMARY KEY (level, idx)
        )"""


def _coherence_table(dialect: Dialect) -> str:
    return f"""CREATE TABLE IF NOT EXISTS role_coherence (
            key_name TEXT NOT NULL,
            role TEXT NOT NULL,
            listed {dialect.bigint} NOT NULL DEFAULT 0,
            delegations TEXT NOT NULL DEFAULT '',
            approved TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (key_name, role)
        )"""


def schema_statements(dialect: Dialect) -> list[str]:
    """Return the DDL of the store, portable SQL with ``dialect.bigint`` filled in."""
    i = dialect.bigint
    return [
        f"""CREATE TABLE IF NOT EXISTS schema_version (
            version {i} NOT NULL
        )""",
        f"""CREATE TABLE IF NOT EXISTS audit_log (
            seq {i} PRIMARY KEY,
            time TEXT NOT NULL,
            identity TEXT NOT NULL,
            operation TEXT NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('granted', 'refused')),
            status TEXT NOT NULL,
            reason TEXT NOT NULL,
            key_name TEXT NOT NULL,
            keyid TEXT NOT NULL,
            key_version {i} NOT NULL,
            role TEXT NOT NULL,
            metadata_version {i} NOT NULL,
            expires TEXT NOT NULL,
            payload_sha256 TEXT NOT NULL,
            signature TEXT NOT NULL,
            detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS keys (
            name TEXT NOT NULL PRIMARY KEY,
            algorithm TEXT NOT NULL,
            backend TEXT NOT NULL,
            rules TEXT NOT NULL,
            created_at TEXT NOT NULL,
            bins TEXT NOT NULL DEFAULT ''
        )""",
        f"""CREATE TABLE IF NOT EXISTS key_versions (
            key_name TEXT NOT NULL REFERENCES keys (name),
            version {i} NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('PENDING', 'ACTIVE', 'RETIRED')),
            keyid TEXT NOT NULL,
            public_key TEXT NOT NULL,
            handle TEXT NOT NULL,
            created_at TEXT NOT NULL,
            activated_at TEXT,
            retired_at TEXT,
            PRIMARY KEY (key_name, version)
        )""",
        f"""CREATE TABLE IF NOT EXISTS role_state (
            key_name TEXT NOT NULL,
            role TEXT NOT NULL,
            version {i} NOT NULL,
            payload_sha256 TEXT NOT NULL,
            keyid TEXT NOT NULL,
            key_version {i} NOT NULL,
            signature TEXT NOT NULL,
            expires TEXT NOT NULL,
            audit_seq {i} NOT NULL REFERENCES audit_log (seq),
            PRIMARY KEY (key_name, role),
            FOREIGN KEY (key_name, key_version) REFERENCES key_versions (key_name, version)
        )""",
        _tree_table(dialect),
        *checkpoint_tables(dialect),
        _coherence_table(dialect),
    ]


def open_schema(conn: Connection, dialect: Dialect) -> None:
    """Create the tables if missing, migrate an older layout, check the schema version.

    Args:
        conn: the store's connection, outside any transaction.
        dialect: the database's dialect.

    Raises:
        StoreError: the database cannot be used, a migration failed, or it has
            another schema version.
    """
    try:
        cur = conn.cursor()
        cur.execute(dialect.translate(dialect.table_exists), ("schema_version",))
        if cur.fetchone() is None:
            for stmt in dialect.begin_schema:
                cur.execute(stmt)
            for stmt in schema_statements(dialect):
                cur.execute(stmt)
            cur.execute("SELECT version FROM schema_version")
            if cur.fetchone() is None:
                cur.execute(
                    dialect.translate("INSERT INTO schema_version (version) VALUES (?)"),
                    (SCHEMA_VERSION,),
                )
            conn.commit()
            logger.info("created the audit store schema (version %d)", SCHEMA_VERSION)
        cur.execute("SELECT version FROM schema_version")
        rows = [tuple(r) for r in cur.fetchall()]
        conn.rollback()
        if len(rows) == 1 and rows[0][0] in _MIGRATIONS:
            rows = _migrate(conn, cur, dialect)
        cur.close()
        conn.rollback()
    except dialect.errors as e:
        with contextlib.suppress(*dialect.errors):
            conn.rollback()
        raise unavailable(e) from e
    if rows != [(SCHEMA_VERSION,)]:
        found = ", ".join(str(r[0]) for r in rows) or "none"
        raise StoreError(
            f"audit store has schema version {found}; this tuf-signer reads "
            f"version {SCHEMA_VERSION}"
        )


def _migrate(conn: Connection, cur: Cursor, dialect: Dialect) -> list[tuple[Any, ...]]:
    """Bring an older schema up to SCHEMA_VERSION, one version per step.

    Runs under the schema lock (``begin_schema``) and reads the version again
    there, so that two processes opening one old store migrate it once.
    Each step commits with its version bump.

    Returns:
        The schema_version rows afterwards.

    Raises:
        StoreError: a migration step failed (rolled back; names both versions).
    """
    while True:
        for stmt in dialect.begin_schema:
            cur.execute(stmt)
        cur.execute("SELECT version FROM schema_version")
        rows = [tuple(r) for r in cur.fetchall()]
        if len(rows) != 1 or rows[0][0] not in _MIGRATIONS:
            conn.rollback()
            return rows
        version = rows[0][0]
        caught: tuple[type[Exception], ...] = (StoreError, AuditChainError, *dialect.errors)
        try:
            for step in _MIGRATIONS[version]:
                if isinstance(step, str):
                    cur.execute(step)
                else:
                    step(cur, dialect)
            cur.execute(dialect.translate("UPDATE schema_version SET version = ?"), (version + 1,))
            conn.commit()
        except caught as e:
            with contextlib.suppress(*dialect.errors):
                conn.rollback()
            if isinstance(e, StoreError | AuditChainError):
                raise StoreError(
                    f"audit store schema version {version} must be migrated to "
                    f"{version + 1} and that failed: {e.reason}"
                ) from e
            raise StoreError(
                f"audit store schema version {version} must be migrated to "
                f"{version + 1} and that failed (open it once as the tables' owner): "
                f"{unavailable(e).reason}"
            ) from e
        logger.info("migrated the audit store schema from version %d to %d", version, version + 1)


__all__ = [
    "SCHEMA_VERSION",
    "Connection",
    "Cursor",
    "Dialect",
    "open_schema",
    "schema_statements",
    "unavailable",
]
