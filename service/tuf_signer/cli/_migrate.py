"""``tuf-signer audit migrate``: copy a whole store into another one, then prove the copy.

Moving from SQLite to PostgreSQL (or between any two stores) must carry over
everything that the signer's promises rest on: the key registry (keys and
versions, with their states), every role's high-water mark (P3: without them
a rollback would be signed), the record with its hash chain (P4, P5), the
Merkle tree's stored hashes and the signed checkpoints with their witnesses'
cosignatures (issue 13). The copy is row for row, with the same ``seq``,
hashes and texts, so every checkpoint a witness cosigned still verifies
against the new store.

The copy runs in one write transaction on each side: the source's writer lock
is held (no signer can append meanwhile, and the copy is one consistent
state), and the target commits all of it or nothing. The target must be empty.
Afterwards both stores are read again: every table must hold the same rows,
and the target must pass ``verify_store`` (chain, tree, role states) with the
source's head and tree root.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuf_signer.errors import AuditChainError, RequestError, StoreError

if TYPE_CHECKING:  # imported when the command runs
    from tuf_signer.audit import AuditStore
    from tuf_signer.audit._schema import Cursor, Dialect
    from tuf_signer.config import AuditConfig

_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")


def store_tables(dialect: Dialect) -> list[str]:
    """Every table of the store, in the order the schema creates them (parents first).

    Read from the schema itself, so a table a later schema version adds is
    copied too. ``schema_version`` is not copied: the target was created at the
    version this tuf-signer writes, which opening the source brought it up to.
    """
    from tuf_signer.audit._schema import schema_statements

    names = _CREATE.findall("\n".join(schema_statements(dialect)))
    return [name for name in names if name != "schema_version"]


_CHUNK = 2000  # rows per fetch and per executemany


@dataclass(frozen=True)
class TableSum:
    """What a table holds, independent of row order: its row count and a digest.

    The digest is the sum modulo 2**256 of the SHA-256 of each row's JSON, so
    two databases that return rows in different orders (their collations
    differ) still agree, and no table has to be sorted in memory. Rows are
    unique (each table has a primary key), so a row cannot cancel another.
    """

    rows: int
    digest: int


def register(aus: Any) -> None:
    """Add ``migrate`` to the ``audit`` subparsers ``aus``."""
    p = aus.add_parser(
        "migrate",
        help="copy the whole store (keys, role state, record, tree, checkpoints) into an "
        "empty store, then verify the copy",
        description="Copy every key, key version, role state, record, tree hash, checkpoint "
        "and cosignature from the store of --from into the empty store of --to (e.g. SQLite "
        "to PostgreSQL), in one transaction on each side; the source's writer lock is held "
        "meanwhile, so stop the signer first. Then every table is compared row for row and "
        "the copy is verified (hash chain, Merkle tree, role states). Reads only the [audit] "
        "table of each config.",
    )
    p.add_argument(
        "--from", dest="source", required=True, metavar="CONFIG", help="config of the store to copy"
    )
    p.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="CONFIG",
        help="config of the store to fill; its tables are created, and must be empty",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_audit_migrate)


def cmd_audit_migrate(args: argparse.Namespace) -> int:
    """Run ``audit migrate``; prints what was copied and verified."""
    from tuf_signer.audit import open_audit_store
    from tuf_signer.config import load_audit_config

    source_config = load_audit_config(args.source)
    target_config = load_audit_config(args.target)
    _check_pair(source_config, target_config, args)
    source = open_audit_store(source_config, create=False)
    try:
        target = open_audit_store(target_config, create=True)
        try:
            result = migrate(source, target)
        finally:
            target.close()
    finally:
        source.close()
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        counts = ", ".join(f"{n} {table}" for table, n in result["copied"].items())
        print(
            f"OK: copied {counts} from {_where(source_config)} to {_where(target_config)}; "
            f"every table is row for row the same, and the copy verifies: "
            f"{result['records']} records, head seq {result['head_seq']} hash "
            f"{result['head_hash']}, {result['role_states']} role states cross-checked, "
            f"tree root {result['root_hash']}"
        )
    return 0


def _where(audit: AuditConfig) -> str:
    return f"sqlite {audit.path}" if audit.store == "sqlite" else "postgres"


def _check_pair(source: AuditConfig, target: AuditConfig, args: argparse.Namespace) -> None:
    """Refuse a target that is the source, or that would sign checkpoints under another origin.

    Raises:
        RequestError: naming the option or setting.
    """
    if source.store == target.store == "sqlite" and (
        Path(source.path).resolve() == Path(target.path).resolve()
    ):
        raise RequestError(f"--to: {args.target} names the same store as --from ({source.path})")
    if source.log is not None and target.log is not None and source.log.origin != target.log.origin:
        raise RequestError(
            f"--to: audit.origin {target.log.origin!r} differs from the source's "
            f"{source.log.origin!r}: the copied checkpoints belong to the source's log; "
            "keep its origin (a new origin starts a new log, see docs/runbooks.md)"
        )


def migrate(source: AuditStore, target: AuditStore) -> dict[str, Any]:
    """Copy ``source`` into the empty ``target`` and verify the copy.

    Raises:
        RequestError: the target is not empty.
        AuditChainError: the source does not verify (nothing is copied), or
            the copy differs from the source or does not verify.
        StoreError: either database failed; the target is left empty.
    """
    from tuf_signer.audit import verify_store

    # A broken record is not carried over silently: the operator must know first.
    before = verify_store(source)
    dialect = getattr(target, "_dialect", None)  # a SqlAuditStore's
    if dialect is None:
        raise RequestError(f"audit migrate supports SQL stores only, not {type(target).__name__}")
    tables = store_tables(dialect)
    copied: dict[str, int] = {}

    for table in tables:  # a clear refusal first; checked again inside the transaction
        if count := _count(target, table):
            raise RequestError(_not_empty(table, count))

    def copy_into(dst: Cursor) -> None:
        for table in tables:
            dst.execute(f"SELECT COUNT(*) FROM {table}")
            (count,) = dst.fetchone()
            if count:
                raise StoreError(_not_empty(table, count))

        def read_source(src: Cursor) -> None:
            for table in tables:
                copied[table] = _copy_table(src, dst, table, target)

        _write_transaction(source, read_source)  # the source's writer lock, held throughout

    _write_transaction(target, copy_into)
    for table in tables:
        want, got = _table_sum(source, table), _table_sum(target, table)
        if want != got:
            raise AuditChainError(
                f"the copy of {table} differs from the source ({got.rows} rows against "
                f"{want.rows}, or their contents): the target holds a bad copy; drop it "
                f"(was a signer still writing to the source? stop it first)"
            )
    after = verify_store(target)
    if (after.head_seq, after.head_hash, after.root_hash) != (
        before.head_seq,
        before.head_hash,
        before.root_hash,
    ):
        raise AuditChainError(
            "the copy verifies but its head or tree root is not the source's "
            "(was a signer still writing to the source? stop it first)"
        )
    return {
        "copied": copied,
        "records": after.records,
        "head_seq": after.head_seq,
        "head_hash": after.head_hash,
        "role_states": after.role_states,
        "root_hash": base64.b64encode(after.root_hash).decode("ascii"),
    }


def _write_transaction(store: AuditStore, fn: Any) -> None:
    # The store's own write path for rows beside the records (SqlAuditStore._small_write):
    # its writer lock and transaction, committed, or rolled back on any error.
    small_write = getattr(store, "_small_write", None)
    if small_write is None:
        raise RequestError(f"audit migrate supports SQL stores only, not {type(store).__name__}")
    small_write(fn)


def _copy_table(src: Any, dst: Any, table: str, target: Any) -> int:
    src.execute(f"SELECT * FROM {table}")
    columns = [d[0] for d in src.description]
    marks = ", ".join("?" for _ in columns)
    insert = target._dialect.translate(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
    )
    copied = 0
    while rows := src.fetchmany(_CHUNK):
        dst.executemany(insert, [tuple(r) for r in rows])
        copied += len(rows)
    return copied


def _not_empty(table: str, count: int) -> str:
    return (
        f"--to: the target store is not empty ({table} holds {count} rows); "
        "migrate only into a new database (or schema)"
    )


def _count(store: Any, table: str) -> int:
    with store._read() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        return int(cur.fetchone()[0])


def _rows(store: Any, table: str) -> Iterator[tuple[Any, ...]]:
    with store._read() as cur:
        cur.execute(f"SELECT * FROM {table}")
        while rows := cur.fetchmany(_CHUNK):
            yield from (tuple(r) for r in rows)


def _table_sum(store: Any, table: str) -> TableSum:
    count, total = 0, 0
    for row in _rows(store, table):
        text = json.dumps(list(row), separators=(",", ":"), ensure_ascii=False)
        total = (total + int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest())) % 2**256
        count += 1
    return TableSum(count, total)
