"""The audit store written once against DB-API 2.0 (PEP 249).

``SqlAuditStore`` holds everything that is the same in every SQL database: the
schema, the rules of each state change, the transaction that appends a batch,
and the reads. A subclass supplies a connection per thread and a ``Dialect``,
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
- ``schema_version``: one row, the version of this layout.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self

from tuf_signer.audit._chain import (
    EVENT_FIELDS,
    RESET,
    SIGN,
    canonical_json,
    chain,
    event_from_dict,
    event_to_dict,
    is_granted_sign,
    state_differences,
    state_of,
)
from tuf_signer.audit._rules import advance_decision
from tuf_signer.audit._store import (
    GENESIS_HASH,
    AddVersion,
    AdvanceRole,
    AuditRecord,
    AuditStore,
    Committed,
    CreateKey,
    Entry,
    ResetRole,
    SetVersionState,
)
from tuf_signer.errors import (
    AlreadyExistsError,
    AuditChainError,
    KeyStateError,
    NotFoundError,
    RollbackError,
    StaleKeyVersionError,
    StaleReplayError,
    StoreError,
    TufSignerError,
    VersionStepError,
)
from tuf_signer.model import (
    Algorithm,
    BinsDelegation,
    KeyRecord,
    KeyState,
    KeyVersion,
    Outcome,
    RoleRule,
    RoleState,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2

# Schema migrations: version -> the statements that take it to version + 1.
# 1 -> 2: keys.bins, a key's hash-bin declaration ("PREFIX:BIT_LENGTH" or "").
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE keys ADD COLUMN bins TEXT NOT NULL DEFAULT ''",),
}

# records() reads this many rows per query, so that a long log never sits in
# memory at once and no read transaction stays open between pages.
_PAGE = 1000

REPLAY_REASON = "replay of an identical request"


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
    ]


# --- SQL shared by every dialect (qmark style; see Dialect.placeholder) ----------

_RECORD_COLUMNS = ("seq", *EVENT_FIELDS, "prev_hash", "hash")
_SELECT_RECORDS = (
    f"SELECT {', '.join(_RECORD_COLUMNS)} FROM audit_log WHERE seq >= ? ORDER BY seq LIMIT {_PAGE}"
)
_INSERT_RECORD = (
    f"INSERT INTO audit_log ({', '.join(_RECORD_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _RECORD_COLUMNS)})"
)
_HEAD = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"

_KEY_COLUMNS = "name, algorithm, backend, rules, created_at, bins"
_VERSION_COLUMNS = (
    "key_name, version, state, keyid, public_key, handle, created_at, activated_at, retired_at"
)
_ROLE_COLUMNS = (
    "key_name, role, version, payload_sha256, keyid, key_version, signature, expires, audit_seq"
)
_INSERT_KEY = f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_VERSION = (
    f"INSERT INTO key_versions ({_VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ROLE = f"INSERT INTO role_state ({_ROLE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE_ROLE = (
    "UPDATE role_state SET version = ?, payload_sha256 = ?, keyid = ?, key_version = ?,"
    " signature = ?, expires = ?, audit_seq = ? WHERE key_name = ? AND role = ?"
)
_GET_ROLE = f"SELECT {_ROLE_COLUMNS} FROM role_state WHERE key_name = ? AND role = ?"
_GET_KEY = f"SELECT {_KEY_COLUMNS} FROM keys WHERE name = ?"
_GET_VERSION = f"SELECT {_VERSION_COLUMNS} FROM key_versions WHERE key_name = ? AND version = ?"


@functools.cache
def _translate(sql: str, placeholder: str) -> str:
    return sql if placeholder == "?" else sql.replace("?", placeholder)


def unavailable(e: BaseException) -> StoreError:
    """Return the StoreError for a database failure, without leaking data.

    Only the exception's class and the first line of its message are kept:
    drivers put row values (digests, signatures) on later lines.
    """
    first_line = (str(e).splitlines() or [""])[0][:200]
    return StoreError(f"audit store unavailable: {type(e).__name__}: {first_line}")


# --- row <-> model -----------------------------------------------------------------


def _record_params(record: AuditRecord) -> tuple[Any, ...]:
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


def _row_to_record(row: Sequence[Any]) -> AuditRecord:
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


def _row_to_key(row: Sequence[Any]) -> KeyRecord:
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


def _key_params(key: KeyRecord) -> tuple[Any, ...]:
    rules = [{"pattern": r.pattern, "max_validity": r.max_validity} for r in key.rules]
    bins = str(key.bins) if key.bins is not None else ""
    return (
        key.name,
        key.algorithm.value,
        key.backend,
        canonical_json(rules),
        key.created_at,
        bins,
    )


def _row_to_version(row: Sequence[Any]) -> KeyVersion:
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


def _version_params(v: KeyVersion) -> tuple[Any, ...]:
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


def _row_to_role(row: Sequence[Any]) -> RoleState:
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


def _role_params(s: RoleState) -> tuple[Any, ...]:
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


# --- the store -------------------------------------------------------------------


class _Decision(NamedTuple):
    """What one entry's change comes to, decided inside the write transaction."""

    error: TufSignerError | None = None  # the refusal, None when the change applies
    current: RoleState | None = None
    replayed: bool = False
    # Writes a key change; called after every earlier write of the batch. None
    # when nothing changes, or when the change is a role state (``advance``).
    apply: Callable[[Cursor], None] | None = None
    # The role state to write (inserted when ``insert``, else updated). Written
    # in bulk after the batch's records, which role_state.audit_seq references.
    advance: RoleState | None = None
    insert: bool = False


def _advance_of(entry: Entry) -> AdvanceRole | None:
    """The role state ``entry`` advances, if any.

    Every granted signature passes the high-water check (P3), also when the
    caller sent it without AdvanceRole (a replay answered from its cache): if
    that cache was stale, the check refuses it. Such an entry carries no new
    signature, so it may only replay the stored state (``replay_only``).
    """
    if isinstance(entry.change, AdvanceRole):
        return entry.change
    if entry.change is None and is_granted_sign(entry.event):
        return AdvanceRole(state_of(entry.event), replay_only=True)
    return None


class _Writes:
    """The rows an append has decided but not yet written: written in bulk.

    Records are written before role states (role_state.audit_seq references
    audit_log), and everything pending is written before a key change applies
    (role_state references key_versions), so each statement meets the rows it
    depends on. Batching turns 2-3 statements per entry into a few per batch:
    fewer calls into SQLite, and fewer round trips to PostgreSQL.
    """

    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []
        self.role_inserts: list[tuple[Any, ...]] = []
        self.role_updates: list[tuple[Any, ...]] = []

    def role(self, state: RoleState, insert: bool) -> None:
        params = _role_params(state)
        if insert:
            self.role_inserts.append(params)
        else:
            self.role_updates.append((*params[2:], state.key_name, state.role))

    def flush(self, store: SqlAuditStore, cur: Cursor) -> None:
        for sql, rows in (
            (_INSERT_RECORD, self.records),
            (_INSERT_ROLE, self.role_inserts),
            (_UPDATE_ROLE, self.role_updates),
        ):
            if rows:
                store._exec_many(cur, sql, rows)
                rows.clear()


def _refuse(error: TufSignerError, current: RoleState | None = None) -> _Decision:
    return _Decision(error=error, current=current)


# Key versions read during one append, by (key name, version); None: no such version.
_VersionCache = dict[tuple[str, int], KeyVersion | None]
# Role states as one append has left them so far, by (key name, role); None: none yet.
_RoleCache = dict[tuple[str, str], RoleState | None]
_ROLES_PER_QUERY = 200  # role names per prefetch query (SQLite allows 999 parameters)


class SqlAuditStore(AuditStore):
    """``AuditStore`` on any DB-API 2.0 database; subclasses supply connections.

    Subclasses implement ``_connection`` (one connection per calling thread,
    opened lazily) and ``close``, may override ``_check_before_commit``, and call
    ``_init_schema`` once from their constructor.
    """

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect

    # --- hooks -----------------------------------------------------------------

    @abc.abstractmethod
    def _connection(self) -> Connection:
        """Return the calling thread's connection.

        Raises:
            StoreError: the store is closed or the database cannot be opened.
        """

    def _check_before_commit(self) -> None:
        """Called just before a write commits; raise StoreError to roll it back."""

    def _writer_turn(self) -> contextlib.AbstractContextManager[None]:
        """Held around each write transaction: a store may queue its writers here.

        The default does nothing: the database's own lock (``begin_write``)
        serialises writers.
        """
        return contextlib.nullcontext()

    # --- helpers ---------------------------------------------------------------

    def _exec(self, cur: Cursor, sql: str, params: Sequence[Any] = ()) -> None:
        cur.execute(_translate(sql, self._dialect.placeholder), params)

    def _exec_many(self, cur: Cursor, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        cur.executemany(_translate(sql, self._dialect.placeholder), rows)

    @contextlib.contextmanager
    def _read(self) -> Iterator[Cursor]:
        """A cursor for reads; ends the read transaction and wraps driver errors."""
        conn = self._connection()
        try:
            cur = conn.cursor()
            try:
                yield cur
            finally:
                cur.close()
                # Ends the read transaction on drivers that open one implicitly
                # (psycopg); a no-op on SQLite in autocommit mode.
                conn.rollback()
        except self._dialect.errors as e:
            raise unavailable(e) from e

    def _init_schema(self) -> None:
        """Create the tables if missing and check the schema version.

        Raises:
            StoreError: the database cannot be used or has another schema version.
        """
        conn = self._connection()
        try:
            cur = conn.cursor()
            self._exec(cur, self._dialect.table_exists, ("schema_version",))
            if cur.fetchone() is None:
                for stmt in self._dialect.begin_schema:
                    cur.execute(stmt)
                for stmt in schema_statements(self._dialect):
                    cur.execute(stmt)
                cur.execute("SELECT version FROM schema_version")
                if cur.fetchone() is None:
                    self._exec(
                        cur, "INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,)
                    )
                conn.commit()
                logger.info("created the audit store schema (version %d)", SCHEMA_VERSION)
            cur.execute("SELECT version FROM schema_version")
            rows = [tuple(r) for r in cur.fetchall()]
            conn.rollback()
            if len(rows) == 1 and rows[0][0] in _MIGRATIONS:
                rows = self._migrate(cur)
            cur.close()
            conn.rollback()
        except self._dialect.errors as e:
            with contextlib.suppress(*self._dialect.errors):
                conn.rollback()
            raise unavailable(e) from e
        if rows != [(SCHEMA_VERSION,)]:
            found = ", ".join(str(r[0]) for r in rows) or "none"
            raise StoreError(
                f"audit store has schema version {found}; this tuf-signer reads "
                f"version {SCHEMA_VERSION}"
            )

    def _migrate(self, cur: Cursor) -> list[tuple[Any, ...]]:
        """Bring an older schema up to SCHEMA_VERSION, one version per step.

        Runs under the schema lock (``begin_schema``) and reads the version again
        there, so that two processes opening one old store migrate it once.
        Each step commits with its version bump.

        Returns:
            The schema_version rows afterwards.
        """
        conn = self._connection()
        while True:
            for stmt in self._dialect.begin_schema:
                cur.execute(stmt)
            cur.execute("SELECT version FROM schema_version")
            rows = [tuple(r) for r in cur.fetchall()]
            if len(rows) != 1 or rows[0][0] not in _MIGRATIONS:
                conn.rollback()
                return rows
            version = rows[0][0]
            try:
                for stmt in _MIGRATIONS[version]:
                    cur.execute(stmt)
                self._exec(cur, "UPDATE schema_version SET version = ?", (version + 1,))
                conn.commit()
            except self._dialect.errors as e:
                with contextlib.suppress(*self._dialect.errors):
                    conn.rollback()
                raise StoreError(
                    f"audit store schema version {version} must be migrated to "
                    f"{version + 1} and that failed (open it once as the tables' owner): "
                    f"{unavailable(e).reason}"
                ) from e
            logger.info(
                "migrated the audit store schema from version %d to %d", version, version + 1
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- append ------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> list[Committed]:
        """Chain and write ``entries`` and apply their changes in ONE transaction.

        Inside one write transaction: read the head, then for each entry decide
        its change against the state as left by the entries before it, rewrite
        the event when the change is refused (outcome ``refused``, the status and
        reason, and no signature: a refused signature must not be obtainable
        from the log) or is a replay (the stored signature), chain it, insert the
        record, apply the change. One commit (one fsync) for the batch.

        Change rules (DESIGN.md P3, P6):

        - ``AdvanceRole``: the key version must exist, be ACTIVE and have the
          state's keyid, else FAILED_PRECONDITION. No state or a higher version
          applies; the same version, digest and keyid is a replay; the same
          version and digest with another keyid applies (re-signed after a
          rotation); a version more than ``max_step`` above the stored one, and
          anything else, is FAILED_PRECONDITION (version step, rollback or
          equivocation; ``_rules.advance_decision``, the rule the service
          applies before signing).
        - No change on a granted ``sign`` event: treated as ``AdvanceRole`` of
          the state the event describes, with ``replay_only``, so that no
          granted signature reaches the record without the high-water check. A
          caller that answers a retry from its cache gets a replay; if its cache
          was stale, a refusal (FAILED_PRECONDITION below the stored mark,
          ABORTED above it: a reset elsewhere lowered the mark).
        - ``ResetRole``: NOT_FOUND unless the key version it names exists,
          FAILED_PRECONDITION if the keyid is not that version's; else the
          role state becomes the reset mark, whatever it was.
        - No change on any other event: the event is recorded as it is.
        - ``CreateKey``: ALREADY_EXISTS when the name is taken.
        - ``AddVersion``: NOT_FOUND without the key, ALREADY_EXISTS when the
          version number is taken.
        - ``SetVersionState``: NOT_FOUND without the version; only
          PENDING -> ACTIVE (retiring the key's other ACTIVE version),
          PENDING -> RETIRED and ACTIVE -> RETIRED, else FAILED_PRECONDITION.

        Args:
            entries: the events to record, each with its change (if any).

        Returns:
            One ``Committed`` per entry, in order. For ``AdvanceRole``, ``current``
            is the role state as that entry left it: for a replay, the state
            whose signature it repeats, even if a later entry of the same batch
            advances the role again.

        Raises:
            ValueError: an entry contradicts itself (see ``check_entry``);
                nothing was written.
            StoreError: the database failed; the whole batch was rolled back.
        """
        entries = list(entries)
        for index, entry in enumerate(entries):
            check_entry(entry, index)
        if not entries:
            return []
        with self._writer_turn():
            return self._write(entries)

    def _write(self, entries: list[Entry]) -> list[Committed]:
        conn = self._connection()
        cur: Cursor | None = None
        try:
            cur = conn.cursor()
            for stmt in self._dialect.begin_write:
                cur.execute(stmt)
            seq, prev_hash = self._head(cur)
            first = seq + 1
            out: list[Committed] = []
            versions: _VersionCache = {}
            roles = self._fetch_roles(cur, entries)
            writes = _Writes()
            for entry in entries:
                seq += 1
                decision = self._decide(cur, entry, seq, versions, roles)
                event = entry.event
                if decision.error is not None:
                    event = dataclasses.replace(
                        event,
                        outcome=Outcome.REFUSED,
                        status=decision.error.code,
                        reason=decision.error.reason,
                        signature="",
                    )
                    logger.info("record %d: %s refused: %s", seq, event.operation, event.reason)
                elif decision.replayed and decision.current is not None:
                    event = dataclasses.replace(
                        event, signature=decision.current.signature, reason=REPLAY_REASON
                    )
                record = chain(prev_hash, seq, event)
                writes.records.append(_record_params(record))
                if decision.advance is not None:
                    writes.role(decision.advance, decision.insert)
                if decision.apply is not None:
                    writes.flush(self, cur)
                    decision.apply(cur)
                prev_hash = record.hash
                out.append(
                    Committed(
                        seq=seq,
                        error=decision.error,
                        current=decision.current,
                        replayed=decision.replayed,
                    )
                )
            writes.flush(self, cur)
            self._check_before_commit()
            conn.commit()
        except BaseException as e:
            try:
                conn.rollback()
            except Exception:  # the original error matters more
                logger.warning("rollback after a failed append failed too", exc_info=True)
            if not isinstance(e, Exception):  # KeyboardInterrupt and friends
                raise
            error = e if isinstance(e, StoreError) else unavailable(e)
            logger.error("audit append of %d entries rolled back: %s", len(entries), error.reason)
            if error is e:
                raise
            raise error from e
        finally:
            if cur is not None:
                with contextlib.suppress(Exception):
                    cur.close()
        logger.debug("appended records %d..%d", first, seq)
        return out

    def _head(self, cur: Cursor) -> tuple[int, str]:
        cur.execute(_HEAD)
        row = cur.fetchone()
        if row is None:
            return 0, GENESIS_HASH
        return int(row[0]), str(row[1])

    def _fetch_roles(self, cur: Cursor, entries: Sequence[Entry]) -> _RoleCache:
        """The stored role states that ``entries`` may advance, a few queries per batch."""
        wanted: dict[str, set[str]] = {}
        for entry in entries:
            advance = _advance_of(entry)
            if advance is not None:
                wanted.setdefault(advance.state.key_name, set()).add(advance.state.role)
        found: _RoleCache = {}
        for key_name, role_set in wanted.items():
            names = sorted(role_set)
            for start in range(0, len(names), _ROLES_PER_QUERY):
                chunk = names[start : start + _ROLES_PER_QUERY]
                found.update(((key_name, role), None) for role in chunk)
                marks = ", ".join("?" for _ in chunk)
                self._exec(
                    cur,
                    f"SELECT {_ROLE_COLUMNS} FROM role_state"
                    f" WHERE key_name = ? AND role IN ({marks})",
                    (key_name, *chunk),
                )
                for row in cur.fetchall():
                    state = _row_to_role(row)
                    found[(state.key_name, state.role)] = state
        return found

    def _fetch_role(self, cur: Cursor, key_name: str, role: str) -> RoleState | None:
        self._exec(cur, _GET_ROLE, (key_name, role))
        row = cur.fetchone()
        return None if row is None else _row_to_role(row)

    def _fetch_version(self, cur: Cursor, key_name: str, version: int) -> KeyVersion | None:
        self._exec(cur, _GET_VERSION, (key_name, version))
        row = cur.fetchone()
        return None if row is None else _row_to_version(row)

    def _decide(
        self,
        cur: Cursor,
        entry: Entry,
        seq: int,
        versions: _VersionCache,
        roles: _RoleCache,
    ) -> _Decision:
        advance = _advance_of(entry)
        if advance is not None:
            return self._decide_advance(cur, advance, seq, versions, roles)
        change = entry.change
        if change is None or isinstance(change, AdvanceRole):  # AdvanceRole: decided above
            return _Decision()
        if isinstance(change, ResetRole):
            return self._decide_reset(cur, change, seq, versions, roles)
        versions.clear()  # a key change: versions read earlier in this batch may be stale
        if isinstance(change, CreateKey):
            return self._decide_create(cur, change)
        if isinstance(change, AddVersion):
            return self._decide_add(cur, change)
        return self._decide_set_state(cur, change)

    def _role_and_version(
        self, cur: Cursor, new: RoleState, versions: _VersionCache, roles: _RoleCache
    ) -> tuple[RoleState | None, KeyVersion | None]:
        """The stored state of ``new``'s role and the key version it names.

        Each is read once per transaction: later entries of the batch see what
        earlier ones left in ``roles``, and a batch signs with few key versions.
        """
        role_key = (new.key_name, new.role)
        if role_key not in roles:
            roles[role_key] = self._fetch_role(cur, *role_key)
        version_key = (new.key_name, new.key_version)
        if version_key not in versions:
            versions[version_key] = self._fetch_version(cur, *version_key)
        return roles[role_key], versions[version_key]

    def _decide_advance(
        self,
        cur: Cursor,
        change: AdvanceRole,
        seq: int,
        versions: _VersionCache,
        roles: _RoleCache,
    ) -> _Decision:
        new = dataclasses.replace(change.state, audit_seq=seq)
        stored, kv = self._role_and_version(cur, new, versions, roles)
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
            return _Decision(current=stored, replayed=True)
        if change.replay_only:
            mark = (
                "none" if stored is None else f"version {stored.version}, record {stored.audit_seq}"
            )
            return _refuse(
                StaleReplayError(
                    f"stale replay: version {new.version} of role {new.role!r} with key "
                    f"{new.key_name!r} is not the stored mark ({mark}); the cached role state "
                    "was stale (an admin reset?): send the request again"
                ),
                stored,
            )
        roles[(new.key_name, new.role)] = new  # what later entries of this batch compare with
        return _Decision(current=new, advance=new, insert=stored is None)

    def _decide_reset(
        self,
        cur: Cursor,
        change: ResetRole,
        seq: int,
        versions: _VersionCache,
        roles: _RoleCache,
    ) -> _Decision:
        new = dataclasses.replace(change.state, audit_seq=seq)
        stored, kv = self._role_and_version(cur, new, versions, roles)
        what = f"key version {new.key_version} of {new.key_name!r}"
        if kv is None:
            return _refuse(NotFoundError(f"{what} does not exist"), stored)
        if kv.keyid != new.keyid:
            return _refuse(KeyStateError(f"keyid {new.keyid} is not the keyid of {what}"), stored)
        roles[(new.key_name, new.role)] = new
        return _Decision(current=new, advance=new, insert=stored is None)

    def _decide_create(self, cur: Cursor, change: CreateKey) -> _Decision:
        self._exec(cur, _GET_KEY, (change.key.name,))
        if cur.fetchone() is not None:
            return _refuse(AlreadyExistsError(f"key {change.key.name!r} already exists"))

        def apply(c: Cursor) -> None:
            self._exec(c, _INSERT_KEY, _key_params(change.key))
            self._exec(c, _INSERT_VERSION, _version_params(change.first))

        return _Decision(apply=apply)

    def _decide_add(self, cur: Cursor, change: AddVersion) -> _Decision:
        v = change.version
        self._exec(cur, _GET_KEY, (v.key_name,))
        if cur.fetchone() is None:
            return _refuse(NotFoundError(f"key {v.key_name!r} does not exist"))
        if self._fetch_version(cur, v.key_name, v.version) is not None:
            return _refuse(
                AlreadyExistsError(f"version {v.version} of key {v.key_name!r} already exists")
            )
        return _Decision(apply=lambda c: self._exec(c, _INSERT_VERSION, _version_params(v)))

    def _decide_set_state(self, cur: Cursor, change: SetVersionState) -> _Decision:
        name, number, target, at = change.key_name, change.version, change.state, change.at
        kv = self._fetch_version(cur, name, number)
        what = f"version {number} of {name!r}"
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
        if target is KeyState.ACTIVE:  # from PENDING

            def activate(c: Cursor) -> None:
                self._exec(
                    c,
                    "UPDATE key_versions SET state = 'RETIRED', retired_at = ?"
                    " WHERE key_name = ? AND state = 'ACTIVE'",
                    (at, name),
                )
                self._exec(
                    c,
                    "UPDATE key_versions SET state = 'ACTIVE', activated_at = ?"
                    " WHERE key_name = ? AND version = ?",
                    (at, name, number),
                )

            return _Decision(apply=activate)
        return _Decision(  # to RETIRED, from PENDING or ACTIVE
            apply=lambda c: self._exec(
                c,
                "UPDATE key_versions SET state = 'RETIRED', retired_at = ?"
                " WHERE key_name = ? AND version = ?",
                (at, name, number),
            )
        )

    # --- reads -------------------------------------------------------------------

    def get_key(self, name: str) -> KeyRecord | None:
        """Return the key named ``name``, or None.

        Raises:
            StoreError: the database failed or holds an unreadable row.
        """
        with self._read() as cur:
            self._exec(cur, _GET_KEY, (name,))
            row = cur.fetchone()
        return None if row is None else _row_to_key(row)

    def list_keys(self) -> list[KeyRecord]:
        """Return every key, sorted by name.

        Raises:
            StoreError: the database failed or holds an unreadable row.
        """
        with self._read() as cur:
            cur.execute(f"SELECT {_KEY_COLUMNS} FROM keys")
            rows = cur.fetchall()
        return sorted((_row_to_key(r) for r in rows), key=lambda k: k.name)

    def list_versions(self, key_name: str) -> list[KeyVersion]:
        """Return the versions of ``key_name`` in ascending order ([] for no key).

        Raises:
            StoreError: the database failed or holds an unreadable row.
        """
        with self._read() as cur:
            self._exec(
                cur,
                f"SELECT {_VERSION_COLUMNS} FROM key_versions WHERE key_name = ? ORDER BY version",
                (key_name,),
            )
            rows = cur.fetchall()
        return [_row_to_version(r) for r in rows]

    def get_role_state(self, key_name: str, role: str) -> RoleState | None:
        """Return the high-water mark of (``key_name``, ``role``), or None.

        Raises:
            StoreError: the database failed.
        """
        with self._read() as cur:
            return self._fetch_role(cur, key_name, role)

    def list_role_states(self, key_name: str | None = None) -> list[RoleState]:
        """Return the role states (of one key, or all), sorted by key and role.

        Raises:
            StoreError: the database failed.
        """
        with self._read() as cur:
            if key_name is None:
                cur.execute(f"SELECT {_ROLE_COLUMNS} FROM role_state")
            else:
                self._exec(
                    cur, f"SELECT {_ROLE_COLUMNS} FROM role_state WHERE key_name = ?", (key_name,)
                )
            rows = cur.fetchall()
        # Sorted here: SQL collation order depends on the database's locale.
        return sorted((_row_to_role(r) for r in rows), key=lambda s: (s.key_name, s.role))

    def records(self, start_seq: int = 1) -> Iterator[AuditRecord]:
        """Yield the stored records from ``start_seq`` on, ascending, unverified.

        Reads a page of rows at a time, so memory stays flat and no read
        transaction stays open while the caller works on the records.

        Raises:
            StoreError: the database failed.
            AuditChainError: a row cannot be read back as a record (names it).
        """
        next_seq = start_seq
        while True:
            with self._read() as cur:
                self._exec(cur, _SELECT_RECORDS, (next_seq,))
                rows = cur.fetchall()
            for row in rows:
                yield _row_to_record(row)
            if len(rows) < _PAGE:
                return
            next_seq = int(rows[-1][0]) + 1

    def head(self) -> tuple[int, str]:
        """Return ``(seq, hash)`` of the last record, ``(0, GENESIS_HASH)`` when empty.

        Raises:
            StoreError: the database failed.
        """
        with self._read() as cur:
            return self._head(cur)


__all__ = [
    "Connection",
    "Cursor",
    "Dialect",
    "SqlAuditStore",
    "check_entry",
    "schema_statements",
    "unavailable",
]
