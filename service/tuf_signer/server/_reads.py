"""The read RPCs: public keys, the admin key list, role states, audit records and proofs.

A read is admitted like any call and runs its store reads off the event loop;
only its refusals are recorded.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any, TypeVar

from tuf_signer import policy
from tuf_signer.audit import AuditRecord, AuditStore
from tuf_signer.errors import NotFoundError, RequestError, shown
from tuf_signer.model import RoleState, recordable
from tuf_signer.policy import AccessRule
from tuf_signer.server._recording import Recorder, Refusal
from tuf_signer.server._registry import KeyRegistry
from tuf_signer.server._values import KeyView, validate_key_name

T = TypeVar("T")


class Reads:
    """Keys, role states and records, for callers allowed to read them.

    Args:
        store: the audit store.
        registry: the key registry cache, refreshed by the key reads.
        recorder: admission and the record of refusals.
    """

    def __init__(self, store: AuditStore, registry: KeyRegistry, recorder: Recorder) -> None:
        self._store = store
        self._registry = registry
        self._recorder = recorder

    async def _read(self, identity: str, operation: str, fn: Callable[[], T], **fields: Any) -> T:
        """Admit a read, run ``fn`` off the event loop; only refusals are recorded."""
        event = self._recorder.event(identity, operation, **fields)

        async def body(rule: AccessRule) -> T | Refusal:
            loop = asyncio.get_running_loop()
            return await self._recorder.before_record(event, loop.run_in_executor(None, fn))

        return await self._recorder.guarded(event, operation, body)

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
            if key_name and role:
                # One (key, role): a key lookup, not a read of all the key's
                # 16,385 roles (issue 14, item 6).
                state = self._store.get_role_state(key_name, role)
                return [] if state is None else [state]
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

    async def audit_read(self, identity: str, fn: Callable[[AuditStore], T]) -> T:
        """``fn(store)`` off the event loop, for callers allowed ``read-audit``.

        The transparency log's reads (checkpoints, proofs, records by digest):
        ``fn`` validates the request itself, after admission, so that its
        refusals are recorded like any other.

        Raises:
            TufSignerError: refused (recorded).
        """
        return await self._read(identity, policy.READ_AUDIT, lambda: fn(self._store))

    def _list_keys(self, name: str = "") -> list[KeyView]:
        """The keys as stored now (blocking: runs in a worker thread)."""
        if name:
            validate_key_name(name)
            view = self._registry.read_key(name)
            if view is None:
                raise NotFoundError(f"unknown key {shown(name)}")
            return [view]
        self._registry.reload()
        return self._registry.views()
