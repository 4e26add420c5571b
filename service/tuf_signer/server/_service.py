"""The signing service itself, free of gRPC: policy, HSM, record, in that order.

One Sign (DESIGN.md §3):

1. identity (given by the caller's transport layer);
2. look up the key and its ACTIVE version;
3. parse the payload and apply the TUF policy (P3), then the high-water mark
   known to this process;
4. sign in the backend (off the event loop);
5. in one transaction: compare-and-set the role state and append the record
   (the store is authoritative: a signature that loses the race is dropped);
6. reply.

Every request that reaches this class produces exactly one audit record,
granted or refused (P4). A refusal never reaches the backend, and a signature
is returned only once its record is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from tuf_signer import policy
from tuf_signer.audit import (
    AddVersion,
    AdvanceRole,
    AuditRecord,
    AuditStore,
    Committed,
    CreateKey,
    Entry,
    ResetRole,
    SetVersionState,
    advance_decision,
)
from tuf_signer.config import PolicyConfig
from tuf_signer.errors import (
    AlreadyExistsError,
    BackendError,
    DeadlineError,
    KeyStateError,
    LimitError,
    NotFoundError,
    RequestError,
    RollbackError,
    StaleKeyVersionError,
    StoreError,
    TufSignerError,
    UnauthenticatedError,
    UnknownIdentityError,
    VersionStepError,
    shown,
)
from tuf_signer.keys import KeyBackend, SignatureVerifier
from tuf_signer.model import (
    Algorithm,
    AuditEvent,
    BinsDelegation,
    KeyRecord,
    KeyState,
    KeyVersion,
    Outcome,
    RoleRule,
    RoleState,
    recordable,
)
from tuf_signer.policy import AccessRule
from tuf_signer.server._checker import CheckJob, CheckResult, PayloadChecker
from tuf_signer.server._guard import Guard
from tuf_signer.server._tally import RefusalTally
from tuf_signer.server._writer import AuditWriter

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
T = TypeVar("T")

_KEY_NAME_MAX = 128
_KEYID_RE = re.compile(r"[\x21-\x7e]{1,128}")

# Refusals that reached no key are counted, not recorded one by one (_tally.py).
_COUNTED = (UnauthenticatedError, UnknownIdentityError, LimitError)


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


def rfc3339(t: datetime) -> str:
    """UTC time with microseconds, e.g. ``2026-11-24T22:16:48.123456Z``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class SignResult:
    """A granted Sign."""

    keyid: str
    signature: str  # hex
    key_version: int
    audit_seq: int
    role: str
    metadata_version: int
    replayed: bool


@dataclass(frozen=True)
class KeyView:
    """A key with its versions, as the read RPCs return it."""

    key: KeyRecord
    versions: tuple[KeyVersion, ...]


def validate_key_name(name: str) -> None:
    """Key names are short printable ASCII identifiers.

    Raises:
        RequestError: empty, too long, or with characters outside ``[A-Za-z0-9._-]``.
    """
    if not name:
        raise RequestError("key name is required")
    if len(name) > _KEY_NAME_MAX:
        raise RequestError(f"key name is longer than {_KEY_NAME_MAX} characters")
    if not all(c.isascii() and (c.isalnum() or c in "._-") for c in name):
        raise RequestError(f"key name {shown(name)} may only use letters, digits, '.', '_' and '-'")


class SigningService:
    """Keys, policy and record behind the gRPC surface.

    Args:
        store: the audit store (also the key registry and role state).
        backends: key backends by name, already started.
        default_backend: backend for keys created without naming one.
        max_payload_bytes: largest Sign payload accepted.
        guard: admission (authorisation and per-identity limits).
        clock: returns the current UTC time (tests inject a frozen clock).
        writer: the group-commit writer; created over ``store`` when omitted.
        hsm_timeout: seconds a backend call may take before the request is
            refused with DEADLINE_EXCEEDED (keep it under the call deadline).
        max_batch: most requests in one SignBatch.
        checker: runs payload checks too costly for the event loop; a
            one-process checker when omitted.
        max_version_step: the largest version step above a role's mark, by
            role class ("timestamp", "snapshot", "targets"); a class not
            named is unbounded; None for the documented defaults
            (``config.PolicyConfig``).
    """

    def __init__(
        self,
        store: AuditStore,
        backends: Mapping[str, KeyBackend],
        default_backend: str,
        max_payload_bytes: int,
        guard: Guard,
        clock: Clock = utc_now,
        writer: AuditWriter | None = None,
        hsm_timeout: float = 25.0,
        max_batch: int = 4096,
        checker: PayloadChecker | None = None,
        max_version_step: Mapping[str, int] | None = None,
    ) -> None:
        self._store = store
        self._guard = guard
        self._hsm_timeout = hsm_timeout
        self._max_batch = max_batch
        self._backends = dict(backends)
        self._default_backend = default_backend
        self._max_payload = max_payload_bytes
        self._clock = clock
        self._writer = writer or AuditWriter(store)
        self._checker = checker or PayloadChecker()
        self._tally = RefusalTally()
        steps = PolicyConfig().max_version_step if max_version_step is None else max_version_step
        self._max_step = dict(steps)
        # Every signature is checked against the registered public key (issue 10).
        self._verifier = SignatureVerifier()
        # Caches. The store is authoritative; these only save reads. The role
        # state cache is a lower bound on the stored high-water marks (except
        # after an admin reset made elsewhere lowered one), so a refusal based
        # on it is checked against the store once (_role_decision), and a
        # stale entry only costs an HSM call that the transaction then refuses.
        self._keys: dict[str, KeyView] = {}
        self._roles: dict[tuple[str, str], RoleState] = {}
        # (key, role) -> (audit_seq, monotonic time) of the last re-read that
        # found the stored mark (see _role_decision).
        self._confirmed: dict[tuple[str, str], tuple[int, float]] = {}
        self._admin_lock = asyncio.Lock()
        self.reload()

    # --- state -------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the key registry and role state from the store.

        Raises:
            StoreError: the store cannot be read.
        """
        keys = {}
        for key in self._store.list_keys():
            keys[key.name] = KeyView(key, tuple(self._store.list_versions(key.name)))
        self._keys = keys
        self._roles = {(s.key_name, s.role): s for s in self._store.list_role_states()}

    def _refresh_key(self, name: str) -> KeyView | None:
        key = self._store.get_key(name)
        if key is None:
            self._keys.pop(name, None)
            return None
        view = KeyView(key, tuple(self._store.list_versions(name)))
        self._keys[name] = view
        return view

    def _view(self, name: str) -> KeyView:
        view = self._keys.get(name) or self._refresh_key(name)
        if view is None:
            raise NotFoundError(f"unknown key {shown(name)}")
        return view

    def _backend_for(self, key: KeyRecord) -> KeyBackend:
        backend = self._backends.get(key.backend)
        if backend is None:
            raise BackendError(f"key {key.name!r} lives in backend {key.backend!r}, not configured")
        return backend

    def _active_for(self, view: KeyView, expected_keyid: str) -> KeyVersion:
        """The ACTIVE version, which must have ``expected_keyid`` when one is given.

        Raises:
            KeyStateError: no ACTIVE version, or another keyid is ACTIVE.
        """
        active = self._active(view)
        if expected_keyid and expected_keyid != active.keyid:
            # Our cache may trail an activation made elsewhere: look once more.
            view = self._refresh_key(view.key.name) or view
            active = self._active(view)
            if expected_keyid != active.keyid:
                raise KeyStateError(
                    f"expected keyid {expected_keyid[:16]}... is not the ACTIVE version of "
                    f"key {view.key.name!r} (active: version {active.version}, "
                    f"keyid {active.keyid[:16]}...)"
                )
        return active

    @staticmethod
    def _active(view: KeyView) -> KeyVersion:
        for v in view.versions:
            if v.state is KeyState.ACTIVE:
                return v
        raise KeyStateError(f"key {view.key.name!r} has no ACTIVE version")

    def _now_event(self, identity: str, operation: str, at: str = "", **fields: Any) -> AuditEvent:
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

    async def _record(self, known: _Known, entry: Entry) -> Committed:
        """Commit one entry for this request; a cancelled caller does not stop it."""
        (committed,) = await self._record_many(known, [entry])
        return committed

    async def _record_many(self, known: _Known, entries: Sequence[Entry]) -> list[Committed]:
        """Commit entries in one transaction; a cancelled caller does not stop it."""
        future = self._writer.enqueue(entries)
        try:
            committed = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The writer commits it anyway; wait so the record is settled.
            with contextlib.suppress(Exception):
                await future
            known.recorded = True
            raise
        known.recorded = True
        return committed

    async def _commit_checked(self, known: _Known, entry: Entry) -> Committed:
        """Commit, turning a refusal by the store into its (already recorded) error."""
        committed = await self._record(known, entry)
        if committed.current is not None:
            self._remember(committed.current)
        if committed.error is not None:
            raise _Recorded(committed.error)
        return committed

    async def _refuse(self, known: _Known, error: TufSignerError) -> None:
        """Record a refusal. If even that fails, fail closed with the store error."""
        await self._record(known, _refusal(known.event, error))

    async def _guarded(
        self,
        known: _Known,
        operation: str,
        body: Callable[[AccessRule], Awaitable[T]],
        cost: int = 1,
        nbytes: int = 0,
    ) -> T:
        """Admit, run ``body``, and put every refusal on the record exactly once.

        A refusal at admission for want of an identity, a rule or a limit is
        counted for the next summary record instead (``RefusalTally``).
        """
        identity = known.event.identity
        with contextlib.ExitStack() as admitted:
            try:
                rule = admitted.enter_context(self._guard.admit(identity, operation, cost, nbytes))
            except _COUNTED as e:
                self._tally.add(identity, known.event.operation, e, known.event.time)
                raise
            except TufSignerError as e:
                await self._refuse(known, e)
                raise
            try:
                return await body(rule)
            except _Recorded as r:
                raise r.error from None
            except StoreError:
                raise
            except LimitError as e:
                self._tally.add(identity, known.event.operation, e, known.event.time)
                raise
            except TufSignerError as e:
                await self._refuse(known, e)
                raise
            except asyncio.CancelledError:
                if not known.recorded:
                    with contextlib.suppress(TufSignerError):
                        await self._refuse(known, _CANCELLED)
                raise
            except Exception as e:
                log.exception("unexpected error in %s", known.event.operation)
                await self._refuse(known, TufSignerError("internal error"))
                raise TufSignerError("internal error") from e

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
        known = _Known(self._now_event(identity, operation, **fields))
        if not isinstance(error, LimitError | UnauthenticatedError) and self._guard.knows(identity):
            try:
                self._guard.charge_call(identity)  # bad messages are throttled too
            except LimitError as e:
                self._tally.add(known.event.identity, operation, e, known.event.time)
                raise
            await self._refuse(known, error)
            raise error
        self._tally.add(known.event.identity, operation, error, known.event.time)
        raise error

    # --- Sign ----------------------------------------------------------------

    async def sign(
        self,
        identity: str,
        key_name: str,
        role: str | None,
        payload: bytes,
        expected_keyid: str = "",
    ) -> SignResult:
        """Check, sign and record one TUF ``signed`` payload.

        Raises:
            TufSignerError: the refusal (already recorded), or ``StoreError``
                when nothing could be recorded (nothing was signed).
        """
        digest = hashlib.sha256(payload).hexdigest()
        # The refusal record carries whatever was learnt before the refusal.
        known = _Known(
            self._now_event(
                identity, "sign", key_name=key_name, role=role or "", payload_sha256=digest
            )
        )

        async def body(rule: AccessRule) -> SignResult:
            return await self._sign(known, rule, key_name, role, payload, expected_keyid)

        return await self._guarded(known, policy.SIGN, body, nbytes=len(payload))

    async def _sign(
        self,
        known: _Known,
        rule: AccessRule,
        key_name: str,
        role: str | None,
        payload: bytes,
        expected_keyid: str,
    ) -> SignResult:
        for attempt in (1, 2):
            prep = await self._prepare(known, rule, key_name, role, payload, expected_keyid)
            if prep.replay is not None:
                committed = await self._commit_checked(known, prep.entry(prep.replay.signature))
                return prep.result(committed.current or prep.replay, committed, replayed=True)
            (sig,) = await self._backend_sign(prep.backend, [prep])
            if isinstance(sig, TufSignerError):
                # Another worker may have retired this version meanwhile (and
                # disabled it in the HSM): if a newer version is ACTIVE now,
                # sign again with it, unless the caller pinned this one.
                if attempt == 1 and not expected_keyid and self._active_moved(prep):
                    continue
                raise sig
            committed = await self._record(known, prep.entry(sig.hex()))
            try:
                return self._conclude(prep, committed)
            except _Recorded as r:
                # Another process activated a new version after our cache last
                # looked: that attempt is refused on the record; sign again with
                # the version now ACTIVE (unless the caller pinned the old one).
                if attempt == 2 or not isinstance(r.error, StaleKeyVersionError) or expected_keyid:
                    raise
                known.recorded = False
        raise AssertionError("unreachable")

    async def _prepare(
        self,
        known: _Known,
        rule: AccessRule,
        key_name: str,
        role: str | None,
        payload: bytes,
        expected_keyid: str,
    ) -> _Prepared:
        """Every check before the HSM (P2, P3); records what it learns in ``known``.

        Raises:
            TufSignerError: the refusal (not yet recorded).
        """
        validate_key_name(key_name)
        if expected_keyid and _KEYID_RE.fullmatch(expected_keyid) is None:
            raise RequestError(
                f"expected_keyid {shown(expected_keyid)} is not a keyid "
                "(at most 128 printable ASCII characters)"
            )
        # Authorisation first: a caller learns nothing about keys it may not use.
        policy.authorize_key(rule, key_name)
        view = self._view(key_name)
        job = CheckJob(
            payload=payload,
            role=role,
            key_name=key_name,
            rules=view.key.rules,
            now=self._clock(),
            max_payload_bytes=self._max_payload,
            payload_sha256=known.event.payload_sha256,
            bins=view.key.bins,
        )
        resolved, info, _rule = self._checker.inline(job) or await self._offload(
            known.event.identity, job
        )
        expires = info.expires.strftime(policy.TUF_EXPIRES_FORMAT)
        try:
            policy.authorize_role(rule, resolved)
            active = self._active_for(view, expected_keyid)
        except TufSignerError:
            known.event = replace(
                known.event, role=resolved, metadata_version=info.version, expires=expires
            )
            raise
        # One replace for both steps: a Sign's hot path (SignBatch runs it per item).
        known.event = replace(
            known.event,
            role=resolved,
            metadata_version=info.version,
            expires=expires,
            keyid=active.keyid,
            key_version=active.version,
        )
        state = RoleState(
            key_name=key_name,
            role=resolved,
            version=info.version,
            payload_sha256=info.payload_sha256,
            keyid=active.keyid,
            key_version=active.version,
            signature="",
            expires=known.event.expires,
            audit_seq=0,
        )
        max_step = self._max_step.get(info.type)
        # Raises before any HSM work; the stored state for an identical retry.
        replay = await self._role_decision(state, max_step)
        return _Prepared(
            known=known,
            state=state,
            backend=self._backend_for(view.key),
            handle=active.handle,
            algorithm=view.key.algorithm,
            payload=payload,
            replay=replay,
            version=active,
            max_step=max_step,
        )

    async def _role_decision(self, state: RoleState, max_step: int | None) -> RoleState | None:
        """The high-water check (P3, version step) against this process's cache.

        The cache is a lower bound on the stored mark, but an admin reset made
        by another worker may have lowered the stored one, and a step judged
        against a lower bound may be too long: a refusal re-reads the stored
        state once (off the event loop) and stands only if the store agrees.

        Returns:
            The stored state when ``state`` repeats it exactly (a replay), else None.

        Raises:
            RollbackError, VersionStepError: the store's mark refuses ``state``.
            StoreError: the store cannot be read.
        """
        key = (state.key_name, state.role)
        cached = self._roles.get(key)
        try:
            decision = advance_decision(cached, state, max_step)
        except (RollbackError, VersionStepError):
            # At most one re-read per role and second while the store keeps
            # agreeing: a flood of stale versions must not become a flood of reads.
            seq = cached.audit_seq if cached else 0
            confirmed_seq, confirmed_at = self._confirmed.get(key, (-1, 0.0))
            if confirmed_seq == seq and time.monotonic() - confirmed_at < 1.0:
                raise
            loop = asyncio.get_running_loop()
            stored = await loop.run_in_executor(None, self._store.get_role_state, *key)
            if stored is None:
                self._roles.pop(key, None)
            else:
                self._remember(stored)
            cached = self._roles.get(key)
            self._confirmed[key] = (cached.audit_seq if cached else 0, time.monotonic())
            decision = advance_decision(cached, state, max_step)
        return cached if decision == "replay" else None

    async def _offload(self, identity: str, job: CheckJob) -> CheckResult:
        """Check a payload in a checker process, charged to ``identity``'s CPU budget.

        Raises:
            LimitError: the identity's check budget is spent.
            TufSignerError: the payload's refusal, or RESOURCE_EXHAUSTED when
                the check ran past its time budget.
        """
        reserved = self._checker.timeout
        self._guard.reserve_check(identity, reserved)
        seconds = reserved  # a cancelled or failed check keeps its reservation
        try:
            verdict, seconds = await self._checker.offload(job)
        finally:
            self._guard.settle_check(identity, reserved, seconds)
        if isinstance(verdict, TufSignerError):
            raise verdict
        return verdict

    async def _backend_sign(
        self, backend: KeyBackend, preps: Sequence[_Prepared]
    ) -> list[bytes | TufSignerError]:
        """Sign prepared requests in one backend call, bounded by the HSM timeout."""
        try:
            async with asyncio.timeout(self._hsm_timeout):
                results = await backend.sign_batch(
                    [(p.handle, p.algorithm, p.payload) for p in preps],
                    [bytes.fromhex(p.state.payload_sha256) for p in preps],
                )
        except TimeoutError:
            error = DeadlineError(
                f"backend {backend.name!r} did not sign within {self._hsm_timeout:g} s"
            )
            return [error] * len(preps)
        return [self._verified(backend, p, r) for p, r in zip(preps, results, strict=True)]

    def _verified(
        self, backend: KeyBackend, prep: _Prepared, result: bytes | TufSignerError
    ) -> bytes | TufSignerError:
        """The signature if it verifies against the registered public key, else the error.

        Every backend's signature passes here before it is recorded or
        returned (issue 10, finding 10): a mismatch is UNAVAILABLE, recorded
        as a refusal, logged at ERROR, and the role state does not move.
        """
        if isinstance(result, TufSignerError):
            return result
        try:
            self._verifier.verify(
                backend.name,
                prep.version,
                prep.algorithm,
                result,
                prep.payload,
                bytes.fromhex(prep.state.payload_sha256),
            )
        except TufSignerError as e:
            return e
        return result

    def _active_moved(self, prep: _Prepared) -> bool:
        """Re-read the key: is another version than ``prep``'s ACTIVE now?"""
        view = self._refresh_key(prep.state.key_name)
        if view is None:
            return False
        active = [v for v in view.versions if v.state is KeyState.ACTIVE]
        return bool(active) and active[0].version != prep.state.key_version

    def _conclude(self, prep: _Prepared, committed: Committed) -> SignResult:
        """The reply for a committed grant, or the store's (recorded) refusal."""
        if committed.current is not None:
            self._remember(committed.current)
        if committed.error is not None:
            # Lost a race (another process or request advanced the role first,
            # or the version was retired meanwhile): the signature is dropped.
            if isinstance(committed.error, StaleKeyVersionError):
                self._refresh_key(prep.state.key_name)
            raise _Recorded(committed.error)
        final = committed.current or prep.state
        return prep.result(final, committed, committed.replayed)

    # --- SignBatch -------------------------------------------------------------

    async def sign_batch(
        self, identity: str, requests: Sequence[SignItem]
    ) -> list[SignResult | TufSignerError]:
        """Sign many payloads: per-item policy and results, one audit transaction.

        Each item is checked and recorded exactly as a lone Sign would be; a
        refused item never stops the others. All the batch's records (grants
        and refusals) commit together: one transaction, one fsync.

        Raises:
            TufSignerError: the whole call was refused (recorded once): not
                admitted, empty or too large; or ``StoreError`` when nothing
                could be recorded (no signature is returned).
        """
        batch = _Known(self._now_event(identity, "sign-batch", detail={"items": len(requests)}))

        async def body(rule: AccessRule) -> list[SignResult | TufSignerError]:
            if not requests:
                raise RequestError("SignBatch needs at least one request")
            if len(requests) > self._max_batch:
                raise RequestError(
                    f"SignBatch takes at most {self._max_batch} requests, got {len(requests)}"
                )
            return await self._sign_batch(identity, rule, requests, batch)

        nbytes = sum(len(r.payload) for r in requests)
        return await self._guarded(batch, policy.SIGN, body, cost=len(requests), nbytes=nbytes)

    async def _sign_batch(
        self, identity: str, rule: AccessRule, requests: Sequence[SignItem], batch: _Known
    ) -> list[SignResult | TufSignerError]:
        outcomes: list[SignResult | TufSignerError | None] = [None] * len(requests)
        entries: list[Entry] = []
        owners: list[tuple[int, _Prepared | None, TufSignerError | None]] = []
        # Pipeline: while the HSM signs one chunk (C_Sign releases the GIL),
        # this thread checks the next; each chunk goes to its backend(s) at once.
        signing: list[tuple[list[int], list[_Prepared], asyncio.Task[list[bytes | TufSignerError]]]]
        signing = []
        pending: dict[str, list[tuple[int, _Prepared]]] = {}

        def flush() -> None:
            for group in pending.values():
                preps = [p for _, p in group]
                task = asyncio.ensure_future(self._backend_sign(preps[0].backend, preps))
                signing.append(([i for i, _ in group], preps, task))
            pending.clear()

        at = batch.event.time  # the batch's items are recorded as of its arrival
        for i, item in enumerate(requests):
            digest = hashlib.sha256(item.payload).hexdigest()
            known = _Known(
                self._now_event(
                    identity,
                    "sign",
                    at,
                    key_name=item.key,
                    role=item.role or "",
                    payload_sha256=digest,
                )
            )
            try:
                prep = await self._prepare(
                    known, rule, item.key, item.role, item.payload, item.expected_keyid
                )
            except TufSignerError as e:
                entries.append(_refusal(known.event, e))
                owners.append((i, None, e))
                continue
            except Exception:
                log.exception("unexpected error in SignBatch item %d", i)
                internal = TufSignerError("internal error")
                entries.append(_refusal(known.event, internal))
                owners.append((i, None, internal))
                continue
            if prep.replay is not None:
                entries.append(prep.entry(prep.replay.signature))
                owners.append((i, prep, None))
                continue
            pending.setdefault(prep.backend.name, []).append((i, prep))
            if sum(len(g) for g in pending.values()) >= _PIPELINE_CHUNK:
                flush()
                await asyncio.sleep(0)  # let the chunk reach the HSM thread now
        flush()
        for indices, preps, task in signing:
            signatures = await task
            for i, prep, sig in zip(indices, preps, signatures, strict=True):
                if isinstance(sig, TufSignerError):
                    entries.append(_refusal(prep.known.event, sig))
                    owners.append((i, None, sig))
                else:
                    entries.append(prep.entry(sig.hex()))
                    owners.append((i, prep, None))
        # Record in request order: the order the store applies them in, and
        # the order an auditor reads them in.
        order = sorted(range(len(owners)), key=lambda k: owners[k][0])
        entries = [entries[k] for k in order]
        owners = [owners[k] for k in order]
        committed = await self._record_many(batch, entries)
        for (i, owner, error), done in zip(owners, committed, strict=True):
            if error is not None or owner is None:
                outcomes[i] = error or TufSignerError("internal error")
            elif owner.replay is not None:
                if done.error is not None:
                    if done.current is not None:
                        self._remember(done.current)
                    outcomes[i] = done.error
                else:
                    outcomes[i] = owner.result(done.current or owner.replay, done, replayed=True)
            else:
                try:
                    outcomes[i] = self._conclude(owner, done)
                except _Recorded as r:
                    outcomes[i] = r.error
        return [o for o in outcomes if o is not None]

    def _remember(self, state: RoleState) -> None:
        # The state its later record set is the newer one: record numbers only
        # grow, while versions may go down (an admin reset).
        key = (state.key_name, state.role)
        cur = self._roles.get(key)
        if cur is None or state.audit_seq >= cur.audit_seq:
            self._roles[key] = state

    # --- reads ---------------------------------------------------------------

    async def _read(self, identity: str, operation: str, fn: Callable[[], T], **fields: Any) -> T:
        """Admit a read, run ``fn`` off the event loop; only refusals are recorded."""
        known = _Known(self._now_event(identity, operation, **fields))

        async def body(rule: AccessRule) -> T:
            return await asyncio.get_running_loop().run_in_executor(None, fn)

        return await self._guarded(known, operation, body)

    async def public_keys(self, identity: str, name: str = "") -> list[KeyView]:
        """Every key (or one) with its versions, for callers allowed ``read-keys``.

        Raises:
            TufSignerError: refused (recorded), e.g. ``NotFoundError`` for an
                unknown ``name``.
        """
        return await self._read(
            identity, policy.READ_KEYS, lambda: self._list_keys(name), key_name=name
        )

    async def admin_keys(self, identity: str) -> list[KeyView]:
        """Every key with policy and versions, for callers allowed ``key-admin``.

        Raises:
            TufSignerError: refused (recorded).
        """
        return await self._read(identity, policy.KEY_ADMIN, self._list_keys)

    async def role_states(
        self, identity: str, key_name: str = "", role: str = ""
    ) -> list[RoleState]:
        """The stored high-water marks, optionally filtered (``read-keys``).

        Raises:
            TufSignerError: refused (recorded).
        """

        def read() -> list[RoleState]:
            if key_name:
                validate_key_name(key_name)
            if role and recordable(role) != role:
                raise RequestError(
                    f"role {shown(role)} has control characters or more than 255 characters"
                )
            states = self._store.list_role_states(key_name or None)
            return [s for s in states if not role or s.role == role]

        return await self._read(identity, policy.READ_KEYS, read, key_name=key_name, role=role)

    async def audit_records(
        self, identity: str, start_seq: int, limit: int
    ) -> tuple[list[AuditRecord], tuple[int, str]]:
        """Up to ``limit`` records from ``start_seq``, and the head (``read-audit``).

        Raises:
            TufSignerError: refused (recorded).
        """

        def read() -> tuple[list[AuditRecord], tuple[int, str]]:
            head = self._store.head()
            records = list(itertools.islice(self._store.records(max(1, start_seq)), limit))
            return records, head

        return await self._read(identity, policy.READ_AUDIT, read)

    def _list_keys(self, name: str = "") -> list[KeyView]:
        if name:
            validate_key_name(name)
            view = self._refresh_key(name)
            if view is None:
                raise NotFoundError(f"unknown key {shown(name)}")
            return [view]
        self.reload()
        return [self._keys[k] for k in sorted(self._keys)]

    # --- KeyAdmin ------------------------------------------------------------

    async def create_key(
        self,
        identity: str,
        name: str,
        algorithm: Algorithm,
        rules: Sequence[RoleRule],
        backend: str = "",
        activate: bool = False,
        bins: BinsDelegation | None = None,
    ) -> tuple[KeyView, int]:
        """Create a key (version 1) in a backend; ACTIVE at once if ``activate``.

        ``bins`` declares the succinct hash-bin delegation the key serves (finding
        1 of issue 10): its glob rules must match only those bins.

        Returns:
            The new key and the audit sequence number of its record.

        Raises:
            TufSignerError: the refusal (recorded).
        """
        known = _Known(self._now_event(identity, "create-key", key_name=name, key_version=1))
        known.event = replace(
            known.event,
            detail={
                "algorithm": algorithm.value,
                "backend": recordable(backend or self._default_backend),
                "roles": [[recordable(str(r.pattern)), r.max_validity] for r in rules[:64]],
                "activate": activate,
                "bins": recordable(str(bins)) if bins is not None else "",
            },
        )

        async def body(rule: AccessRule) -> tuple[KeyView, int]:
            validate_key_name(name)
            policy.validate_rules(rules, bins)
            backend_name = backend or self._default_backend
            if backend_name not in self._backends:
                raise NotFoundError(f"unknown backend {backend_name!r}")
            async with self._admin_lock:
                if self._store.get_key(name) is not None:
                    raise AlreadyExistsError(f"key {name!r} already exists")
                now = rfc3339(self._clock())
                new = await self._backends[backend_name].create(algorithm, self._label(name, 1))
                key = KeyRecord(name, algorithm, backend_name, tuple(rules), now, bins)
                first = self._version(name, 1, new.handle, new.public_key, now, activate)
                known.event = replace(known.event, keyid=first.keyid)
                committed = await self._commit_checked(
                    known, Entry(known.event, CreateKey(key, first))
                )
                view = self._refresh_key(name)
                assert view is not None
                return view, committed.seq

        return await self._guarded(known, policy.KEY_ADMIN, body)

    async def rotate_key(self, identity: str, name: str) -> tuple[KeyVersion, int]:
        """Create the next version of a key as PENDING and return it (P6).

        Raises:
            TufSignerError: the refusal (recorded).
        """
        known = _Known(self._now_event(identity, "rotate-key", key_name=name))

        async def body(rule: AccessRule) -> tuple[KeyVersion, int]:
            validate_key_name(name)
            async with self._admin_lock:
                view = self._refresh_key(name)
                if view is None:
                    raise NotFoundError(f"unknown key {shown(name)}")
                number = max((v.version for v in view.versions), default=0) + 1
                now = rfc3339(self._clock())
                backend = self._backend_for(view.key)
                new = await backend.create(view.key.algorithm, self._label(name, number))
                version = self._version(name, number, new.handle, new.public_key, now, False)
                known.event = replace(known.event, keyid=version.keyid, key_version=number)
                committed = await self._commit_checked(
                    known, Entry(known.event, AddVersion(version))
                )
                self._refresh_key(name)
                return version, committed.seq

        return await self._guarded(known, policy.KEY_ADMIN, body)

    async def set_version_state(
        self,
        identity: str,
        name: str,
        version: int,
        state: KeyState,
        expected_keyid: str = "",
    ) -> tuple[KeyVersion, int]:
        """Activate or retire a key version (P6).

        Raises:
            TufSignerError: the refusal (recorded).
        """
        operation = "activate-key-version" if state is KeyState.ACTIVE else "retire-key-version"
        known = _Known(self._now_event(identity, operation, key_name=name, key_version=version))

        async def body(rule: AccessRule) -> tuple[KeyVersion, int]:
            validate_key_name(name)
            async with self._admin_lock:
                view = self._refresh_key(name)
                if view is None:
                    raise NotFoundError(f"unknown key {shown(name)}")
                found = [v for v in view.versions if v.version == version]
                if not found:
                    raise NotFoundError(f"key {name!r} has no version {version}")
                target = found[0]
                if expected_keyid and expected_keyid != target.keyid:
                    raise KeyStateError(
                        f"version {version} of key {name!r} has keyid {target.keyid[:16]}..., "
                        f"not the expected {expected_keyid[:16]}..."
                    )
                now = rfc3339(self._clock())
                known.event = replace(known.event, keyid=target.keyid)
                committed = await self._commit_checked(
                    known, Entry(known.event, SetVersionState(name, version, state, now))
                )
                before = {v.version: v for v in view.versions}
                view = self._refresh_key(name)
                assert view is not None
                # Every version this change retired (the target itself, or the
                # previous ACTIVE version an activation replaced) is disabled
                # in its backend too.
                for v in view.versions:
                    was = before.get(v.version)
                    if v.state is KeyState.RETIRED and was and was.state is not KeyState.RETIRED:
                        try:
                            await self._backend_for(view.key).disable(v.handle)
                        except BackendError:
                            # Retirement is our own state and already recorded;
                            # the backend flag is defence in depth.
                            log.warning(
                                "could not disable %s v%d in its backend", shown(name), v.version
                            )
                return next(v for v in view.versions if v.version == version), committed.seq

        return await self._guarded(known, policy.KEY_ADMIN, body)

    async def reset_role_state(
        self, identity: str, key_name: str, role: str, version: int, reason: str
    ) -> tuple[RoleState, int]:
        """Move the (key, role) high-water mark to ``version`` (issue 10, finding 8).

        The recovery from a fast-forward (a version near 2**63 - 1 granted), and
        the first step of a repository that starts, or moves on, at a version
        beyond ``max_version_step``. ``version`` 0 forgets the role: its next
        signature may be version 1. The mark keeps no payload or signature, so
        the next signature must be above it. Recorded with ``reason``.

        Raises:
            TufSignerError: the refusal (recorded): INVALID_ARGUMENT for a
                missing or unprintable reason, a bad role or version;
                NOT_FOUND for an unknown key; FAILED_PRECONDITION for a role
                the key's policy does not allow.
        """
        known = _Known(
            self._now_event(
                identity,
                _RESET,
                key_name=key_name,
                role=role,
                detail={"reason": recordable(reason, _REASON_MAX)},
            )
        )

        async def body(rule: AccessRule) -> tuple[RoleState, int]:
            validate_key_name(key_name)
            if not role:
                raise RequestError("role is required")
            if not 0 <= version <= _MAX_VERSION:
                raise RequestError(f"version must be between 0 and 2**63-1, got {version}")
            known.event = replace(known.event, metadata_version=version)
            _check_reason(reason)
            async with self._admin_lock:
                view = self._refresh_key(key_name)
                if view is None:
                    raise NotFoundError(f"unknown key {shown(key_name)}")
                policy.check_role_allowed(role, view.key.rules, key_name)
                # Any version of the key will do (the mark is per key name); name
                # the ACTIVE one, else the newest.
                active = [v for v in view.versions if v.state is KeyState.ACTIVE]
                kv = active[0] if active else max(view.versions, key=lambda v: v.version)
                known.event = replace(known.event, keyid=kv.keyid, key_version=kv.version)
                mark = RoleState(
                    key_name=key_name,
                    role=role,
                    version=version,
                    payload_sha256="",
                    keyid=kv.keyid,
                    key_version=kv.version,
                    signature="",
                    expires="",
                    audit_seq=0,
                )
                committed = await self._commit_checked(known, Entry(known.event, ResetRole(mark)))
                state = committed.current or replace(mark, audit_seq=committed.seq)
                log.warning(
                    "%s reset the mark of role %s of key %s to version %d (record %d)",
                    shown(identity),
                    shown(role),
                    shown(key_name),
                    version,
                    committed.seq,
                )
                return state, committed.seq

        return await self._guarded(known, policy.KEY_ADMIN, body)

    @staticmethod
    def _label(name: str, version: int) -> str:
        return f"tuf-signer/{name}/{version}/{secrets.token_hex(4)}"

    @staticmethod
    def _version(
        name: str, number: int, handle: str, public_key: Any, now: str, active: bool
    ) -> KeyVersion:
        key_dict = public_key.to_dict()
        return KeyVersion(
            key_name=name,
            version=number,
            state=KeyState.ACTIVE if active else KeyState.PENDING,
            keyid=public_key.keyid,
            public_key=key_dict,
            handle=handle,
            created_at=now,
            activated_at=now if active else None,
        )

    # --- lifecycle ---------------------------------------------------------------

    async def check_health(self) -> None:
        """Probe every backend and the store.

        Raises:
            TufSignerError: the first failing component.
        """
        for backend in self._backends.values():
            await backend.check()
        await asyncio.get_running_loop().run_in_executor(None, self._store.head)

    def close(self) -> None:
        """Commit what is queued and the last refusal summaries, stop the writer
        and the payload checker (the store stays open)."""
        self._writer.close()
        self._checker.close()
        events = self._tally.drain()
        if events:
            try:
                self._store.append([Entry(e) for e in events])
            except StoreError as e:
                log.error("lost the summary of %d groups of refused calls: %s", len(events), e)


def _check_reason(reason: str) -> None:
    """An admin's reason is required, printable and bounded (it goes on the record).

    Raises:
        RequestError: empty, too long, or with control or format characters.
    """
    if not reason.strip():
        raise RequestError("a reason is required (it goes on the audit record)")
    if len(reason) > _REASON_MAX:
        raise RequestError(f"the reason is longer than {_REASON_MAX} characters")
    if not reason.isprintable():
        raise RequestError("the reason may only hold printable characters (no newlines)")


# The operation of an admin reset record (audit._chain.RESET), and its reason's bound.
_RESET = "reset-role-state"
_REASON_MAX = 1024
_MAX_VERSION = 2**63 - 1

# SignBatch items checked before they go to the HSM together.
_PIPELINE_CHUNK = 64


@dataclass(frozen=True)
class SignItem:
    """One request of a SignBatch."""

    key: str
    role: str | None
    payload: bytes
    expected_keyid: str = ""


@dataclass(frozen=True)
class _Prepared:
    """A Sign that passed every check and awaits its signature."""

    known: _Known
    state: RoleState  # the role state it will advance to (signature still empty)
    backend: KeyBackend
    handle: str
    algorithm: Algorithm
    payload: bytes
    replay: RoleState | None  # the stored state, when this is an identical retry
    version: KeyVersion  # the key version signing: its public key checks the signature
    max_step: int | None  # max_version_step of the role's class (None: unbounded)

    def entry(self, signature: str) -> Entry:
        """The record: a grant advancing the role state, or a replay that does not."""
        event = replace(self.known.event, signature=signature)
        if self.replay is not None:
            return Entry(event)
        state = replace(self.state, signature=signature)
        return Entry(event, AdvanceRole(state, max_step=self.max_step))

    def result(self, state: RoleState, committed: Committed, replayed: bool) -> SignResult:
        return SignResult(
            keyid=state.keyid,
            signature=state.signature,
            key_version=state.key_version,
            audit_seq=committed.seq,
            role=self.state.role,
            metadata_version=self.state.version,
            replayed=replayed,
        )


def _refusal(event: AuditEvent, error: TufSignerError) -> Entry:
    return Entry(
        replace(
            event, outcome=Outcome.REFUSED, status=error.code, reason=error.reason, signature=""
        )
    )


@dataclass
class _Known:
    """What a request has learnt so far, for its record if it is refused.

    ``recorded`` turns true once a record for this request has committed.
    """

    event: AuditEvent
    recorded: bool = False


_CANCELLED = TufSignerError(
    "the call was cancelled, or ran past its deadline, before it completed; nothing was returned",
    code="CANCELLED",
)


class _Recorded(Exception):
    """A refusal the store already recorded (do not record it twice)."""

    def __init__(self, error: TufSignerError) -> None:
        super().__init__(error.reason)
        self.error = error


def public_key_json(public_key: Mapping[str, Any]) -> str:
    """The TUF key dict as canonical-ish JSON for the wire (sorted, compact)."""
    return json.dumps(dict(public_key), sort_keys=True, separators=(",", ":"))
