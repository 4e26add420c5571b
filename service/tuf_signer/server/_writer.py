"""Group commit: one writer thread turns concurrent appends into shared transactions.

Every request that must be recorded hands its entries to ``AuditWriter.submit``
and waits. The writer thread takes everything queued at that moment, up to
``max_batch`` entries, and commits it with one ``AuditStore.append`` call: one
transaction, one fsync. While that commit runs, new requests queue up for the
next one, so under load durability costs a fraction of an fsync per signature
(P4, P8), and with no load a lone request commits at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from tuf_signer._handoff import name_os_thread, resolve_threadsafe
from tuf_signer.audit import AuditStore, Committed, Entry
from tuf_signer.errors import StoreError

log = logging.getLogger(__name__)


@dataclass
class _Job:
    entries: Sequence[Entry]
    future: asyncio.Future[list[Committed]]


_STOP = object()


class AuditWriter:
    """Serialises all writes to an ``AuditStore`` on one thread, batching them.

    Args:
        store: the store; only this writer's thread calls its ``append``.
        max_batch: most entries per transaction.
    """

    def __init__(self, store: AuditStore, max_batch: int = 4096) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._closed = False
        self._thread.start()

    async def submit(self, entries: Sequence[Entry]) -> list[Committed]:
        """Record ``entries`` durably; returns one ``Committed`` per entry.

        Raises:
            StoreError: the store could not commit (nothing of the batch was
                written), or the writer is closed.
        """
        return await self.enqueue(entries)

    def enqueue(self, entries: Sequence[Entry]) -> asyncio.Future[list[Committed]]:
        """Queue ``entries`` for the next commit; the future resolves once durable.

        The entries commit together, in one transaction, whatever becomes of
        the future (cancelling it does not stop the commit).

        Raises:
            StoreError: the writer is closed.
        """
        if self._closed:
            raise StoreError("audit store unavailable: the writer is shut down")
        future: asyncio.Future[list[Committed]] = asyncio.get_running_loop().create_future()
        self._queue.put(_Job(entries, future))
        return future

    def close(self) -> None:
        """Commit whatever is queued, then stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        name_os_thread("tuf-audit")
        stopping = False
        while not stopping:
            first = self._queue.get()
            if not isinstance(first, _Job):
                return
            jobs = [first]
            size = len(first.entries)
            # Take what queued up during the previous commit: that is the group.
            while size < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(item, _Job):
                    stopping = True
                    break
                jobs.append(item)
                size += len(item.entries)
            self._commit(jobs)

    def _commit(self, jobs: list[_Job]) -> None:
        entries = [e for job in jobs for e in job.entries]
        try:
            results = self._store.append(entries)
        except Exception as e:
            if len(jobs) > 1:
                # One request's entries may be what the store cannot take: it
                # must fail only itself, never the requests it was grouped
                # with (whose signatures would otherwise be dropped).
                log.warning(
                    "audit group commit of %d requests failed; committing each alone", len(jobs)
                )
                for job in jobs:
                    self._commit([job])
                return
            resolve_threadsafe([(jobs[0].future, _as_store_error(e))])
            return
        start = 0
        outcomes = []
        for job in jobs:
            end = start + len(job.entries)
            outcomes.append((job.future, results[start:end]))
            start = end
        resolve_threadsafe(outcomes)


def _as_store_error(e: Exception) -> StoreError:
    if isinstance(e, StoreError):
        return e
    from tuf_signer.server._recording import loggable_cause  # _recording imports this module

    # The exception's types and frames only: a driver's message may echo what it was given.
    log.error("audit store append failed: %s", loggable_cause(e))
    return StoreError("audit store unavailable")
