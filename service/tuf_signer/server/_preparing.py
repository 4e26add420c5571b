"""Every check a Sign passes before the HSM (P2, P3), and what it leaves ready to sign.

In order: the key name and expected keyid, the caller's right to the key, the
key itself, the payload against the TUF policy (inline, or in a checker
process charged to the caller), the caller's right to the role, the ACTIVE
version, and the high-water mark known to this process. A request that passes
them all is ``Prepared``: its record, the role state it would set, and the
backend call to make.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from tuf_signer import policy
from tuf_signer.audit import AdvanceRole, Committed, Entry, advance_decision
from tuf_signer.errors import (
    RequestError,
    RollbackError,
    TufSignerError,
    VersionStepError,
    shown,
)
from tuf_signer.keys import KeyBackend
from tuf_signer.model import Algorithm, AuditEvent, KeyState, KeyVersion, RoleState, evolve
from tuf_signer.policy import AccessRule
from tuf_signer.server._checker import CheckJob, CheckResult, PayloadChecker
from tuf_signer.server._guard import Guard
from tuf_signer.server._recording import Recorder, Refusal
from tuf_signer.server._registry import KeyRegistry, active_version
from tuf_signer.server._values import (
    Clock,
    KeyView,
    SignRequest,
    SignResult,
    validate_key_name,
)

_KEYID_RE = re.compile(r"[\x21-\x7e]{1,128}")


@dataclass(frozen=True)
class Prepared:
    """A Sign that passed every check and awaits its signature."""

    event: AuditEvent  # its record, with all the checks learnt
    state: RoleState  # the role state it will advance to (signature still empty)
    backend: KeyBackend
    handle: str
    algorithm: Algorithm
    payload: bytes
    replay: RoleState | None  # the stored state, when this is an identical retry
    version: KeyVersion  # the key version signing: its public key checks the signature
    max_step: int | None  # max_version_step of the role's class (None: unbounded)
    # What the store holds against the key's other signatures (issue 14, P9).
    lists: tuple[tuple[str, int, bool], ...] | None = None
    delegations: str = ""
    delegations_known: bool = False  # each keyid delegated to is a registry key's version

    def entry(self, signature: str) -> Entry:
        """The record: a grant advancing the role state, or a replay that does not."""
        event = evolve(self.event, signature=signature)
        if self.replay is not None:
            return Entry(event)
        state = evolve(self.state, signature=signature)
        change = AdvanceRole(
            state,
            max_step=self.max_step,
            lists=self.lists,
            delegations=self.delegations,
            delegations_known=self.delegations_known,
        )
        return Entry(event, change)

    def result(self, state: RoleState, committed: Committed, replayed: bool) -> SignResult:
        """The reply, signed as ``state`` says and recorded as ``committed``."""
        return SignResult(
            keyid=state.keyid,
            signature=state.signature,
            key_version=state.key_version,
            audit_seq=committed.seq,
            role=self.state.role,
            metadata_version=self.state.version,
            replayed=replayed,
        )


class Preparer:
    """Runs a Sign's checks against the key registry, the policy and the role marks.

    Args:
        registry: keys, backends and role states as last read.
        recorder: the record (for a lone Sign's cancellation).
        guard: per-identity limits (the payload check budget).
        checker: runs payload checks too costly for the event loop.
        clock: returns the current UTC time.
        max_payload_bytes: largest Sign payload accepted.
        max_version_step: the largest version step above a role's mark, by
            role class; a class not named is unbounded.
        sign_gate: the first check; raises to refuse every Sign (the
            transparency log when it cannot vouch for one).
        max_clock_skew: seconds added to every role's expiry bound
            (``policy.max_clock_skew``).
        activate: with ``policy.activate_on_pinned_sign``, activates a PENDING
            version (identity, key, version, keyid) whose keyid a Sign pinned;
            None: a pinned PENDING keyid is refused (P6).
    """

    def __init__(
        self,
        registry: KeyRegistry,
        recorder: Recorder,
        guard: Guard,
        checker: PayloadChecker,
        clock: Clock,
        max_payload_bytes: int,
        max_version_step: Mapping[str, int],
        sign_gate: Callable[[], None],
        max_clock_skew: int = 0,
        activate: Callable[[str, str, int, str], Awaitable[None]] | None = None,
    ) -> None:
        self._registry = registry
        self._max_clock_skew = max_clock_skew
        self._activate = activate
        self._sign_gate = sign_gate
        self._recorder = recorder
        self._guard = guard
        self._checker = checker
        self._clock = clock
        self._max_payload = max_payload_bytes
        self._max_step = dict(max_version_step)
        # (key, role) -> (audit_seq, monotonic time) of the last re-read that
        # found the stored mark (see _role_decision).
        self._confirmed: dict[tuple[str, str], tuple[int, float]] = {}

    async def prepare(
        self, request: SignRequest, rule: AccessRule, *, lone: bool
    ) -> Prepared | Refusal:
        """Every check before the HSM (P2, P3).

        Args:
            request: the Sign.
            rule: the caller's access rule.
            lone: a lone Sign records its own cancellation, on what its checks
                had learnt; a SignBatch item leaves that to its batch.

        Returns:
            The request ready to sign, or its refusal (not yet recorded) on
            the record as far as the checks got.
        """
        item = request.item
        event = request.event
        try:
            self._sign_gate()
            validate_key_name(item.key)
            if item.expected_keyid and _KEYID_RE.fullmatch(item.expected_keyid) is None:
                raise RequestError(
                    f"expected_keyid {shown(item.expected_keyid)} is not a keyid "
                    "(at most 128 printable ASCII characters)"
                )
            # Authorisation first: a caller learns nothing about keys it may not use.
            policy.authorize_key(rule, item.key)
            view = await self._registry.view(item.key)
            job = CheckJob(
                payload=item.payload,
                role=item.role,
                key_name=item.key,
                rules=view.key.rules,
                now=self._clock(),
                max_payload_bytes=self._max_payload,
                payload_sha256=event.payload_sha256,
                bins=view.key.bins,
                max_clock_skew=self._max_clock_skew,
            )
            resolved, info, _rule = self._checker.inline(job) or await self._offload(
                event.identity, job
            )
            expires = info.expires.strftime(policy.TUF_EXPIRES_FORMAT)
            try:
                if view.key.bins is not None and policy.is_empty_bin_role(resolved):
                    # An empty bin verifies as any bin: the caller must be
                    # allowed the first and the last (policy._coherence).
                    for n in (0, (1 << view.key.bins.bit_length) - 1):
                        policy.authorize_role(rule, policy.bin_name(view.key.bins, n))
                else:
                    policy.authorize_role(rule, resolved)
                pending = None
                if self._activate is not None and item.expected_keyid:
                    pending = await self._pinned_pending(view, item.expected_keyid)
                active = pending or await self._registry.active_for(view, item.expected_keyid)
            except TufSignerError:
                event = replace(
                    event, role=resolved, metadata_version=info.version, expires=expires
                )
                raise
            # One copy for both steps: a Sign's hot path (SignBatch runs it per item).
            event = evolve(
                event,
                role=resolved,
                metadata_version=info.version,
                expires=expires,
                keyid=active.keyid,
                key_version=active.version,
            )
            state = RoleState(
                key_name=item.key,
                role=resolved,
                version=info.version,
                payload_sha256=info.payload_sha256,
                keyid=active.keyid,
                key_version=active.version,
                signature="",
                expires=expires,
                audit_seq=0,
            )
            max_step = self._max_step.get(info.type)
            # Refuses before any HSM work; the stored state for an identical retry.
            replay = await self._role_decision(state, max_step)
            if pending is not None:
                # Every check passed: only now may the Sign move the key over.
                active = await self._activate_pinned(event.identity, item.key, pending)
            return Prepared(
                event=event,
                state=state,
                backend=self._registry.backend_for(view.key),
                handle=active.handle,
                algorithm=view.key.algorithm,
                payload=item.payload,
                replay=replay,
                version=active,
                max_step=max_step,
                lists=info.lists,
                delegations=info.delegations_sha256,
                delegations_known=bool(info.delegations_sha256)
                and self._delegates_to_registry(item.payload),
            )
        except TufSignerError as e:
            return Refusal(e, event)
        except Exception as e:
            return Refusal.internal(event, e)
        except asyncio.CancelledError:
            if lone:
                await self._recorder.cancelled(event)
            raise

    async def _pinned_pending(self, view: KeyView, keyid: str) -> KeyVersion | None:
        """The PENDING version with the pinned ``keyid``, when it is not ACTIVE already.

        With ``policy.activate_on_pinned_sign`` the Sign is checked as that
        version's (issue 14, item 9), and activates it only once every check
        passed (``_activate_pinned``): a refused Sign moves nothing.
        """
        active = active_version(view)
        if active is not None and active.keyid == keyid:
            return None
        return _pending(view, keyid) or _pending(
            await self._registry.recheck(view.key.name) or view, keyid
        )

    async def _activate_pinned(
        self, identity: str, key_name: str, pending: KeyVersion
    ) -> KeyVersion:
        """Activate ``pending`` for a Sign that passed every check; the ACTIVE version after.

        The repository pins the keyid its root now lists: once it accepted the
        root that lists the new version, its first granted Sign moves the key
        over (``policy.activate_on_pinned_sign``).

        Raises:
            KeyStateError: the pinned version is not ACTIVE after all (another
                worker retired it, the activation was refused).
        """
        assert self._activate is not None
        await self._activate(identity, key_name, pending.version, pending.keyid)
        view = await self._registry.view(key_name)
        return await self._registry.active_for(view, pending.keyid)

    def _delegates_to_registry(self, payload: bytes) -> bool:
        """Whether every keyid the payload's delegations name is a version of a registry key.

        Then a key's first delegations for a role need no admin's approval
        (the bins delegated to the online key); else they do (issue 14).
        """
        try:
            keyids = policy.delegated_keyids(json.loads(payload))
        except ValueError:
            return False
        if keyids is None:
            return False
        known = {v.keyid for view in self._registry.views() for v in view.versions}
        return keyids <= known

    async def _role_decision(self, state: RoleState, max_step: int | None) -> RoleState | None:
        """The high-water check (P3, version step) against this process's cache.

        A read-only pre-check, so that the HSM never signs what the store
        would refuse: the store's decision, in the transaction that records
        the signature, is the authoritative one.

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
        cached = self._registry.role_state(key)
        try:
            decision = advance_decision(cached, state, max_step)
        except (RollbackError, VersionStepError):
            # At most one re-read per role and second while the store keeps
            # agreeing: a flood of stale versions must not become a flood of reads.
            seq = cached.audit_seq if cached else 0
            confirmed_seq, confirmed_at = self._confirmed.get(key, (-1, 0.0))
            if confirmed_seq == seq and time.monotonic() - confirmed_at < 1.0:
                raise
            cached = await self._registry.reread_role(key)
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


def _pending(view: KeyView, keyid: str) -> KeyVersion | None:
    """The PENDING version of ``view`` with ``keyid``, if any."""
    return next(
        (v for v in view.versions if v.state is KeyState.PENDING and v.keyid == keyid), None
    )
