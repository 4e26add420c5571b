"""Signed checkpoints and their cosignatures, kept in the store beside the tree.

Two tables (schema version 4):

- ``audit_checkpoints``: one row per (origin, size), the checkpoint note as
  the audit key signed it (``c2sp.org/tlog-checkpoint``), and when.
- ``audit_cosignatures``: the cosignature lines witnesses returned for it
  (``c2sp.org/tlog-cosignature``), one per (origin, size, witness key name).

A checkpoint is a statement about records already committed, so it is written
in its own short transaction after them; the records never wait for it. Two
workers that sign the same size write the same note (Ed25519 is
deterministic), and the second insert is ignored. Nothing here trusts the
rows: every reader verifies the notes with the verifier keys it was given.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from tuf_signer.audit._schema import Cursor, Dialect

_T = TypeVar("_T")


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint as stored, unverified.

    Attributes:
        origin: the log's origin line.
        size: the tree size it covers.
        note: the signed note with every stored cosignature line appended, as
            ``audit checkpoint`` prints it and tlog-proof embeds it.
        created_at: when it was signed (RFC 3339, UTC).
        witnesses: the key names of the witnesses that cosigned it, sorted.
    """

    origin: str
    size: int
    note: bytes
    created_at: str
    witnesses: tuple[str, ...]


def checkpoint_tables(dialect: Dialect) -> list[str]:
    """The DDL of the two checkpoint tables, and of the index of records by payload digest."""
    i = dialect.bigint
    return [
        f"""CREATE TABLE IF NOT EXISTS audit_checkpoints (
            origin TEXT NOT NULL,
            size {i} NOT NULL,
            note TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (origin, size)
        )""",
        f"""CREATE TABLE IF NOT EXISTS audit_cosignatures (
            origin TEXT NOT NULL,
            size {i} NOT NULL,
            witness TEXT NOT NULL,
            line TEXT NOT NULL,
            received_at TEXT NOT NULL,
            PRIMARY KEY (origin, size, witness),
            FOREIGN KEY (origin, size) REFERENCES audit_checkpoints (origin, size)
        )""",
        # Records by payload digest: a client's or monitor's "where is my signature".
        "CREATE INDEX IF NOT EXISTS audit_log_payload ON audit_log (payload_sha256)",
    ]


def add_checkpoint_tables(cur: Cursor, dialect: Dialect) -> None:
    """Migration 3 -> 4: the checkpoint tables, empty, and the payload index."""
    for stmt in checkpoint_tables(dialect):
        cur.execute(stmt)


_INSERT_CHECKPOINT = (
    "INSERT INTO audit_checkpoints (origin, size, note, created_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (origin, size) DO NOTHING"
)
_INSERT_COSIGNATURE = (
    "INSERT INTO audit_cosignatures (origin, size, witness, line, received_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin, size, witness) DO UPDATE SET "
    "line = excluded.line, received_at = excluded.received_at"
)
# The checkpoint rows with their cosignature lines (NULL when none), one row per line.
_SELECT = (
    "SELECT c.size, c.note, c.created_at, s.witness, s.line FROM audit_checkpoints c "
    "LEFT JOIN audit_cosignatures s ON s.origin = c.origin AND s.size = c.size "
    "WHERE c.origin = ? AND c.size = {size} ORDER BY s.witness"
)
_LATEST = "(SELECT MAX(size) FROM audit_checkpoints WHERE origin = ?)"
# The largest size with at least ``quorum`` cosignatures.
_LATEST_WITNESSED = (
    "(SELECT MAX(size) FROM (SELECT size FROM audit_cosignatures WHERE origin = ? "
    "GROUP BY size HAVING COUNT(*) >= ?) w)"
)


class SqlCheckpoints(abc.ABC):
    """``AuditStore``'s checkpoint methods for ``SqlAuditStore`` (see ``AuditStore``)."""

    _dialect: Dialect

    @abc.abstractmethod
    def _read(self) -> contextlib.AbstractContextManager[Cursor]: ...

    @abc.abstractmethod
    def _small_write(self, fn: Callable[[Cursor], _T]) -> _T: ...

    def add_checkpoint(self, origin: str, size: int, note: bytes, created_at: str) -> None:
        """Keep a signed checkpoint; a second one of the same size is ignored.

        Raises:
            StoreError: the database failed.
        """
        sql = self._dialect.translate(_INSERT_CHECKPOINT)
        self._small_write(lambda cur: cur.execute(sql, (origin, size, note.decode(), created_at)))

    def add_cosignatures(
        self, origin: str, size: int, lines: Sequence[tuple[str, str]], received_at: str
    ) -> None:
        """Keep witnesses' cosignature lines ``(witness key name, line)`` for a stored checkpoint.

        A witness's newer line for the same checkpoint replaces its older one.

        Raises:
            StoreError: the database failed, or no such checkpoint is stored.
        """
        sql = self._dialect.translate(_INSERT_COSIGNATURE)
        rows = [(origin, size, witness, line, received_at) for witness, line in lines]
        if rows:
            self._small_write(lambda cur: cur.executemany(sql, rows))

    def latest_checkpoint(self, origin: str) -> StoredCheckpoint | None:
        """The newest stored checkpoint of ``origin``, None when there is none.

        Raises:
            StoreError: the database failed.
        """
        return self._select(origin, _LATEST, (origin,))

    def checkpoint_at(self, origin: str, size: int) -> StoredCheckpoint | None:
        """The stored checkpoint of ``origin`` at ``size``, None when there is none.

        Raises:
            StoreError: the database failed.
        """
        return self._select(origin, "?", (size,))

    def latest_witnessed(self, origin: str, quorum: int = 1) -> StoredCheckpoint | None:
        """The newest checkpoint that at least ``quorum`` witnesses cosigned (unverified).

        Raises:
            StoreError: the database failed.
        """
        return self._select(origin, _LATEST_WITNESSED, (origin, quorum))

    def _select(
        self, origin: str, size_sql: str, size_params: tuple[object, ...]
    ) -> StoredCheckpoint | None:
        sql = self._dialect.translate(_SELECT.format(size=size_sql))
        with self._read() as cur:
            cur.execute(sql, (origin, *size_params))
            rows = cur.fetchall()
        if not rows:
            return None
        size, note, created_at = int(rows[0][0]), str(rows[0][1]), str(rows[0][2])
        cosigned = [(str(r[3]), str(r[4])) for r in rows if r[3] is not None]
        text = note + "".join(line + "\n" for _, line in cosigned)
        return StoredCheckpoint(
            origin, size, text.encode(), created_at, tuple(w for w, _ in cosigned)
        )


__all__ = [
    "SqlCheckpoints",
    "StoredCheckpoint",
    "add_checkpoint_tables",
    "checkpoint_tables",
]
