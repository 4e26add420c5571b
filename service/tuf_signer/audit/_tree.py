"""The store's Merkle tree (issue 13, P5): leaves, the ``audit_tree`` table, proofs, checks.

Leaf ``i`` (zero-based) of the tree is record ``seq = i + 1`` exactly as one
line of ``tuf-signer audit export`` prints it, without the newline
(``record_leaf``). The hashing is RFC 6962 §2.1 (``_merkle``).

The table ``audit_tree (level, idx, hash)`` keeps the hash of every complete
subtree, ``Node(level, idx)``, as lowercase hex: appending leaf ``n`` stores
``_merkle.stored_hashes_for_append(n, ...)`` (the leaf's hash and the subtrees
it completes; Go's ``tlog.StoredHashes``). ``append`` writes them in the same
transaction as the record (P4, P8), reading the left siblings it needs with one
SELECT per batch: the *frontier* of the tree before the batch, the complete
subtrees that make up ``MTH(D[0:size])`` (``Frontier``). Every proof then reads
at most about ``2 * log2(n)`` hashes, in one SELECT.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from tuf_signer.audit import _merkle, _rows
from tuf_signer.audit._chain import event_to_dict, hash_of_event_dict
from tuf_signer.audit._merkle import Node, StoredHash, TreeRangeError
from tuf_signer.audit._store import AuditRecord, AuditStore
from tuf_signer.errors import AuditChainError, RequestError, StoreError

if TYPE_CHECKING:
    from tuf_signer.audit._schema import Cursor, Dialect
    from tuf_signer.model import AuditEvent

INSERT_TREE = "INSERT INTO audit_tree (level, idx, hash) VALUES (?, ?, ?)"
# Nodes per SELECT: two parameters each, under SQLite's historical limit of 999.
# A proof needs at most 2 * 64 nodes, so every read below is one SELECT.
_NODES_PER_QUERY = 400
# Records per comparison when verify_store holds the table against the records.
_CHECK_CHUNK = 1000


def record_leaf(record: AuditRecord) -> bytes:
    """The Merkle leaf of ``record``: its ``audit export`` line, without the newline.

    The line is Python's ``json.dumps(obj, sort_keys=True)`` of the object
    ``{"event": E, "hash": ..., "prev_hash": ..., "seq": ...}`` (``E`` as in
    ``_chain``): keys sorted, ``", "`` and ``": "`` as separators, every
    character above U+007E escaped (``ensure_ascii``), so the bytes are ASCII.

    Raises:
        ValueError: the event cannot be serialised (see ``event_to_dict``).
    """
    return _leaf(record, event_to_dict(record.event))


def chain_with_leaf(prev_hash: str, seq: int, event: AuditEvent) -> tuple[AuditRecord, bytes]:
    """``chain(prev_hash, seq, event)`` and that record's ``record_leaf``.

    The event becomes its JSON object, and is checked, once for both (the
    writer's path: issue 16 measured the second ``event_to_dict`` at ~10% of
    the audit writer's time per record).

    Raises:
        ValueError: the event cannot be serialised (see ``event_to_dict``).
    """
    e = event_to_dict(event)
    record = AuditRecord(
        seq=seq, event=event, prev_hash=prev_hash, hash=hash_of_event_dict(prev_hash, seq, e)
    )
    return record, _leaf(record, e)


def _leaf(record: AuditRecord, e: dict[str, Any]) -> bytes:
    line = {"event": e, "hash": record.hash, "prev_hash": record.prev_hash, "seq": record.seq}
    return json.dumps(line, sort_keys=True, ensure_ascii=True).encode("ascii")


def frontier_nodes(size: int) -> list[Node]:
    """The complete subtrees whose hashes make up MTH(D[0:size]), left to right.

    One per set bit of ``size``, largest first; they are every stored hash that
    a later append can need as a left sibling.
    """
    nodes, lo = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            nodes.append(Node(level, lo >> level))
            lo += 1 << level
    return nodes


def tree_rows(stored: Iterable[StoredHash]) -> list[tuple[int, int, str]]:
    """The ``audit_tree`` rows of ``stored``, in ``INSERT_TREE`` order."""
    return [(s.node.level, s.node.index, s.hash.hex()) for s in stored]


@functools.cache
def _select_sql(count: int) -> str:
    where = " OR ".join("(level = ? AND idx = ?)" for _ in range(count))
    return f"SELECT level, idx, hash FROM audit_tree WHERE {where}"


def _hash_of(value: Any, node: Node) -> bytes:
    if isinstance(value, str) and len(value) == 2 * _merkle.HASH_SIZE and value == value.lower():
        with contextlib.suppress(ValueError):
            return bytes.fromhex(value)
    raise StoreError(
        f"the audit store holds an unreadable tree hash at level {node.level}, index {node.index}"
    )


def read_nodes(cur: Cursor, dialect: Dialect, nodes: Sequence[Node]) -> list[bytes]:
    """The stored hash of each node, in the order asked (one SELECT for up to 400 nodes).

    Raises:
        StoreError: a node has no stored hash (names it) or an unreadable one.
    """
    unique = sorted(set(nodes))
    found: dict[Node, Any] = {}
    for start in range(0, len(unique), _NODES_PER_QUERY):
        chunk = unique[start : start + _NODES_PER_QUERY]
        params = [value for node in chunk for value in (node.level, node.index)]
        cur.execute(dialect.translate(_select_sql(len(chunk))), params)
        found.update((Node(int(row[0]), int(row[1])), row[2]) for row in cur.fetchall())
    out = []
    for node in nodes:
        if node not in found:
            raise StoreError(
                f"the audit store has no tree hash at level {node.level}, index {node.index} "
                "(deleted?)"
            )
        out.append(_hash_of(found[node], node))
    return out


class CursorHashes:
    """A ``HashReader`` over ``audit_tree``, through one cursor."""

    def __init__(self, cur: Cursor, dialect: Dialect) -> None:
        self._cur = cur
        self._dialect = dialect

    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        """Read the nodes' hashes with one SELECT.

        Raises:
            StoreError: a hash is missing or unreadable.
        """
        return read_nodes(self._cur, self._dialect, nodes)


class Frontier:
    """The tree as far as appends need it: its size and the hashes of its frontier.

    ``append`` returns what to store for the next leaf and keeps only the new
    frontier, so memory stays O(log n) over any number of appends.
    """

    def __init__(self, size: int = 0, hashes: dict[Node, bytes] | None = None) -> None:
        self.size = size
        self._hashes = dict(hashes or {})

    @classmethod
    def read(cls, cur: Cursor, dialect: Dialect, size: int) -> Frontier:
        """The frontier of the stored tree of ``size`` leaves (one SELECT).

        Raises:
            StoreError: a frontier hash is missing or unreadable.
        """
        nodes = frontier_nodes(size)
        return cls(size, dict(zip(nodes, read_nodes(cur, dialect, nodes), strict=True)))

    def read_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        """The frontier hashes asked for (``stored_hashes_for_append`` asks no others).

        Raises:
            StoreError: a node is not on the frontier.
        """
        try:
            return [self._hashes[node] for node in nodes]
        except KeyError as e:
            raise StoreError(f"no frontier hash {e.args[0]} at tree size {self.size}") from e

    def append(self, leaf: bytes) -> tuple[StoredHash, ...]:
        """Append ``leaf`` (the leaf's data, not its hash); return the hashes to store.

        Raises:
            RequestError: the tree is full.
            StoreError: the frontier is incomplete.
        """
        stored = _merkle.stored_hashes_for_append(self.size, _merkle.leaf_hash(leaf), self)
        # The subtrees the leaf completes leave the frontier (stored[1:] merged
        # them, with their left siblings, into the top one); the top one joins it.
        for level in range(len(stored) - 1):
            del self._hashes[Node(level, ((self.size + 1) >> level) - 2)]
        top = stored[-1]
        self._hashes[top.node] = top.hash
        self.size += 1
        return stored


def backfill(cur: Cursor, dialect: Dialect) -> None:
    """Store the tree hashes of every record already in ``audit_log`` (migration 2 -> 3).

    Reads the records a page at a time in the caller's transaction.

    Raises:
        StoreError: a record is missing (seq not 1, 2, 3, ...) or unreadable: the
            leaves would be misnumbered, so the tree is not built.
    """
    tree = Frontier()
    while True:
        cur.execute(dialect.translate(_rows.SELECT_RECORDS), (tree.size + 1,))
        page = cur.fetchall()
        rows = []
        for row in page:
            try:
                record = _rows.row_to_record(row)
                if record.seq != tree.size + 1:
                    raise ValueError(f"record {tree.size + 1} is missing")
                rows.extend(tree_rows(tree.append(record_leaf(record))))
            except (AuditChainError, ValueError) as e:
                raise StoreError(f"cannot build the Merkle tree of the records: {e}") from e
        if rows:
            cur.executemany(dialect.translate(INSERT_TREE), rows)
        if len(page) < _rows.PAGE:
            return


def _checked_size(size: object, tree_size: int, name: str = "tree size") -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise RequestError(f"{name} must be an integer")
    if size > tree_size:
        raise TreeRangeError(f"{name} {size} is beyond the log's {tree_size} records")
    return size


class SqlTree(abc.ABC):
    """``AuditStore``'s tree reads for ``SqlAuditStore`` (see ``AuditStore`` for each).

    Each reads the head, then the hashes it needs with one SELECT: hashes are
    never rewritten, so those of a tree no larger than the head are all there.
    """

    _dialect: Dialect

    @abc.abstractmethod
    def _read(self) -> contextlib.AbstractContextManager[Cursor]: ...

    def _size(self, cur: Cursor) -> int:
        cur.execute(_rows.HEAD)
        row = cur.fetchone()
        return 0 if row is None else int(row[0])

    def tree_size(self) -> int:
        """The number of leaves: the head's seq.

        Raises:
            StoreError: the database failed.
        """
        with self._read() as cur:
            return self._size(cur)

    def tree_hash(self, size: int | None = None) -> bytes:
        """MTH(D[size]) (RFC 6962 §2.1), of the whole log when ``size`` is None.

        Raises:
            RequestError: ``size`` is not an integer in [0, 2**64-1].
            TreeRangeError: ``size`` is beyond the log.
            StoreError: the database failed or a hash is missing.
        """
        with self._read() as cur:
            head = self._size(cur)
            size = head if size is None else _checked_size(size, head)
            return _merkle.tree_hash(size, CursorHashes(cur, self._dialect))

    def inclusion_proof(self, seq: int, size: int | None = None) -> tuple[bytes, ...]:
        """PATH(seq - 1, D[size]) (RFC 6962 §2.1.1), in the whole log when ``size`` is None.

        Raises:
            RequestError: ``seq`` or ``size`` is not an integer in range.
            TreeRangeError: ``seq`` is not a record of the tree of ``size``.
            StoreError: the database failed or a hash is missing.
        """
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise RequestError("a record seq must be an integer")
        if seq < 1:
            raise TreeRangeError(f"record {seq} does not exist: records start at seq 1")
        with self._read() as cur:
            head = self._size(cur)
            size = head if size is None else _checked_size(size, head)
            return _merkle.inclusion_proof(seq - 1, size, CursorHashes(cur, self._dialect))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> tuple[bytes, ...]:
        """PROOF(old_size, D[new_size]) (RFC 6962 §2.1.2); ``new_size`` None: the whole log.

        Raises:
            RequestError: a size is not an integer in range, or old > new.
            TreeRangeError: ``new_size`` is beyond the log.
            StoreError: the database failed or a hash is missing.
        """
        with self._read() as cur:
            head = self._size(cur)
            new = head if new_size is None else _checked_size(new_size, head, "new tree size")
            reader = CursorHashes(cur, self._dialect)
            return _merkle.consistency_proof(old_size, new, reader)

    def stored_hashes(self, start: int, end: int | None = None) -> list[StoredHash]:
        """The hashes stored by the appends of leaves ``start .. end - 1`` (one SELECT).

        Raises:
            StoreError: the database failed or a hash is unreadable.
        """
        # Node(level, j) is stored by leaf (j + 1) * 2**level - 1, so leaves
        # [start, end) stored j in [(start + 1) >> level ... rounded up, end >> level).
        clauses, params = [], []
        for level in range(64 if end is None else end.bit_length()):
            low = -(-(start + 1) // (1 << level)) - 1
            if end is None:
                clauses.append("(level = ? AND idx >= ?)")
                params += [level, low]
            elif (high := end >> level) > low:
                clauses.append("(level = ? AND idx >= ? AND idx < ?)")
                params += [level, low, high]
        if not clauses:
            return []
        sql = f"SELECT level, idx, hash FROM audit_tree WHERE {' OR '.join(clauses)}"
        with self._read() as cur:
            cur.execute(self._dialect.translate(sql), params)
            rows = cur.fetchall()
        out = [(Node(int(r[0]), int(r[1])), r[2]) for r in rows]
        return [StoredHash(node, _hash_of(value, node)) for node, value in sorted(out)]


class TreeCheck:
    """``verify_store``'s tree check: rebuilds the tree from the records as they are
    verified and holds ``audit_tree`` against it, ``_CHECK_CHUNK`` records at a time.
    """

    def __init__(self, store: AuditStore) -> None:
        self._store = store
        self._tree = Frontier()
        self._start = 0
        self._expected: dict[Node, bytes] = {}

    def add(self, record: AuditRecord) -> None:
        """Add the next record (already chain-verified) as the next leaf.

        Raises:
            AuditChainError: a stored hash of the chunk just completed is wrong.
            StoreError: the store cannot be read.
        """
        self._expected.update((s.node, s.hash) for s in self._tree.append(record_leaf(record)))
        if self._tree.size - self._start >= _CHECK_CHUNK:
            self._compare()

    def finish(self) -> None:
        """Check the last chunk, and that no hash is stored beyond the last record.

        Raises:
            AuditChainError: names the first bad level and index.
            StoreError: the store cannot be read.
        """
        self._compare()
        end = self._tree.size
        extra = self._store.stored_hashes(end)
        if extra and self._store.tree_size() <= end:  # else: appended since the records were read
            node = extra[0].node
            raise AuditChainError(
                f"Merkle tree: a hash is stored at level {node.level}, index {node.index} "
                f"but the log ends at record {end} (records deleted from the end?)",
                seq=end + 1,
            )

    def _compare(self) -> None:
        start, end = self._start, self._tree.size
        stored = {s.node: s.hash for s in self._store.stored_hashes(start, end)}
        # The nodes stored by leaves [start, end) are exactly those expected; an
        # extra one beyond the last record is ``finish``'s to find.
        for node in sorted(self._expected):
            seq = (node.index + 1) << node.level  # the record whose append stored it
            where = f"Merkle tree: the hash at level {node.level}, index {node.index}"
            if node not in stored:
                raise AuditChainError(f"{where} is missing (deleted?)", seq=seq)
            if stored[node] != self._expected[node]:
                raise AuditChainError(f"{where} does not match the records (edited?)", seq=seq)
        self._start = end
        self._expected.clear()
