"""The rows one append has decided, written in bulk at the end (``_sql``'s transaction)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tuf_signer.audit import _rows, _tree
from tuf_signer.audit._merkle import StoredHash
from tuf_signer.audit._rules import KeyChange
from tuf_signer.audit._schema import Cursor, Dialect
from tuf_signer.audit._store import AuditRecord
from tuf_signer.model import RoleState


class Writes:
    """The rows an append has decided but not yet written: written in bulk.

    Records are written before role states (role_state.audit_seq references
    audit_log), and everything pending is written before a key change applies
    (role_state references key_versions), so each statement meets the rows it
    depends on. Batching turns 2-3 statements per entry into a few per batch:
    fewer calls into SQLite, and fewer round trips to PostgreSQL. The Merkle
    tree hashes of the records go with them (one more bulk INSERT per batch).
    """

    def __init__(self, cur: Cursor, dialect: Dialect) -> None:
        self._cur = cur
        self._dialect = dialect
        self._records: list[tuple[Any, ...]] = []
        self._role_inserts: list[tuple[Any, ...]] = []
        self._role_updates: list[tuple[Any, ...]] = []
        self._tree: list[tuple[Any, ...]] = []

    def record(self, record: AuditRecord, stored: Iterable[StoredHash]) -> None:
        """Write ``record`` and the tree hashes its append stores (P4, P8: never one alone)."""
        self._records.append(_rows.record_params(record))
        self._tree.extend(_tree.tree_rows(stored))

    def role(self, state: RoleState, insert: bool) -> None:
        params = _rows.role_params(state)
        if insert:
            self._role_inserts.append(params)
        else:
            self._role_updates.append((*params[2:], state.key_name, state.role))

    def key_change(self, change: KeyChange) -> None:
        """Write a key change the rules allowed, after every earlier write of the batch."""
        self.flush()
        for sql, params in _rows.key_change_writes(change):
            self._cur.execute(self._dialect.translate(sql), params)

    def flush(self) -> None:
        for sql, rows in (
            (_rows.INSERT_RECORD, self._records),
            (_tree.INSERT_TREE, self._tree),
            (_rows.INSERT_ROLE, self._role_inserts),
            (_rows.UPDATE_ROLE, self._role_updates),
        ):
            if rows:
                self._cur.executemany(self._dialect.translate(sql), rows)
                rows.clear()
