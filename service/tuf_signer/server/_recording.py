"""Every request on the record exactly once (P4): admission, refusals, commits.

A request opens with an ``AuditEvent`` saying who asked what, and when. The
steps that check it learn more (the role, the metadata version, the keyid) and
return a new event each time; a refusal (``Refusal``) carries the event as far
as the request got, so that its record says what was known when it was refused.

``Recorder.guarded`` admits a request, runs its body and settles what the body
returns: a result, or a ``Refusal`` that it records (once) and raises. A refusal
that reached no key (no identity, no rule, a limit) is counted for the next
summary record instead (``RefusalTally``).

Every refusal recorded here also gets its request line in the operator's log
(``_requestlog``); calls refused before admission are counted and summarised,
not logged one by one: a flood of them must not become a flood of lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from tuf_signer.audit import AuditStore, Committed, Entry, refused_event
from tuf_signer.errors import (
    LimitError,
    StoreError,
    TufSignerError,
    UnauthenticatedError,
    UnknownIdentityError,
)
from tuf_signer.model import AuditEvent, Outcome, recordable
from tuf_signer.policy import AccessRule
from tuf_signer.server import _metrics
from tuf_signer.server._guard import Guard
from tuf_signer.server._requestlog import log_refused
from tuf_signer.server._tally import RefusalTally
from tuf_signer.server._values import Clock, rfc3339
from tuf_signer.server._writer import AuditWriter

log = logging.getLogger(__name__)

T = TypeVar("T")

# Refusals that reached no key are counted, not recorded one by one (_tally.py).
_COUNTED = (UnauthenticatedError, UnknownIdentityError, LimitError)

_CANCELLED = TufSignerError(
    "the call was cancelled, or ran past its deadline, before it completed; nothing was returned",
    code="CANCELLED",
)


@dataclass(frozen=True)
class Refusal:
    """A refused request: why, and the record it is refused on.

    Attributes:
        error: the refusal the caller gets.
        event: the request's record as far as it got (what its checks had
            learnt when it was refused).
        recorded: the store refused the request's change itself and already
            wrote the refused record (do not record it twice).
        cause: the unexpected exception behind an "internal error", for the log.
        seq: the record's seq when ``recorded`` (0 when not known).
    """

    error: TufSignerError
    event: AuditEvent
    recorded: bool = False
    cause: Exception | None = None
    seq: int = 0

    @classmethod
    def internal(cls, event: AuditEvent, cause: Exception) -> Refusal:
        """An unexpected exception: the caller and the record learn only "internal error"."""
        return cls(TufSignerError("internal error"), event, cause=cause)

    def entry(self) -> Entry:
        """The refused record (an INTERNAL one is logged too, with its cause)."""
        return refusal_entry(self.event, self.error, self.cause)


def refusal_entry(
    event: AuditEvent, error: TufSignerError, cause: Exception | None = None
) -> Entry:
    """The record of ``event`` refused with ``error`` (and no signature).

    Every refusal the service records is built here, so an INTERNAL one (an
    unexpected exception, ``cause``, or a backend failing in a way the caller
    cannot fix) is also logged here at ERROR with its cause: the operator's
    log has every INTERNAL refusal the audit log has (issue 12, finding 2).
    """
    if error.code == "INTERNAL":
        _log_internal(event, error, cause)
    return Entry(refused_event(event, error))


def _log_internal(event: AuditEvent, error: TufSignerError, cause: Exception | None) -> None:
    """Log an INTERNAL refusal: the request, the error and its cause (``loggable_cause``).

    Reasons never hold a PIN or key material (errors.py); a library's
    exception text might (a ``UnicodeDecodeError`` from reading a pin file
    quotes the byte), so only its type and where it was raised are logged.
    """
    origin = cause or error.__cause__
    because = f"; cause: {loggable_cause(origin)}" if origin else ""
    log.error(
        "refused INTERNAL: %s by %s, key %s version %d, role %s: %s: %s%s",
        event.operation,
        event.identity,
        event.key_name or "-",
        event.key_version,
        event.role or "-",
        type(error).__name__,
        recordable(error.reason, 1024),
        because,
        # For --log-format json: the request's fields (_logs.REQUEST_FIELDS).
        extra={
            "identity": event.identity,
            "key": event.key_name,
            "role": event.role,
            "status": error.code,
        },
    )


def loggable_cause(error: BaseException) -> str:
    """An exception for the operator's log, without any text a library wrote.

    Each exception of its chain (causes and contexts) by type; ours
    (``TufSignerError``) with their reason, which is written to be safe. Then
    the traceback's frames (file, line, function, source line), never the
    messages nor any value: an exception's text may hold a PIN or key bytes.
    """
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    innermost = error
    while current is not None and id(current) not in seen and len(parts) < 8:
        seen.add(id(current))
        if isinstance(current, TufSignerError):
            parts.append(f"{type(current).__name__}: {recordable(current.reason, 512)}")
        else:
            parts.append(type(current).__name__)
        innermost = current
        current = current.__cause__ or current.__context__
    frames = "".join(traceback.format_tb(error.__traceback__))
    if innermost is not error:
        frames += "".join(traceback.format_tb(innermost.__traceback__))
    where = f"\n{frames.rstrip()}" if frames else ""
    return " <- ".join(parts) + where


class Recorder:
    """Admission, the group-commit writer and the refusal tally, for every request.

    Args:
        store: the audit store; written directly only by ``close``.
        writer: the group-commit writer over ``store``.
        guard: admission (authorisation and per-identity limits).
        clock: returns the current UTC time.
    """

    def __init__(self, store: AuditStore, writer: AuditWriter, guard: Guard, clock: Clock) -> None:
        self._store = store
        self._writer = writer
        self._guard = guard
        self._clock = clock
        self._tally = RefusalTally()

    def event(self, identity: str, operation: str, at: str = "", **fields: Any) -> AuditEvent:
        """A granted event stamped now (or ``at``, an RFC 3339 time already formatted).

        The caller's strings (``key_name``, ``role``) are stored escaped and
        bounded (``recordable``): they are validated later, and a refusal
        must be recordable whatever they hold.
        """
        for name in ("key_name", "role"):
            if name in fields:
                fields[name] = recordable(fields[name])
        return AuditEvent(
            time=at or rfc3339(self._clock()),
            identity=recordable(identity, 1024),
            operation=operation,
            outcome=Outcome.GRANTED,
            status="OK",
            **fields,
        )

    # --- commits -----------------------------------------------------------------

    async def commit(self, entry: Entry) -> Committed:
        """Commit one entry; a cancelled caller does not stop it.

        Raises:
            StoreError: nothing could be recorded.
        """
        (committed,) = await self.commit_many([entry])
        return committed

    async def commit_many(self, entries: Sequence[Entry]) -> list[Committed]:
        """Commit entries in one transaction; a cancelled caller does not stop it.

        Raises:
            StoreError: nothing could be recorded.
        """
        future = self._writer.enqueue(entries)
        try:
            with _metrics.timed("audit_commit"):
                return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The writer commits it anyway; wait so the record is settled.
            with contextlib.suppress(Exception):
                await future
            raise

    def _count_refusal(self, identity: str, operation: str, error: TufSignerError, at: str) -> None:
        """Count a refusal that reached no key (the tally) and in the metrics."""
        self._tally.add(identity, operation, error, at)
        if isinstance(error, LimitError):
            label = identity if self._guard.knows(identity) else _metrics.OTHER
            _metrics.LIMIT_REFUSALS.labels(label).inc()
        else:
            _metrics.UNADMITTED_CALLS.labels(error.code).inc()

    async def cancelled(self, event: AuditEvent) -> None:
        """Record that the request on ``event`` was cancelled before its record.

        Best effort: the caller is gone, and a store that cannot take the
        record has refused the request's other records too.
        """
        with contextlib.suppress(TufSignerError):
            committed = await self.commit(refusal_entry(event, _CANCELLED))
            log_refused(event, _CANCELLED, committed.seq)

    # --- steps of a request --------------------------------------------------------

    async def outcome(self, event: AuditEvent, work: Awaitable[T]) -> T | Refusal:
        """``work``'s result, or its refusal on ``event``.

        A ``TufSignerError`` is the refusal; any other exception is an
        internal error (``Refusal.internal``). A cancellation propagates.
        """
        try:
            return await work
        except TufSignerError as e:
            return Refusal(e, event)
        except Exception as e:
            return Refusal.internal(event, e)

    async def before_record(self, event: AuditEvent, work: Awaitable[T]) -> T | Refusal:
        """``outcome``, for work done before the request has any record.

        A cancellation meanwhile is recorded (CANCELLED) on ``event``, then
        propagates: the call leaves a record even when its caller has gone.
        """
        try:
            return await self.outcome(event, work)
        except asyncio.CancelledError:
            await self.cancelled(event)
            raise

    async def guarded(
        self,
        event: AuditEvent,
        operation: str,
        body: Callable[[AccessRule], Awaitable[T | Refusal]],
        cost: int = 1,
        nbytes: int = 0,
    ) -> T:
        """Admit the request opened by ``event``, run ``body``, and settle its refusal.

        ``body`` returns a ``Refusal`` carrying what it learnt, or raises one
        on ``event`` itself. It records its own cancellation (``before_record``):
        only it knows whether its record is already written.

        Raises:
            TufSignerError: the refusal, recorded once (or counted); ``StoreError``
                when nothing could be recorded.
        """
        identity = event.identity
        with contextlib.ExitStack() as admitted:
            try:
                rule = admitted.enter_context(self._guard.admit(identity, operation, cost, nbytes))
            except _COUNTED as e:
                self._count_refusal(identity, event.operation, e, event.time)
                raise
            except TufSignerError as e:
                committed = await self.commit(refusal_entry(event, e))
                log_refused(event, e, committed.seq)
                raise
            result = await self.outcome(event, body(rule))
            if isinstance(result, Refusal):
                await self._refused(result)
            return result

    async def _refused(self, refusal: Refusal) -> NoReturn:
        """Put ``refusal`` on the record (unless the store did, or cannot), then raise it."""
        error, event = refusal.error, refusal.event
        if refusal.recorded or isinstance(error, StoreError):
            log_refused(event, error, refusal.seq)
            raise error
        if isinstance(error, LimitError):
            self._count_refusal(event.identity, event.operation, error, event.time)
            raise error
        committed = await self.commit(refusal.entry())
        log_refused(event, error, committed.seq)
        if refusal.cause is not None:
            raise error from refusal.cause
        raise error

    # --- refusals outside the service proper -------------------------------------------

    async def refuse(
        self, identity: str, operation: str, error: TufSignerError, **fields: Any
    ) -> None:
        """Record a request refused before it reached the service proper, then raise.

        Used by the transport layer for requests it cannot even decode (an
        unknown algorithm number, version 0, an oversized message), so that
        they are on the record too: counted like any unadmitted call when the
        caller has no identity or no rule, else recorded.

        Raises:
            TufSignerError: ``error``, once recorded (``StoreError`` if it cannot be).
        """
        event = self.event(identity, operation, **fields)
        if not isinstance(error, LimitError | UnauthenticatedError) and self._guard.knows(identity):
            try:
                self._guard.charge_call(identity)  # bad messages are throttled too
            except LimitError as e:
                self._count_refusal(event.identity, operation, e, event.time)
                raise
            committed = await self.commit(refusal_entry(event, error))
            log_refused(event, error, committed.seq)
            raise error
        self._count_refusal(event.identity, operation, error, event.time)
        raise error

    async def flush_refusals(self) -> int:
        """Write the summary records of the refusals counted since the last flush.

        Returns:
            How many summary records were written.

        Raises:
            StoreError: they could not be written; the counts are kept for
                the next flush.
        """
        events = self._tally.drain()
        if not events:
            return 0
        try:
            await self._writer.submit([Entry(e) for e in events])
        except StoreError:
            # Counted again with what comes next: the store's outage must not
            # erase the calls refused during it.
            self._tally.restore(events)
            log.error("could not write the summary of %d groups of refused calls", len(events))
            raise
        return len(events)

    def close(self) -> None:
        """Commit what is queued and the last refusal summaries, stop the writer."""
        self._writer.close()
        events = self._tally.drain()
        if events:
            try:
                self._store.append([Entry(e) for e in events])
            except StoreError as e:
                log.error("lost the summary of %d groups of refused calls: %s", len(events), e)
