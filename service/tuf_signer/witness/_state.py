"""The witness's durable state in SQLite: the latest cosigned checkpoint of each log.

c2sp.org/tlog-witness: the witness MUST persist the new checkpoint before it
answers, and checking the old size and storing the new checkpoint MUST be one
atomic step, or two concurrent requests could roll the stored size back. So
``advance`` runs the whole check, the cosigning and the write inside one
``BEGIN IMMEDIATE`` transaction (SQLite's write lock, across threads and
processes), and commits with ``synchronous=FULL`` before it returns.

A log-signed checkpoint that fails a consistency check is kept in a side table
as possible evidence of misbehaviour (the spec allows it: "MAY log the request"),
once per (origin, size, root) and at most ``MAX_EVIDENCE`` per log and kind:
anyone can submit a log's genuine checkpoints with a junk proof, and that must
not crowd out the evidence of an equivocation (which only the log's key can
make). For the same reason an equivocation replaces a ``proof`` record of the
same tree head.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tuf_signer.audit._checkpoint import HASH_SIZE
from tuf_signer.errors import StoreError, shown
from tuf_signer.witness._protocol import InconsistentCheckpoint, Misbehaviour

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT = 5.0  # seconds a transaction waits for another one's write lock
# Evidence records kept per log and kind. Anyone may replay a log's genuine checkpoints
# with a bad proof, so what the log signed alone does not bound the table.
MAX_EVIDENCE = 1000
EQUIVOCATION = "equivocation"  # Misbehaviour.kind of a second root at a cosigned size

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cosigned (
    origin     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL CHECK (size >= 0),
    root_hash  BLOB NOT NULL,
    note       BLOB NOT NULL,     -- the monitoring answer: log signatures + our cosignature
    cosigned_at INTEGER NOT NULL  -- the cosignature's timestamp, POSIX seconds
);
CREATE TABLE IF NOT EXISTS evidence (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    origin      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    root_hash   BLOB NOT NULL,
    old_size    INTEGER NOT NULL,
    proof       BLOB NOT NULL,    -- the proof hashes, concatenated
    checkpoint  BLOB NOT NULL,    -- the submitted note, as received
    cosigned    BLOB,             -- our latest cosigned note for the origin then
    reason      TEXT NOT NULL,
    received_at REAL NOT NULL,
    UNIQUE (origin, size, root_hash)
);
"""


@dataclass(frozen=True)
class Cosigned:
    """The latest checkpoint the witness cosigned for one log.

    Attributes:
        origin: the log's origin.
        size: the checkpoint's tree size.
        root_hash: its root hash.
        note: the checkpoint note served to monitors: the log signatures the
            witness verified, then its own cosignature.
        cosigned_at: the cosignature's timestamp (POSIX seconds).
    """

    origin: str
    size: int
    root_hash: bytes
    note: bytes
    cosigned_at: int


@dataclass(frozen=True)
class Evidence:
    """One kept misbehaviour record (see ``Misbehaviour``), with its reason and time."""

    misbehaviour: Misbehaviour
    reason: str
    received_at: float


class WitnessState:
    """The SQLite file holding each log's latest cosigned checkpoint and the evidence.

    Each call opens its own connection, so any thread (and any process) may
    call; SQLite's write lock serialises ``advance``.
    """

    def __init__(self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        """Open (creating if needed) the state file.

        Raises:
            StoreError: the file cannot be opened or created, or its schema is
                newer than this version knows.
        """
        self.path = path
        self._busy_timeout = busy_timeout
        with self._connection() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"witness state {path} has schema version {version}, "
                    f"newer than this witness ({SCHEMA_VERSION})"
                )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the witness state {self.path}: {e}") from e
        try:
            # FULL: a commit is on disk (WAL fsynced) before the answer goes out.
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        except sqlite3.Error as e:
            raise StoreError(f"witness state {self.path}: {type(e).__name__}: {e}") from e
        finally:
            conn.close()

    def latest(self, origin: str) -> Cosigned | None:
        """The latest cosigned checkpoint of ``origin``, or None if none was.

        Raises:
            StoreError: the state cannot be read.
        """
        with self._connection() as conn:
            return _read(conn, origin)

    def advance(self, origin: str, decide: Callable[[Cosigned | None], Cosigned]) -> Cosigned:
        """Check and store a new checkpoint for ``origin`` as one atomic step.

        ``decide`` gets the stored checkpoint (None if none) inside the write
        transaction and returns the one to store, or raises. An
        ``InconsistentCheckpoint`` keeps its evidence (committed, logged), then
        propagates; any other exception rolls back and propagates.

        Returns:
            What ``decide`` returned, committed.

        Raises:
            StoreError: the state cannot be written, or ``decide`` returned a
                smaller size than the stored one (a rollback: never stored).
            Exception: whatever ``decide`` raised.
        """
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = _read(conn, origin)
                try:
                    new = decide(current)
                except InconsistentCheckpoint as e:
                    _keep_evidence(conn, e)
                    conn.execute("COMMIT")
                    raise
                if new.origin != origin or (current is not None and new.size < current.size):
                    raise StoreError(
                        f"refusing to store size {new.size} for {shown(new.origin)}: "
                        f"not the origin, or below the stored size"
                    )
                conn.execute(
                    "INSERT INTO cosigned (origin, size, root_hash, note, cosigned_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET"
                    " size = excluded.size, root_hash = excluded.root_hash,"
                    " note = excluded.note, cosigned_at = excluded.cosigned_at",
                    (new.origin, new.size, new.root_hash, new.note, new.cosigned_at),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return new

    def evidence(self) -> list[Evidence]:
        """Every kept misbehaviour record, oldest first.

        Raises:
            StoreError: the state cannot be read.
        """
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT kind, origin, size, root_hash, old_size, proof, checkpoint, cosigned,"
                " reason, received_at FROM evidence ORDER BY id"
            ).fetchall()
        out = []
        for kind, origin, size, root, old, proof, checkpoint, cosigned, reason, at in rows:
            hashes = tuple(proof[i : i + HASH_SIZE] for i in range(0, len(proof), HASH_SIZE))
            found = Misbehaviour(kind, origin, size, root, old, hashes, checkpoint, cosigned)
            out.append(Evidence(found, reason, at))
        return out


def _read(conn: sqlite3.Connection, origin: str) -> Cosigned | None:
    row = conn.execute(
        "SELECT size, root_hash, note, cosigned_at FROM cosigned WHERE origin = ?", (origin,)
    ).fetchone()
    if row is None:
        return None
    size, root, note, at = row
    return Cosigned(origin, int(size), bytes(root), bytes(note), int(at))


def _keep_evidence(conn: sqlite3.Connection, refusal: InconsistentCheckpoint) -> None:
    e = refusal.evidence
    kept = conn.execute(
        "SELECT count(*) FROM evidence WHERE origin = ? AND kind = ?", (e.origin, e.kind)
    ).fetchone()[0]
    if kept >= MAX_EVIDENCE:
        log.debug(
            "not keeping more %s evidence for %s: %d records kept", e.kind, shown(e.origin), kept
        )
        return
    # Once per tree head; an equivocation outranks a failed proof of the same head.
    added = conn.execute(
        "INSERT INTO evidence (kind, origin, size, root_hash, old_size, proof,"
        " checkpoint, cosigned, reason, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (origin, size, root_hash) DO UPDATE SET kind = excluded.kind,"
        " old_size = excluded.old_size, proof = excluded.proof,"
        " checkpoint = excluded.checkpoint, cosigned = excluded.cosigned,"
        " reason = excluded.reason, received_at = excluded.received_at"
        f" WHERE excluded.kind = '{EQUIVOCATION}' AND evidence.kind != '{EQUIVOCATION}'",
        (
            e.kind,
            e.origin,
            e.size,
            e.root_hash,
            e.old_size,
            b"".join(e.proof),
            e.checkpoint,
            e.cosigned,
            refusal.reason,
            time.time(),
        ),
    ).rowcount
    if added:
        log.warning(
            "possible log misbehaviour (%s) kept as evidence: origin %s size %d: %s",
            e.kind,
            shown(e.origin),
            e.size,
            refusal.reason,
        )
