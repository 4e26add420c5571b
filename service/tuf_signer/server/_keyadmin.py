"""Key administration: create and rotate keys, activate and retire versions, reset marks.

Each change runs under one lock (``KeyAdmin._change``): it is checked against
the store's registry as it is now, made in the backend if it needs a new key,
and recorded in the same transaction that changes the registry (P6).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from tuf_signer import policy
from tuf_signer.audit import (
    RESET,
    AddVersion,
    ApproveDelegations,
    Committed,
    CreateKey,
    Entry,
    ResetRole,
    SetKeyRules,
    SetVersionState,
)
from tuf_signer.errors import (
    AlreadyExistsError,
    BackendError,
    KeyStateError,
    NotFoundError,
    RequestError,
    shown,
)
from tuf_signer.keys import KeyBackend
from tuf_signer.model import (
    Algorithm,
    AuditEvent,
    BinsDelegation,
    KeyRecord,
    KeyState,
    KeyVersion,
    RoleRule,
    RoleState,
    recordable,
)
from tuf_signer.policy import AccessRule
from tuf_signer.server._recording import Recorder, Refusal
from tuf_signer.server._registry import KeyRegistry, active_version
from tuf_signer.server._requestlog import log_granted
from tuf_signer.server._values import Clock, KeyView, rfc3339, validate_key_name

log = logging.getLogger(__name__)

P = TypeVar("P")
T = TypeVar("T")

# The operation of an admin reset record (audit._chain.RESET), and its reason's bound.
_REASON_MAX = 1024
_MAX_VERSION = 2**63 - 1
# The most role rules a key may have: each goes on the record of its create-key
# or set-key-rules, whole.
MAX_RULES = 64


class KeyAdmin:
    """The KeyAdmin RPCs' changes, for callers allowed ``key-admin``.

    Args:
        registry: keys, backends and role states as last read.
        recorder: admission and the record.
        backends: key backends by name, already started.
        default_backend: backend for keys created without naming one.
        clock: returns the current UTC time.
    """

    def __init__(
        self,
        registry: KeyRegistry,
        recorder: Recorder,
        backends: Mapping[str, KeyBackend],
        default_backend: str,
        clock: Clock,
    ) -> None:
        self._registry = registry
        self._recorder = recorder
        self._backends = dict(backends)
        self._default_backend = default_backend
        self._clock = clock
        self._lock = asyncio.Lock()

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
        event = self._recorder.event(
            identity,
            "create-key",
            key_name=name,
            key_version=1,
            detail={
                "algorithm": algorithm.value,
                "backend": recordable(backend or self._default_backend),
                "roles": [[recordable(str(r.pattern)), r.max_validity] for r in rules[:MAX_RULES]],
                "activate": activate,
                "bins": recordable(str(bins)) if bins is not None else "",
            },
        )

        async def body(rule: AccessRule) -> tuple[KeyView, int] | Refusal:
            validate_key_name(name)
            _check_rule_count(rules)
            policy.validate_rules(rules, bins)
            backend_name = backend or self._default_backend
            if backend_name not in self._backends:
                raise NotFoundError(f"unknown backend {backend_name!r}")

            async def plan() -> tuple[Entry, None]:
                if await self._registry.exists(name):
                    raise AlreadyExistsError(f"key {name!r} already exists")
                now = rfc3339(self._clock())
                new = await self._backends[backend_name].create(algorithm, _label(name, 1))
                key = KeyRecord(name, algorithm, backend_name, tuple(rules), now, bins)
                first = _version(name, 1, new.handle, new.public_key, now, activate)
                return Entry(replace(event, keyid=first.keyid), CreateKey(key, first)), None

            async def then(committed: Committed, _: None) -> tuple[KeyView, int]:
                view = await self._registry.refresh(name)
                assert view is not None
                return view, committed.seq

            return await self._change(event, plan, then)

        return await self._recorder.guarded(event, policy.KEY_ADMIN, body)

    async def rotate_key(self, identity: str, name: str) -> tuple[KeyVersion, int]:
        """Create the next version of a key as PENDING and return it (P6).

        Raises:
            TufSignerError: the refusal (recorded).
        """
        event = self._recorder.event(identity, "rotate-key", key_name=name)

        async def body(rule: AccessRule) -> tuple[KeyVersion, int] | Refusal:
            validate_key_name(name)

            async def plan() -> tuple[Entry, KeyVersion]:
                view = await self._registry.refresh(name)
                if view is None:
                    raise NotFoundError(f"unknown key {shown(name)}")
                number = max((v.version for v in view.versions), default=0) + 1
                now = rfc3339(self._clock())
                backend = self._registry.backend_for(view.key)
                new = await backend.create(view.key.algorithm, _label(name, number))
                version = _version(name, number, new.handle, new.public_key, now, False)
                recorded = replace(event, keyid=version.keyid, key_version=number)
                return Entry(recorded, AddVersion(version)), version

            async def then(committed: Committed, version: KeyVersion) -> tuple[KeyVersion, int]:
                await self._registry.refresh(name)
                return version, committed.seq

            return await self._change(event, plan, then)

        return await self._recorder.guarded(event, policy.KEY_ADMIN, body)

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
        event = self._recorder.event(identity, operation, key_name=name, key_version=version)

        async def body(rule: AccessRule) -> tuple[KeyVersion, int] | Refusal:
            validate_key_name(name)
            return await self._set_state(event, name, version, state, expected_keyid)

        return await self._recorder.guarded(event, policy.KEY_ADMIN, body)

    async def activate_on_sign(self, identity: str, name: str, version: int, keyid: str) -> None:
        """Activate a PENDING version because a Sign pinned its keyid (issue 14, item 9).

        Only with ``policy.activate_on_pinned_sign``: a repository moves to the
        new version by itself once it has accepted the root that lists it,
        with no refused Sign in between. Recorded as an ``activate-key-version``
        by the signing identity, saying why. A failure (another worker
        activated it first, the version went away) is left to the Sign, which
        then finds the key as it is.
        """
        event = self._recorder.event(
            identity,
            "activate-key-version",
            key_name=name,
            key_version=version,
            detail={"by": "a sign pinned to its keyid (policy.activate_on_pinned_sign)"},
        )
        result = await self._set_state(event, name, version, KeyState.ACTIVE, keyid)
        if isinstance(result, Refusal):
            log.info("activation on sign of %s v%d refused: %s", shown(name), version, result.error)

    async def _set_state(
        self, event: AuditEvent, name: str, version: int, state: KeyState, expected_keyid: str
    ) -> tuple[KeyVersion, int] | Refusal:
        """Move ``version`` of ``name`` to ``state`` under the admin lock, recorded on ``event``."""

        async def plan() -> tuple[Entry, KeyView]:
            view = await self._registry.refresh(name)
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
            change = SetVersionState(name, version, state, now)
            return Entry(replace(event, keyid=target.keyid), change), view

        async def then(committed: Committed, before: KeyView) -> tuple[KeyVersion, int]:
            was = {v.version: v for v in before.versions}
            view = await self._registry.refresh(name)
            assert view is not None
            # Every version this change retired (the target itself, or the
            # previous ACTIVE version an activation replaced) is disabled
            # in its backend too.
            for v in view.versions:
                old = was.get(v.version)
                if v.state is KeyState.RETIRED and old and old.state is not KeyState.RETIRED:
                    try:
                        await self._registry.backend_for(view.key).disable(v.handle)
                    except BackendError:
                        # Retirement is our own state and already recorded;
                        # the backend flag is defence in depth.
                        log.warning(
                            "could not disable %s v%d in its backend", shown(name), v.version
                        )
            return next(v for v in view.versions if v.version == version), committed.seq

        return await self._change(event, plan, then)

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
        event = self._recorder.event(
            identity,
            RESET,
            key_name=key_name,
            role=role,
            detail={"reason": recordable(reason, _REASON_MAX)},
        )

        async def body(rule: AccessRule) -> tuple[RoleState, int] | Refusal:
            validate_key_name(key_name)
            if not role:
                raise RequestError("role is required")
            if not 0 <= version <= _MAX_VERSION:
                raise RequestError(f"version must be between 0 and 2**63-1, got {version}")
            versioned = replace(event, metadata_version=version)
            try:
                _check_reason(reason)
            except RequestError as e:
                return Refusal(e, versioned)

            async def plan() -> tuple[Entry, RoleState]:
                view = await self._registry.refresh(key_name)
                if view is None:
                    raise NotFoundError(f"unknown key {shown(key_name)}")
                policy.check_role_allowed(role, view.key.rules, key_name)
                # Any version of the key will do (the mark is per key name); name
                # the ACTIVE one, else the newest.
                kv = active_version(view) or max(view.versions, key=lambda v: v.version)
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
                recorded = replace(versioned, keyid=kv.keyid, key_version=kv.version)
                return Entry(recorded, ResetRole(mark)), mark

            async def then(committed: Committed, mark: RoleState) -> tuple[RoleState, int]:
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

            return await self._change(versioned, plan, then)

        return await self._recorder.guarded(event, policy.KEY_ADMIN, body)

    async def reset_role_states(
        self, identity: str, key_name: str, version: int, reason: str
    ) -> tuple[int, int, int]:
        """Move the mark of every role ``key_name`` has signed to ``version`` (issue 14).

        A repository that starts again from scratch with the same key (RSTUF's
        re-bootstrap after a failed one, obstacle 2) signs every role from
        version 1 again: one admin call, on the record with ``reason``, moves
        all the marks (one ``reset-role-state`` record per role, one
        transaction), and what the key's last snapshot and timestamp listed
        comes down with them (``audit._rules.decide_reset``).

        Returns:
            How many marks moved, and the first and last record.

        Raises:
            TufSignerError: the refusal (recorded): INVALID_ARGUMENT for a bad
                version or reason, NOT_FOUND for an unknown key or a key that
                never signed, or the store's refusal of the first reset.
        """
        event = self._recorder.event(
            identity,
            RESET,
            key_name=key_name,
            role="*",
            detail={"reason": recordable(reason, _REASON_MAX), "all_roles": True},
        )

        async def body(rule: AccessRule) -> tuple[int, int, int] | Refusal:
            validate_key_name(key_name)
            if not 0 <= version <= _MAX_VERSION:
                raise RequestError(f"version must be between 0 and 2**63-1, got {version}")
            versioned = replace(event, metadata_version=version)
            _check_reason(reason)
            try:
                await self._lock.acquire()
            except asyncio.CancelledError:
                await self._recorder.cancelled(versioned)
                raise
            try:
                view = await self._registry.refresh(key_name)
                if view is None:
                    raise NotFoundError(f"unknown key {shown(key_name)}")
                states = await self._registry.role_states_of(key_name)
                if not states:
                    raise NotFoundError(f"key {key_name!r} has no role state to reset")
                kv = active_version(view) or max(view.versions, key=lambda v: v.version)
                entries = []
                for s in states:
                    mark = replace(
                        s,
                        version=version,
                        payload_sha256="",
                        keyid=kv.keyid,
                        key_version=kv.version,
                        signature="",
                        expires="",
                        audit_seq=0,
                    )
                    recorded = replace(
                        versioned,
                        role=s.role,
                        keyid=kv.keyid,
                        key_version=kv.version,
                    )
                    # Every role starts again: the snapshot's bins may be listed
                    # from version 1 again (a lone snapshot reset keeps them).
                    entries.append(Entry(recorded, ResetRole(mark, drop_listings=True)))
                committed = await self._recorder.commit_many(entries)
            finally:
                self._lock.release()
            for c in committed:
                self._registry.note(c)
            refused = next((c for c in committed if c.error is not None), None)
            if refused is not None and refused.error is not None:
                return Refusal(refused.error, versioned, recorded=True, seq=refused.seq)
            log.warning(
                "%s reset the marks of %d roles of key %s to version %d (records %d..%d)",
                shown(identity),
                len(committed),
                shown(key_name),
                version,
                committed[0].seq,
                committed[-1].seq,
            )
            log_granted(versioned, committed[-1].seq)
            return len(committed), committed[0].seq, committed[-1].seq

        return await self._recorder.guarded(event, policy.KEY_ADMIN, body)

    async def set_key_rules(
        self, identity: str, name: str, rules: Sequence[RoleRule], reason: str
    ) -> tuple[KeyView, int]:
        """Replace a key's role rules (issue 14, item 4): e.g. allow ``targets``
        with a long validity for a repository that signs top-level targets online.

        The rules are checked as ``create_key`` checks them, against the key's
        bins declaration. Recorded (``set-key-rules``) with the old and new
        rules and ``reason``.

        Raises:
            TufSignerError: the refusal (recorded).
        """
        event = self._recorder.event(
            identity,
            "set-key-rules",
            key_name=name,
            detail={
                "reason": recordable(reason, _REASON_MAX),
                "roles": [[recordable(str(r.pattern)), r.max_validity] for r in rules[:MAX_RULES]],
            },
        )

        async def body(rule: AccessRule) -> tuple[KeyView, int] | Refusal:
            validate_key_name(name)
            _check_reason(reason)
            _check_rule_count(rules)

            async def plan() -> tuple[Entry, None]:
                view = await self._registry.refresh(name)
                if view is None:
                    raise NotFoundError(f"unknown key {shown(name)}")
                policy.validate_rules(rules, view.key.bins)
                was = [[recordable(r.pattern), r.max_validity] for r in view.key.rules]
                recorded = replace(event, detail={**event.detail, "was": was})
                return Entry(recorded, SetKeyRules(name, tuple(rules))), None

            async def then(committed: Committed, _: None) -> tuple[KeyView, int]:
                view = await self._registry.refresh(name)
                assert view is not None
                return view, committed.seq

            return await self._change(event, plan, then)

        return await self._recorder.guarded(event, policy.KEY_ADMIN, body)

    async def approve_delegations(
        self, identity: str, name: str, role: str, delegations_sha256: str, reason: str
    ) -> int:
        """Let the next ``role`` signature carry delegations with this digest (issue 14).

        A targets payload whose ``delegations`` differ from the last ones the
        key signed for its role is refused until an admin approves them, so
        that a compromised backend cannot delegate the bins to a key outside
        the service. The digest is ``policy.delegations_digest`` of the
        payload (the refusal names it). Recorded (``approve-delegations``).

        Returns:
            The record's sequence number.

        Raises:
            TufSignerError: the refusal (recorded).
        """
        event = self._recorder.event(
            identity,
            "approve-delegations",
            key_name=name,
            role=recordable(role),
            detail={"reason": recordable(reason, _REASON_MAX), "delegations_sha256": ""},
        )

        async def body(rule: AccessRule) -> int | Refusal:
            validate_key_name(name)
            if not role:
                raise RequestError("role is required")
            policy.resolve_role(role, "targets")
            if role in ("root", "timestamp", "snapshot"):
                raise RequestError(f"role {role!r} has no delegations (a targets role has)")
            digest = delegations_sha256
            if len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
                raise RequestError(
                    f"delegations_sha256 {shown(digest)} is not 64 lowercase hex digits"
                )
            _check_reason(reason)
            recorded = replace(event, detail={**event.detail, "delegations_sha256": digest})

            async def plan() -> tuple[Entry, None]:
                if not await self._registry.exists(name):
                    raise NotFoundError(f"unknown key {shown(name)}")
                return Entry(recorded, ApproveDelegations(name, role, digest)), None

            async def then(committed: Committed, _: None) -> int:
                return committed.seq

            return await self._change(recorded, plan, then)

        return await self._recorder.guarded(event, policy.KEY_ADMIN, body)

    async def _change(
        self,
        event: AuditEvent,
        plan: Callable[[], Awaitable[tuple[Entry, P]]],
        then: Callable[[Committed, P], Awaitable[T]],
    ) -> T | Refusal:
        """One change of the key registry under the admin lock, recorded once.

        Args:
            event: the request's record so far.
            plan: checks the change against the registry as stored now, does
                any backend work, and returns the entry to commit (its event
                says what the change learnt) with what ``then`` needs. It
                refuses on ``event``; a cancellation meanwhile is recorded on
                it too.
            then: follows up on the committed change (re-reads, backend flags).

        Returns:
            ``then``'s result, or the refusal: the plan's, the store's (already
            recorded), or the follow-up's (on the entry's event).
        """
        try:
            await self._lock.acquire()
        except asyncio.CancelledError:
            await self._recorder.cancelled(event)
            raise
        try:
            planned = await self._recorder.before_record(event, plan())
            if isinstance(planned, Refusal):
                return planned
            entry, context = planned
            committed = await self._recorder.commit(entry)
            self._registry.note(committed)
            if committed.error is not None:
                return Refusal(committed.error, entry.event, recorded=True, seq=committed.seq)
            result = await self._recorder.outcome(entry.event, then(committed, context))
            if not isinstance(result, Refusal):
                log_granted(entry.event, committed.seq)
            return result
        finally:
            self._lock.release()


def _label(name: str, version: int) -> str:
    return f"tuf-signer/{name}/{version}/{secrets.token_hex(4)}"


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


def _check_rule_count(rules: Sequence[RoleRule]) -> None:
    """At most ``MAX_RULES`` role rules, so that the record holds every one.

    Raises:
        RequestError: more rules than that (names the limit).
    """
    if len(rules) > MAX_RULES:
        raise RequestError(f"rules: {len(rules)} role rules, more than the limit of {MAX_RULES}")


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
