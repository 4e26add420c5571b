"""A key's hash-bin declaration in the store (finding 1 of issue 10), in every store.

The declaration survives a reopen, a key without one reads back ``bins=None``, and
a store written before declarations existed (schema version 1) is migrated in
place when opened: its keys read back without a declaration.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tuf_signer.audit import AuditStore, CreateKey, Entry, PostgresAuditStore, SqliteAuditStore
from tuf_signer.audit._schema import SCHEMA_VERSION, schema_statements
from tuf_signer.audit._sqlite import SQLITE as SQLITE_DIALECT
from tuf_signer.model import BinsDelegation

from .conftest import AuditFactory


def _with_bins(entry: Entry, bins: BinsDelegation | None) -> Entry:
    change = entry.change
    assert isinstance(change, CreateKey)
    return replace(entry, change=replace(change, key=replace(change.key, bins=bins)))


def test_bins_round_trip(open_store: Callable[[], AuditStore], make: AuditFactory) -> None:
    store = open_store()
    declared = BinsDelegation("bins", 14)
    odd = BinsDelegation("a:b-c", 1)  # python-tuf allows any prefix; ':' is split from the right
    out = store.append(
        [
            _with_bins(make.create_key("online"), declared),
            _with_bins(make.create_key("odd"), odd),
            make.create_key("plain"),
        ]
    )
    assert [c.status for c in out] == ["OK"] * 3
    store.close()
    again = open_store()
    online, odd_key, plain = (again.get_key(n) for n in ("online", "odd", "plain"))
    assert online is not None and online.bins == declared
    assert odd_key is not None and odd_key.bins == odd
    assert plain is not None and plain.bins is None


# --- migration from schema version 1 --------------------------------------------------

_BINS_COLUMN = ",\n            bins TEXT NOT NULL DEFAULT ''"


def _v1_statements(dialect: Any) -> list[str]:
    """The version-1 DDL: today's, without keys.bins."""
    stmts = schema_statements(dialect)
    assert sum(_BINS_COLUMN in s for s in stmts) == 1
    return [s.replace(_BINS_COLUMN, "") for s in stmts]


_V1_KEY = (
    "INSERT INTO keys (name, algorithm, backend, rules, created_at) VALUES "
    "('old', 'ed25519', 'pkcs11', '[{\"max_validity\":86400,\"pattern\":\"bins-*\"}]', "
    "'2025-01-01T00:00:00.000000Z')"
)


@contextmanager
def _sqlite_v1(tmp_path: Path) -> Iterator[Callable[[], AuditStore]]:
    path = tmp_path / "audit.db"
    conn = sqlite3.connect(path)
    for stmt in _v1_statements(SQLITE_DIALECT):
        conn.execute(stmt)
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.execute(_V1_KEY)
    conn.commit()
    conn.close()
    yield lambda: SqliteAuditStore(path)


@contextmanager
def _postgres_v1(dsn: str) -> Iterator[Callable[[], AuditStore]]:
    import psycopg

    from tuf_signer.audit._postgres import _dialect

    with psycopg.connect(dsn, autocommit=True) as conn:
        for stmt in _v1_statements(_dialect()):
            conn.execute(stmt.replace("?", "%s"))
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute(_V1_KEY)
    yield lambda: PostgresAuditStore(dsn)


@pytest.fixture(params=["sqlite", "postgres"])
def open_v1(request: pytest.FixtureRequest) -> Iterator[Callable[[], AuditStore]]:
    """Opens a store that was written by a version-1 tuf-signer (one key, 'old')."""
    if request.param == "sqlite":
        maker = _sqlite_v1(request.getfixturevalue("tmp_path"))
    else:
        maker = _postgres_v1(request.getfixturevalue("postgres_dsn"))  # skips without a server
    with maker as opener:
        yield opener


def test_version_1_store_is_migrated(open_v1: Callable[[], AuditStore], make: AuditFactory) -> None:
    assert SCHEMA_VERSION == 5
    store = open_v1()
    old = store.get_key("old")
    assert old is not None
    assert old.bins is None
    assert [r.pattern for r in old.rules] == ["bins-*"]
    # The migrated store takes declarations.
    out = store.append([_with_bins(make.create_key("new"), BinsDelegation("bins", 12))])
    assert out[0].status == "OK"
    store.close()
    # Reopening a migrated store migrates nothing more.
    again = open_v1()
    new = again.get_key("new")
    assert new is not None and new.bins == BinsDelegation("bins", 12)
    again.close()
