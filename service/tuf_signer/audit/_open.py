"""Opening the configured audit store: one opener per ``audit.store`` name.

The server's wiring and the offline ``audit`` commands both open stores here,
so the commands need neither gRPC nor a key backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tuf_signer.audit._postgres import PostgresAuditStore
from tuf_signer.audit._sqlite import SqliteAuditStore
from tuf_signer.audit._store import AuditStore
from tuf_signer.config import AuditConfig
from tuf_signer.errors import ConfigError


def _open_sqlite(audit: AuditConfig, create: bool) -> AuditStore:
    if not create and not audit.path.exists():
        raise ConfigError(f"audit.path: {audit.path} does not exist")
    return SqliteAuditStore(audit.path)


def _open_postgres(audit: AuditConfig, create: bool) -> AuditStore:
    return PostgresAuditStore(audit.read_dsn(), create=create)


# By ``audit.store``; each opener takes the settings and ``create``.
STORE_OPENERS: Mapping[str, Callable[[AuditConfig, bool], AuditStore]] = {
    "sqlite": _open_sqlite,
    "postgres": _open_postgres,
}


def open_audit_store(audit: AuditConfig, *, create: bool = True) -> AuditStore:
    """Open the configured audit store (``audit.store``).

    Args:
        audit: the ``[audit]`` settings.
        create: create the database (SQLite) or its tables (PostgreSQL) when
            missing; False for the offline ``audit`` commands, which must not
            conjure up an empty record.

    Raises:
        ConfigError: the connection string's variable is unset or invalid, or
            (with ``create=False``) the SQLite file does not exist.
        StoreError: the store cannot be opened.
    """
    return STORE_OPENERS[audit.store](audit, create)
