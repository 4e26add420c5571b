"""One database connection per thread, shared by the SQL stores.

A store is read from any thread and written from one writer thread, and a
DB-API connection is not for sharing between threads (``sqlite3`` refuses it;
psycopg would serialise the threads on one socket). So each thread that uses a
store gets its own connection, opened on its first call. The connections of
threads that have ended are closed when the next one is opened, and ``close``
closes them all.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from tuf_signer.errors import StoreError

logger = logging.getLogger(__name__)


class _Closeable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closeable)


class ThreadConnections(Generic[C]):
    """The connections of one store, one per thread, opened lazily by ``open_``.

    Args:
        open_: opens a new connection for the calling thread; raises StoreError
            when it cannot.
    """

    def __init__(self, open_: Callable[[], C]) -> None:
        self._open = open_
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[tuple[weakref.ref[threading.Thread], C]] = []
        self._closed = False

    def get(self) -> C:
        """Return the calling thread's connection, opening it on first use.

        Raises:
            StoreError: the store is closed, or ``open_`` failed.
        """
        if self._closed:
            raise StoreError("audit store is closed")
        conn: C | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = self._open()
        with self._lock:
            if self._closed:
                _close(conn)
                raise StoreError("audit store is closed")
            # Close the connections of threads that have ended.
            alive = []
            for ref, other in self._conns:
                thread = ref()
                if thread is not None and thread.is_alive():
                    alive.append((ref, other))
                else:
                    _close(other)
            alive.append((weakref.ref(threading.current_thread()), conn))
            self._conns = alive
        self._local.conn = conn
        return conn

    def discard(self) -> None:
        """Close the calling thread's connection; its next ``get`` opens a new one."""
        conn: C | None = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._lock:
            self._conns = [(ref, other) for ref, other in self._conns if other is not conn]
        _close(conn)

    def close(self) -> None:
        """Close every connection; later calls to ``get`` raise StoreError."""
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for _, conn in conns:
            _close(conn)


def _close(conn: _Closeable) -> None:
    try:
        conn.close()
    except Exception:  # closing must not hide what the caller is doing
        logger.warning("closing an audit store connection failed", exc_info=True)
