"""The audit store written once against DB-API 2.0 (PEP 249): the transaction and the reads.

``SqlAuditStore`` holds everything that is the same in every SQL database. A
subclass supplies a connection per thread and a ``Dialect`` (see ``_schema``,
which also holds the tables). Each append reads the rows its changes depend on
inside one write transaction, asks ``_rules`` what each change comes to, and
writes the records and the changes in bulk (``_rows`` maps rows and models).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from tuf_signer.audit import _rows
from tuf_signer.audit._checkpoints import SqlCheckpoints
from tuf_signer.audit._rules import (
    CoherenceView,
    CoherenceWrite,
    Decision,
    KeyChange,
    Mark,
    change_of,
    check_entry,
    decide_add,
    decide_advance,
    decide_approve,
    decide_create,
    decide_reset,
    decide_set_rules,
    decide_set_state,
    mark_of,
    recorded_event,
)
from tuf_signer.audit._schema import Connection, Cursor, Dialect, open_schema, unavailable
from tuf_signer.audit._store import (
    GENESIS_HASH,
    AddVersion,
    AdvanceRole,
    ApproveDelegations,
    AuditRecord,
    AuditStore,
    Change,
    Committed,
    CreateKey,
    Entry,
    ResetRole,
    SetKeyRules,
    SetVersionState,
)
from tuf_signer.audit._tree import Frontier, SqlTree, chain_with_leaf
from tuf_signer.audit._writes import Writes
from tuf_signer.errors import RequestError, StoreError
from tuf_signer.model import KeyRecord, KeyVersion, RoleState

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# Key versions read during one append, by (key name, version); None: no such version.
_VersionCache = dict[tuple[str, int], KeyVersion | None]
# Role states as one append has left them so far, by (key name, role); None: none yet.
_RoleCache = dict[tuple[str, str], RoleState | None]
# The coherence state of each key an append's entries needed, read once (issue 14).
_ViewCache = dict[str, CoherenceView]
_ROLES_PER_QUERY = 200  # role names per prefetch query (SQLite allows 999 parameters)


class SqlAuditStore(SqlTree, SqlCheckpoints, AuditStore):
    """``AuditStore`` on any DB-API 2.0 database; subclasses supply connections.

    Subclasses implement ``_connection`` (one connection per calling thread,
    opened lazily) and ``close``, may override ``_check_before_commit``, and call
    ``_init_schema`` once from their constructor. The Merkle tree reads
    (``tree_hash``, the proofs) come from ``_tree.SqlTree``.
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

    def _writer_turn(self, timeout: float | None = None) -> contextlib.AbstractContextManager[None]:
        """Held around each write transaction: a store may queue its writers here.

        The default does nothing: the database's own lock (``begin_write``)
        serialises writers.

        Args:
            timeout: the longest wait for the turn (the probe's); None to wait
                as long as it takes.

        Raises:
            StoreError: the turn did not come within ``timeout``.
        """
        return contextlib.nullcontext()

    @abc.abstractmethod
    def _probe_write(self, cur: Cursor, timeout: float) -> None:
        """Open a write transaction as ``begin_write`` does, waiting at most
        ``timeout`` seconds for the lock, and write something that no record,
        role state or key depends on. ``probe`` commits it.
        """

    # --- helpers ---------------------------------------------------------------

    def _exec(self, cur: Cursor, sql: str, params: Sequence[Any] = ()) -> None:
        cur.execute(self._dialect.translate(sql), params)

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
        """Create the tables if missing, migrate them, and check the schema version.

        Raises:
            StoreError: the database cannot be used or has another schema version.
        """
        open_schema(self._connection(), self._dialect)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- probe -------------------------------------------------------------------

    def probe(self, timeout: float = 5.0) -> None:
        """Take the writers' lock as ``append`` does, write and commit (no record).

        Args:
            timeout: seconds to wait for the writers' lock.

        Raises:
            StoreError: the lock was not free within ``timeout``, or the write
                or its commit failed (rolled back).
        """
        deadline = time.monotonic() + timeout

        def write(cur: Cursor) -> None:
            self._probe_write(cur, max(deadline - time.monotonic(), 0.001))

        self._committed(write, timeout)

    def _small_write(self, fn: Callable[[Cursor], _T]) -> _T:
        """Run ``fn`` in its own write transaction (the writers' lock, as ``append``) and commit.

        For the few rows written beside the records (checkpoints, cosignatures).

        Raises:
            StoreError: the database failed; nothing was written.
        """

        def write(cur: Cursor) -> _T:
            for stmt in self._dialect.begin_write:
                cur.execute(stmt)
            return fn(cur)

        return self._committed(write)

    def _committed(self, write: Callable[[Cursor], _T], timeout: float | None = None) -> _T:
        """In the writers' turn: ``write`` (which opens the transaction), then commit.

        Raises:
            StoreError: the turn did not come within ``timeout``, or the
                database failed (rolled back).
        """
        with self._writer_turn(timeout):
            conn = self._connection()
            try:
                cur = conn.cursor()
                try:
                    result = write(cur)
                    self._check_before_commit()
                    conn.commit()
                    return result
                finally:
                    cur.close()
            except Exception as e:
                with contextlib.suppress(Exception):
                    conn.rollback()
                if isinstance(e, StoreError):
                    raise
                raise unavailable(e) from e

    # --- append ------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> list[Committed]:
        """Chain and write ``entries`` and apply their changes in ONE transaction.

        Inside one write transaction: read the head, then for each entry decide
        its change against the state as left by the entries before it (the
        rules are listed in ``_rules``, docs/design.md P3, P6), rewrite the event
        when the change is refused (outcome ``refused``, the status and reason,
        and no signature: a refused signature must not be obtainable from the
        log) or is a replay (the stored signature), chain it, insert the record
        and the Merkle tree hashes its leaf stores (``_tree``), apply the change.
        One commit (one fsync) for the batch.

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
            changes = [change_of(entry) for entry in entries]  # decided once each, below
            cur = conn.cursor()
            for stmt in self._dialect.begin_write:
                cur.execute(stmt)
            seq, prev_hash = self._head(cur)
            first = seq + 1
            tree = Frontier.read(cur, self._dialect, seq)  # the one SELECT of the tree
            out: list[Committed] = []
            versions: _VersionCache = {}
            roles = self._fetch_roles(cur, changes)
            views: _ViewCache = {}
            coherence: list[CoherenceWrite] = []
            writes = Writes(cur, self._dialect)
            for entry, change in zip(entries, changes, strict=True):
                seq += 1
                decision = self._decide(cur, change, seq, versions, roles, (views, coherence))
                event = recorded_event(entry.event, decision)
                if decision.error is not None:
                    logger.info("record %d: %s refused: %s", seq, event.operation, event.reason)
                record, leaf = chain_with_leaf(prev_hash, seq, event)
                writes.record(record, tree.append(leaf))
                if decision.advance is not None:
                    # What later entries of this batch compare with.
                    new = decision.advance
                    roles[(new.key_name, new.role)] = new
                    writes.role(new, decision.insert)
                    if new.key_name in views:
                        views[new.key_name].note_advance(new)
                if decision.coherence:
                    coherence.extend(decision.coherence)
                    for view_key in {w[1] for w in decision.coherence}:
                        if view_key in views:
                            views[view_key].note_writes(decision.coherence)
                if decision.key_change is not None:
                    writes.key_change(decision.key_change)
                prev_hash = record.hash
                out.append(
                    Committed(
                        seq=seq,
                        error=decision.error,
                        current=decision.current,
                        replayed=decision.replayed,
                    )
                )
            writes.flush()
            self._write_coherence(cur, coherence)
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

    def _decide(
        self,
        cur: Cursor,
        change: Change | None,
        seq: int,
        versions: _VersionCache,
        roles: _RoleCache,
        coherence: tuple[_ViewCache, list[CoherenceWrite]],
    ) -> Decision:
        """Read what ``change`` depends on and ask its rule: one path per kind of change.

        ``coherence``: the keys' coherence views read so far in this
        transaction, and the coherence values earlier entries decided.
        """
        if isinstance(change, KeyChange):
            versions.clear()  # versions read earlier in this batch may be stale
        match change:
            case None:
                return Decision()
            case AdvanceRole(state=state):
                stored, kv = self._role_and_version(cur, state, versions, roles)
                view = None
                if state.role == "snapshot" and change.lists is not None:
                    view = self._view(cur, state.key_name, roles, *coherence)
                elif change.lists is not None or change.delegations:
                    # A timestamp or a targets role needs a few roles, not all.
                    wanted = {state.role, *(r for r, _, _ in change.lists or ())}
                    view = self._narrow_view(cur, state.key_name, wanted, roles, *coherence)
                return decide_advance(change, seq, stored, kv, view)
            case ResetRole(state=state):
                stored, kv = self._role_and_version(cur, state, versions, roles)
                view = self._view(cur, state.key_name, roles, *coherence)
                return decide_reset(change, seq, stored, kv, view)
            case ApproveDelegations(key_name=name):
                return decide_approve(change, self._key_exists(cur, name))
            case SetKeyRules(key_name=name):
                return decide_set_rules(change, self._key_exists(cur, name))
            case CreateKey(key=key):
                return decide_create(change, self._key_exists(cur, key.name))
            case AddVersion(version=v):
                exists = self._key_exists(cur, v.key_name)
                version = self._fetch_version(cur, v.key_name, v.version) if exists else None
                return decide_add(change, exists, version)
            case SetVersionState(key_name=name, version=number):
                return decide_set_state(change, self._fetch_version(cur, name, number))

    def _view(
        self,
        cur: Cursor,
        key_name: str,
        roles: _RoleCache,
        views: _ViewCache,
        pending: Sequence[CoherenceWrite],
    ) -> CoherenceView:
        """The coherence state of ``key_name``, read once per transaction in two bulk
        SELECTs (every role state of the key, every coherence row of the key),
        whatever the number of bins: a 16,384-bin snapshot costs two queries.

        Role states earlier entries of this batch advanced (``roles``), and the
        coherence values they decided (``pending``), win over the stored ones.
        """
        view = views.get(key_name)
        if view is not None:
            return view
        self._exec(cur, _rows.LIST_KEY_MARKS, (key_name,))
        marks: dict[str, Mark] = {
            role: (int(version), bool(digest)) for role, version, digest in cur.fetchall()
        }
        for (name, role), cached in roles.items():
            if name == key_name:
                if cached is None:
                    marks.pop(role, None)
                else:
                    marks[role] = mark_of(cached)
        self._exec(cur, _rows.LIST_KEY_COHERENCE, (key_name,))
        view = self._coherence_view(marks, cur.fetchall())
        view.note_writes(tuple(w for w in pending if w[1] == key_name))
        views[key_name] = view
        return view

    def _narrow_view(
        self,
        cur: Cursor,
        key_name: str,
        wanted: set[str],
        roles: _RoleCache,
        views: _ViewCache,
        pending: Sequence[CoherenceWrite],
    ) -> CoherenceView:
        """The coherence view of ``wanted`` roles only (no empty bins): a timestamp's
        or a targets role's, two small reads instead of the key's every role.

        The key's full view, when this transaction read it already, serves as it is.
        """
        if key_name in views:
            return views[key_name]
        marks: dict[str, Mark] = {}
        for role in sorted(wanted):
            if (key_name, role) not in roles:
                roles[(key_name, role)] = self._fetch_role(cur, key_name, role)
            state = roles[(key_name, role)]
            if state is not None:
                marks[role] = mark_of(state)
        names = sorted(wanted)
        self._exec(cur, _rows.get_coherence(len(names)), (key_name, *names))
        view = self._coherence_view(marks, cur.fetchall())
        view.note_writes(tuple(w for w in pending if w[1] == key_name))
        return view

    @staticmethod
    def _coherence_view(marks: dict[str, Mark], rows: Sequence[Any]) -> CoherenceView:
        listed: dict[str, int] = {}
        delegations: dict[str, str] = {}
        approved: dict[str, str] = {}
        for role, listed_version, digest, approval in rows:
            if listed_version:
                listed[role] = int(listed_version)
            if digest:
                delegations[role] = str(digest)
            if approval:
                approved[role] = str(approval)
        # Empty bins signed (their roles hold '*'), not the marks an admin reset set.
        empty = {version for role, (version, signed) in marks.items() if "*" in role and signed}
        return CoherenceView(marks, empty, listed, delegations, approved)

    def _write_coherence(self, cur: Cursor, writes: Sequence[CoherenceWrite]) -> None:
        """Write the decided ``role_coherence`` values, the last of each (key, role, column)."""
        last: dict[tuple[str, str, str], int | str] = {}
        for column, key_name, role, value in writes:
            last[(column, key_name, role)] = value
            if column == "delegations":  # a signature uses up the approval
                last[("approved", key_name, role)] = ""
        by_column: dict[str, list[tuple[str, str, int | str]]] = {}
        for (column, key_name, role), value in last.items():
            by_column.setdefault(column, []).append((key_name, role, value))
        for column, rows in sorted(by_column.items()):
            cur.executemany(self._dialect.translate(_rows.upsert_coherence(column)), rows)

    def _head(self, cur: Cursor) -> tuple[int, str]:
        cur.execute(_rows.HEAD)
        row = cur.fetchone()
        if row is None:
            return 0, GENESIS_HASH
        return int(row[0]), str(row[1])

    def _fetch_roles(self, cur: Cursor, changes: Sequence[Change | None]) -> _RoleCache:
        """The stored role states that ``changes`` may advance, a few queries per batch."""
        wanted: dict[str, set[str]] = {}
        for change in changes:
            if isinstance(change, AdvanceRole):
                wanted.setdefault(change.state.key_name, set()).add(change.state.role)
        found: _RoleCache = {}
        for key_name, role_set in wanted.items():
            names = sorted(role_set)
            for start in range(0, len(names), _ROLES_PER_QUERY):
                chunk = names[start : start + _ROLES_PER_QUERY]
                found.update(((key_name, role), None) for role in chunk)
                self._exec(cur, _rows.get_roles(len(chunk)), (key_name, *chunk))
                for row in cur.fetchall():
                    state = _rows.row_to_role(row)
                    found[(state.key_name, state.role)] = state
        return found

    def _role_and_version(
        self, cur: Cursor, state: RoleState, versions: _VersionCache, roles: _RoleCache
    ) -> tuple[RoleState | None, KeyVersion | None]:
        """The stored state of ``state``'s role and the key version it names.

        Each is read once per transaction: later entries of the batch see what
        earlier ones left in ``roles``, and a batch signs with few key versions.
        """
        role_key = (state.key_name, state.role)
        if role_key not in roles:
            roles[role_key] = self._fetch_role(cur, *role_key)
        version_key = (state.key_name, state.key_version)
        if version_key not in versions:
            versions[version_key] = self._fetch_version(cur, *version_key)
        return roles[role_key], versions[version_key]

    def _key_exists(self, cur: Cursor, name: str) -> bool:
        self._exec(cur, _rows.GET_KEY, (name,))
        return cur.fetchone() is not None

    def _fetch_role(self, cur: Cursor, key_name: str, role: str) -> RoleState | None:
        self._exec(cur, _rows.GET_ROLE, (key_name, role))
        row = cur.fetchone()
        return None if row is None else _rows.row_to_role(row)

    def _fetch_version(self, cur: Cursor, key_name: str, version: int) -> KeyVersion | None:
        self._exec(cur, _rows.GET_VERSION, (key_name, version))
        row = cur.fetchone()
        return None if row is None else _rows.row_to_version(row)

    # --- reads -------------------------------------------------------------------

    def get_key(self, name: str) -> KeyRecord | None:
        """Return the key named ``name``, or None.

        Raises:
            StoreError: the database failed or holds an unreadable row.
        """
        with self._read() as cur:
            self._exec(cur, _rows.GET_KEY, (name,))
            row = cur.fetchone()
        return None if row is None else _rows.row_to_key(row)

    def list_keys(self) -> list[KeyRecord]:
        """Return every key, sorted by name.

        Raises:
            StoreError: the database failed or holds an unreadable row.
        """
        with self._read() as cur:
            cur.execute(_rows.LIST_KEYS)
            rows = cur.fetchall()
        return sorted((_rows.row_to_key(r) for r in rows), key=lambda k: k.name)

    def list_versions(self, key_name: str) -> list[KeyVersion]:
        """Return the versions of ``key_name`` in ascending order ([] for no key).

        Raises:
            StoreError: the database failed or holds an unreadable row.
        """
        with self._read() as cur:
            self._exec(cur, _rows.LIST_VERSIONS, (key_name,))
            rows = cur.fetchall()
        return [_rows.row_to_version(r) for r in rows]

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
                cur.execute(_rows.LIST_ROLES)
            else:
                self._exec(cur, _rows.LIST_KEY_ROLES, (key_name,))
            rows = cur.fetchall()
        # Sorted here: SQL collation order depends on the database's locale.
        return sorted((_rows.row_to_role(r) for r in rows), key=lambda s: (s.key_name, s.role))

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
                self._exec(cur, _rows.SELECT_RECORDS, (next_seq,))
                rows = cur.fetchall()
            for row in rows:
                yield _rows.row_to_record(row)
            if len(rows) < _rows.PAGE:
                return
            next_seq = int(rows[-1][0]) + 1

    def head(self) -> tuple[int, str]:
        """Return ``(seq, hash)`` of the last record, ``(0, GENESIS_HASH)`` when empty.

        Raises:
            StoreError: the database failed.
        """
        with self._read() as cur:
            return self._head(cur)

    def find_records(
        self, payload_sha256: str, limit: int = 100, *, granted_signs_only: bool = False
    ) -> list[AuditRecord]:
        """The records of a payload digest, oldest first (one indexed SELECT).

        Raises:
            RequestError: the digest is not 64 lowercase hex digits, or
                ``limit`` is not between 1 and 1000.
            StoreError: the database failed.
            AuditChainError: a row cannot be read back as a record.
        """
        _rows.check_digest(payload_sha256)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _rows.PAGE:
            raise RequestError(f"limit must be an integer between 1 and {_rows.PAGE}")
        with self._read() as cur:
            query = _rows.FIND_GRANTED_SIGNS if granted_signs_only else _rows.FIND_RECORDS
            self._exec(cur, query, (payload_sha256, limit))
            rows = cur.fetchall()
        return [_rows.row_to_record(row) for row in rows]
