"""The default audit store: one SQLite file (WAL mode, fsync on every commit).

Writes come from one writer thread and reads from any thread, so each thread
gets its own connection (``sqlite3`` connections are not for sharing). WAL lets
readers run while the writer writes. ``synchronous=FULL`` makes every commit
durable before ``append`` returns (P4, P8).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from tuf_signer.audit._connections import ThreadConnections
from tuf_signer.audit._schema import Connection, Cursor, Dialect, unavailable
from tuf_signer.audit._sql import SqlAuditStore
from tuf_signer.errors import StoreError

logger = logging.getLogger(__name__)

SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    bigint="INTEGER",
    # IMMEDIATE takes the write lock at BEGIN, so the head read inside the
    # transaction cannot change under us (a DEFERRED read would).
    begin_write=("BEGIN IMMEDIATE",),
    begin_schema=("BEGIN IMMEDIATE",),
    table_exists="SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
    errors=(sqlite3.Error,),
)


class SqliteAuditStore(SqlAuditStore):
    """``AuditStore`` in one SQLite database file.

    A new database file is created with mode 0600; its directory must exist.
    Every connection runs with ``journal_mode=WAL``, ``synchronous=FULL``,
    ``foreign_keys=ON`` and a busy timeout.

    Before each commit the store checks that its path still names the file it
    opened: SQLite in WAL mode would otherwise go on "committing" into a file
    that was deleted or moved away, and the records would be lost on close.
    """

    def __init__(self, path: Path | str, *, busy_timeout: float = 5.0) -> None:
        """Open (and if needed create) the database at ``path``.

        Args:
            path: the database file; its directory must exist.
            busy_timeout: seconds to wait for another process's lock.

        Raises:
            StoreError: the directory is missing, the path is not a usable
                SQLite database, or its schema version is not ours.
        """
        super().__init__(SQLITE)
        if str(path) in ("", ":memory:"):
            raise StoreError("the audit store needs a database file, not an in-memory database")
        self._path = Path(path).absolute()
        self._busy_timeout = busy_timeout
        self._uri = "file:" + urllib.parse.quote(str(self._path)) + "?mode=rw"
        self._conns = ThreadConnections(self._open_connection)
        self._lock_fd: int | None = None
        self._lock_fd_guard = threading.Lock()
        # flock belongs to the open file, which all of this store's threads
        # share: the probe's LOCK_NB would succeed while the writer holds the
        # lock, and its LOCK_UN would release the writer's. One turn at a time
        # per process, then, before the kernel lock queues the processes.
        self._turn = threading.Lock()
        self._create_file()
        try:
            self._identity = self._file_identity()
            self._enable_wal()
            self._init_schema()
        except BaseException:
            self.close()
            raise
        logger.debug("audit store open: %s", self._path)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def _create_file(self) -> None:
        parent = self._path.parent
        if not parent.is_dir():
            raise StoreError(f"audit database directory {parent} does not exist")
        if self._path.is_dir():
            raise StoreError(f"audit database path {self._path} is a directory")
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as e:
            raise StoreError(f"cannot create audit database {self._path}: {e.strerror}") from e
        os.close(fd)
        # Make the new directory entry durable before records go into the file.
        try:
            dir_fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise StoreError(f"cannot sync audit database directory {parent}: {e.strerror}") from e
        logger.info("created audit database %s (mode 0600)", self._path)

    def _file_identity(self) -> tuple[int, int]:
        try:
            st = os.stat(self._path)
        except OSError as e:
            raise StoreError(
                f"audit database {self._path} vanished while open (deleted or moved?)"
            ) from e
        return st.st_dev, st.st_ino

    def _enable_wal(self) -> None:
        conn = self._sqlite_connection()
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.Error as e:
            raise unavailable(e) from e
        if str(mode).lower() != "wal":
            raise StoreError(f"audit database {self._path} cannot use WAL mode (got {mode!r})")

    def _connection(self) -> Connection:
        return self._sqlite_connection()

    def _sqlite_connection(self) -> sqlite3.Connection:
        return self._conns.get()

    def _open_connection(self) -> sqlite3.Connection:
        try:
            # mode=rw: never create a fresh empty file behind a vanished one.
            conn = sqlite3.connect(
                self._uri,
                uri=True,
                timeout=self._busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # so that close() can close it
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as e:
            raise unavailable(e) from e
        return conn

    @contextlib.contextmanager
    def _writer_turn(self, timeout: float | None = None) -> Iterator[None]:
        """Queue this process's writer behind other processes' on a kernel lock.

        With ``server.workers`` > 1, several processes write to one database.
        SQLite makes a writer that finds the write lock taken sleep and retry
        (1, 2, 5, 10 ms, ...), which adds milliseconds to every contended
        commit and leaves the CPU idle meanwhile. ``flock`` on a lock file next
        to the database queues the writers instead, and wakes the next one the
        moment the lock is released. SQLite's own lock still guards the data;
        a writer that does not take this lock (another tool) only meets the
        busy timeout, as before.

        With a ``timeout`` (the probe's) the wait polls, so that a writer
        stuck behind a held lock turns the probe into a failure, not a hang.
        Threads of this process take turns on ``_turn`` first: they share one
        lock-file descriptor, and ``flock`` does not tell them apart.

        Raises:
            StoreError: the lock file cannot be opened, or the turn did not
                come within ``timeout``.
        """
        fd = self._writer_lock_fd()
        deadline = 0.0 if timeout is None else time.monotonic() + timeout
        if timeout is None:
            self._turn.acquire()
        elif not self._turn.acquire(timeout=timeout):
            raise self._held_too_long(timeout)
        try:
            if timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # releases the GIL while it waits
            else:  # one deadline for both waits
                self._flock_until(fd, deadline, timeout)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._turn.release()

    def _held_too_long(self, timeout: float) -> StoreError:
        return StoreError(
            f"audit store unavailable: another writer held the lock on "
            f"{self._path} for more than {timeout:g} s"
        )

    def _flock_until(self, fd: int, deadline: float, timeout: float) -> None:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise self._held_too_long(timeout) from None
                time.sleep(0.005)

    def _probe_write(self, cur: Cursor, timeout: float) -> None:
        """``BEGIN IMMEDIATE`` within ``timeout``, then bump ``PRAGMA user_version``.

        A write that changes nothing is skipped by SQLite, and one rolled back
        never reaches the disk: only a committed change to a page meets a full
        disk or a read-only file. The header's user version is SQLite's
        integer for applications; nothing else here reads it.
        """
        cur.execute(f"PRAGMA busy_timeout = {max(1, int(timeout * 1000))}")
        try:
            for stmt in self._dialect.begin_write:
                cur.execute(stmt)
        finally:
            cur.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        cur.execute("PRAGMA user_version")
        count = int(cur.fetchone()[0])
        cur.execute(f"PRAGMA user_version = {(count + 1) % 2**31}")

    def _writer_lock_fd(self) -> int:
        with self._lock_fd_guard:
            if self._lock_fd is None:
                path = self._path.with_name(self._path.name + ".writer-lock")
                try:
                    self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                except OSError as e:
                    raise StoreError(f"cannot open the writer lock {path}: {e.strerror}") from e
            return self._lock_fd

    def _check_before_commit(self) -> None:
        if self._file_identity() != self._identity:
            raise StoreError(f"audit database {self._path} was replaced while open")

    def close(self) -> None:
        """Close every connection this store opened; later calls raise StoreError."""
        self._conns.close()
        with self._lock_fd_guard:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
