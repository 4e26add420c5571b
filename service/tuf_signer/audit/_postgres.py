"""The PostgreSQL audit store: one record shared by several workers and instances.

SQLite is the default; PostgreSQL is for when more than one host signs with
the same keys (replicas), or the record must live on a database server with
its own backups and replication. The tables and every rule are the same
(``SqlAuditStore``); this module adds the connection and the locking.

- **One writer at a time, across every process and host.** A write
  transaction starts by taking a transaction-level advisory lock keyed by the
  OID of this schema's ``audit_log``, so two writers never chain onto the same
  head and never both pass the role state's high-water check (P3). Readers do
  not take it. The primary key on ``audit_log.seq`` backs it up: a second
  writer on the same head would fail and roll back, never fork the chain.
- **Durable commits.** Every connection sets ``synchronous_commit = on``, so
  ``append`` returns only after its commit is flushed to the WAL on disk (and
  to the synchronous standbys, if the server has any) (P4, P8). The store
  warns when the server runs with ``fsync = off``.
- **A connection per thread**, in autocommit mode: reads are single
  statements, and writes open their transaction explicitly. A connection that
  the server has dropped (restart, ``pg_terminate_backend``, an idle timeout)
  is replaced once, on its thread's next call; if the new one cannot be opened
  that call fails with StoreError, and nothing is signed (fail closed).
- **Secrets stay out.** Passwords in the connection string never appear in
  messages, logs or ``repr``: libpq quotes parts of a malformed connection
  string in its errors, so those errors are never repeated.

The tables live in the first schema of the connection's ``search_path``
(e.g. ``options=-csearch_path=tuf_signer`` in the connection string).
"""

from __future__ import annotations

import functools
import logging
import select
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

from tuf_signer.audit._connections import ThreadConnections
from tuf_signer.audit._schema import Connection, Cursor, Dialect, unavailable
from tuf_signer.audit._sql import SqlAuditStore
from tuf_signer.errors import StoreError

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

# Connection parameters that hold secrets (libpq "Parameter Key Words").
SECRET_PARAMS = ("password", "sslpassword")
# What repr and the log may show of a connection string.
_SHOWN_PARAMS = ("host", "hostaddr", "port", "dbname", "user")

# The first key of the advisory locks this store takes, so that they do not
# meet another application's: b"tufs". The two-key and the one-key (bigint)
# advisory lock spaces do not overlap (PostgreSQL manual, "Advisory Locks").
_LOCK_SPACE = int.from_bytes(b"tufs", "big")


def _import_psycopg() -> ModuleType:
    try:
        import psycopg
    except ImportError as e:
        raise StoreError(
            "the PostgreSQL audit store needs psycopg: pip install 'tuf-signer[postgres]'"
        ) from e
    return psycopg


@functools.cache
def _dialect() -> Dialect:
    psycopg = _import_psycopg()
    return Dialect(
        name="postgresql",
        placeholder="%s",
        bigint="BIGINT",
        # READ COMMITTED: each statement after the lock sees every commit made
        # before it was granted, so the head read is the real head.
        begin_write=(
            "BEGIN ISOLATION LEVEL READ COMMITTED",
            f"SELECT pg_advisory_xact_lock({_LOCK_SPACE}, 'audit_log'::regclass::oid::int4)",
        ),
        # audit_log has no OID before it exists: one key for every schema.
        begin_schema=(
            "BEGIN ISOLATION LEVEL READ COMMITTED",
            f"SELECT pg_advisory_xact_lock({_LOCK_SPACE}, 0)",
        ),
        table_exists=(
            "SELECT 1 FROM pg_catalog.pg_tables"
            " WHERE schemaname = current_schema() AND tablename = ?"
        ),
        errors=(psycopg.Error,),
    )


def dsn_params(dsn: str) -> dict[str, str]:
    """Split a libpq connection string (``key=value ...`` or a URI) into parameters.

    Raises:
        StoreError: psycopg is not installed, or ``dsn`` is not a connection
            string. The message never repeats ``dsn`` or libpq's complaint,
            which may quote a password.
    """
    psycopg = _import_psycopg()
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        # Not chained: libpq's message (e.g. on a URI with an unbalanced
        # bracket) repeats the whole string, password included.
        raise StoreError(
            "the PostgreSQL connection string is not valid (libpq's message is not "
            "repeated: it may quote a password)"
        ) from None
    return {key: str(value) for key, value in params.items() if value is not None}


def dsn_secrets(dsn: str) -> list[str]:
    """Return the names of the secret parameters (a password) set in ``dsn``.

    Raises:
        StoreError: as ``dsn_params``.
    """
    params = dsn_params(dsn)
    return [key for key in SECRET_PARAMS if params.get(key)]


class _Dsn:
    """A connection string that keeps its secrets out of repr and messages."""

    __slots__ = ("_secrets", "value")

    def __init__(self, value: str, secrets: Iterable[str]) -> None:
        self.value = value
        self._secrets = tuple(s for s in secrets if s)

    def leaks(self, text: str) -> bool:
        return any(secret in text for secret in self._secrets)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return "<PostgreSQL connection string>"


def _describe(params: Mapping[str, str]) -> str:
    shown = [f"{key}={params[key]}" for key in _SHOWN_PARAMS if params.get(key)]
    return " ".join(shown) or "libpq defaults"


class PostgresAuditStore(SqlAuditStore):
    """``AuditStore`` in a PostgreSQL database (psycopg 3), shared by many writers.

    See the module docstring for locking, durability and reconnection.
    """

    def __init__(
        self,
        dsn: str,
        *,
        create: bool = True,
        lock_timeout: float = 5.0,
        connect_timeout: int = 10,
    ) -> None:
        """Connect, create the tables if needed, and check the schema version.

        Args:
            dsn: a libpq connection string (``key=value ...`` or
                ``postgresql://...``); a password in it is never shown.
            create: create the tables when they are missing; with False (the
                offline ``audit`` commands) a database without them is refused.
            lock_timeout: seconds a write waits for another writer's lock.
            connect_timeout: seconds to wait for a connection, unless ``dsn``
                sets ``connect_timeout`` itself.

        Raises:
            StoreError: psycopg is missing, ``dsn`` is not a connection string,
                the server cannot be reached, the tables are missing (with
                ``create=False``), or their schema version is not ours.
        """
        super().__init__(_dialect())
        self._psycopg: Any = _import_psycopg()
        params = dsn_params(dsn)
        self._dsn = _Dsn(dsn, (params.get(key, "") for key in SECRET_PARAMS))
        self._where = _describe(params)
        self._lock_timeout_ms = max(1, int(lock_timeout * 1000))
        self._connect_args: dict[str, Any] = {"fallback_application_name": "tuf-signer"}
        if "connect_timeout" not in params:
            self._connect_args["connect_timeout"] = connect_timeout
        self._conns: ThreadConnections[psycopg.Connection[Any]] = ThreadConnections(
            self._open_connection
        )
        try:
            if not create:
                self._require_tables()
            self._init_schema()
            self._check_durability()
        except BaseException:
            self.close()
            raise
        logger.debug("audit store open: PostgreSQL %s", self._where)

    def __repr__(self) -> str:
        return f"PostgresAuditStore({self._where})"

    # --- errors ----------------------------------------------------------------

    def _fail(self, e: Exception) -> NoReturn:
        """Raise the StoreError for a driver error, with any secret blanked out."""
        error = unavailable(e)
        if self._dsn.leaks(str(e)):
            raise StoreError(self._dsn.redact(error.reason)) from None
        raise error from e

    # --- connections -------------------------------------------------------------

    def _open_connection(self) -> psycopg.Connection[Any]:
        pg = self._psycopg
        try:
            conn: psycopg.Connection[Any] = pg.connect(
                self._dsn.value, autocommit=True, **self._connect_args
            )
        except pg.Error as e:
            self._fail(e)
        try:
            # Session settings, whatever the server's defaults: durable commits
            # (P4, P8), and a bound on the wait for another writer's lock.
            conn.execute("SET synchronous_commit = on")
            conn.execute(f"SET lock_timeout = {self._lock_timeout_ms}")
        except pg.Error as e:
            conn.close()
            self._fail(e)
        return conn

    def _connection(self) -> Connection:
        conn = self._conns.get()
        if self._lost(conn):
            logger.warning("audit store: the connection to %s was lost; reconnecting", self._where)
            self._conns.discard()
            conn = self._conns.get()
        return conn

    def _lost(self, conn: psycopg.Connection[Any]) -> bool:
        """True when ``conn`` is closed or the server has hung up on it."""
        if conn.closed:  # broken by an earlier failure
            return True
        # Between calls the connection is idle, and the server sends an idle
        # connection nothing unasked except its goodbye (the FATAL message
        # before it closes the socket). Only then is it worth a round trip.
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        if not poller.poll(0):
            return False
        try:
            conn.execute("SELECT 1")
        except self._psycopg.Error:
            return True
        return False

    def _probe_write(self, cur: Cursor, timeout: float) -> None:
        """The append's transaction and advisory lock within ``timeout``, then an xid.

        ``SET LOCAL`` bounds this transaction's wait for the lock (and each
        statement) and ends with it. ``txid_current()`` gives the transaction
        an ID, so its commit writes a commit record to the WAL and flushes it
        (``synchronous_commit = on``), as a Sign's commit does, without a row
        to write and without a grant beyond the server role's.
        """
        milliseconds = max(1, int(timeout * 1000))
        begin, *lock = self._dialect.begin_write  # BEGIN, then the advisory lock
        cur.execute(begin)
        cur.execute(f"SET LOCAL lock_timeout = {milliseconds}")
        cur.execute(f"SET LOCAL statement_timeout = {milliseconds}")
        for stmt in lock:
            cur.execute(stmt)
        cur.execute("SELECT txid_current()")

    def _require_tables(self) -> None:
        conn = self._connection()
        try:
            cur = conn.cursor()
            self._exec(cur, self._dialect.table_exists, ("schema_version",))
            found = cur.fetchone() is not None
            cur.close()
        except self._psycopg.Error as e:
            self._fail(e)
        if not found:
            raise StoreError(
                f"no tuf-signer audit tables in the PostgreSQL database ({self._where}, "
                "first schema of the search_path); the server creates them when it starts"
            )

    def _check_durability(self) -> None:
        conn = self._connection()
        try:
            cur = conn.cursor()
            cur.execute("SELECT current_setting('fsync')")
            row = cur.fetchone()
            cur.close()
        except self._psycopg.Error as e:
            self._fail(e)
        if row is not None and row[0] != "on":
            logger.warning(
                "PostgreSQL (%s) runs with fsync = off: a server crash can lose "
                "committed audit records",
                self._where,
            )

    def close(self) -> None:
        """Close every connection this store opened; later calls raise StoreError."""
        self._conns.close()
