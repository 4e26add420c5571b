"""The signing service itself, free of gRPC: the facade over its parts.

Every request that reaches the service produces exactly one audit record,
granted or refused (P4); ``Recorder`` sees to that. The parts:

- ``KeyRegistry`` (``_registry.py``): keys, versions and role states as last read;
- ``Recorder`` (``_recording.py``): admission, refusals, commits;
- ``Preparer`` (``_preparing.py``): every check a Sign passes before the HSM;
- ``Signer`` (``_signing.py``): Sign and SignBatch;
- ``Reads`` (``_reads.py``): the read RPCs;
- ``KeyAdmin`` (``_keyadmin.py``): key creation, rotation, activation, resets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from tuf_signer.audit import AuditRecord, AuditStore
from tuf_signer.config import PolicyConfig
from tuf_signer.errors import TufSignerError
from tuf_signer.keys import KeyBackend
from tuf_signer.model import Algorithm, BinsDelegation, KeyState, KeyVersion, RoleRule, RoleState
from tuf_signer.server._checker import PayloadChecker
from tuf_signer.server._guard import Guard
from tuf_signer.server._keyadmin import KeyAdmin
from tuf_signer.server._preparing import Preparer
from tuf_signer.server._reads import Reads
from tuf_signer.server._recording import Recorder
from tuf_signer.server._registry import KeyRegistry
from tuf_signer.server._signing import Signer
from tuf_signer.server._values import Clock, KeyView, SignItem, SignResult, utc_now
from tuf_signer.server._writer import AuditWriter

T = TypeVar("T")


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
        sign_gate: called before each Sign's checks; raises to refuse it (on
            the record). The transparency log's ``check``.
        max_clock_skew: seconds added to every expiry bound; None for the
            default (``config.PolicyConfig``).
        activate_on_pinned_sign: a Sign pinned to a PENDING version's keyid
            activates it (``config.PolicyConfig``).

    Raises:
        StoreError: the key registry cannot be read.
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
        sign_gate: Callable[[], None] | None = None,
        max_clock_skew: int | None = None,
        activate_on_pinned_sign: bool = False,
    ) -> None:
        self._store = store
        self._backends = dict(backends)
        self._checker = checker or PayloadChecker()
        steps = PolicyConfig().max_version_step if max_version_step is None else max_version_step
        registry = KeyRegistry(store, self._backends)
        self._recorder = Recorder(store, writer or AuditWriter(store), guard, clock)
        preparer = Preparer(
            registry,
            self._recorder,
            guard,
            self._checker,
            clock,
            max_payload_bytes,
            steps,
            sign_gate or (lambda: None),
            PolicyConfig().max_clock_skew if max_clock_skew is None else max_clock_skew,
            self._activate_on_sign if activate_on_pinned_sign else None,
        )
        self._signer = Signer(preparer, registry, self._recorder, hsm_timeout, max_batch)
        self._reads = Reads(store, registry, self._recorder)
        self._admin = KeyAdmin(registry, self._recorder, self._backends, default_backend, clock)

    async def _activate_on_sign(self, identity: str, name: str, version: int, keyid: str) -> None:
        await self._admin.activate_on_sign(identity, name, version, keyid)

    # --- the record --------------------------------------------------------------

    async def refuse(
        self, identity: str, operation: str, error: TufSignerError, **fields: Any
    ) -> None:
        """Record a request refused before it reached the service, then raise it.

        See ``Recorder.refuse``.

        Raises:
            TufSignerError: ``error``, once recorded (``StoreError`` if it cannot be).
        """
        await self._recorder.refuse(identity, operation, error, **fields)

    async def flush_refusals(self) -> int:
        """Write the summary records of the refusals counted since the last flush.

        Returns:
            How many summary records were written.

        Raises:
            StoreError: they could not be written; the counts are kept.
        """
        return await self._recorder.flush_refusals()

    # --- Sign ----------------------------------------------------------------------

    async def sign(self, identity: str, item: SignItem) -> SignResult:
        """Check, sign and record one TUF ``signed`` payload (``Signer.sign``).

        Raises:
            TufSignerError: the refusal (already recorded), or ``StoreError``
                when nothing could be recorded (nothing was signed).
        """
        return await self._signer.sign(identity, item)

    async def sign_batch(
        self, identity: str, items: Sequence[SignItem]
    ) -> list[SignResult | TufSignerError]:
        """Sign many payloads in one audit transaction (``Signer.sign_batch``).

        Raises:
            TufSignerError: the whole call was refused (recorded once), or
                ``StoreError`` when nothing could be recorded.
        """
        return await self._signer.sign_batch(identity, items)

    # --- reads ---------------------------------------------------------------------

    async def public_keys(self, identity: str, name: str = "") -> list[KeyView]:
        """Every key (or one) with its versions (``Reads.public_keys``).

        Raises:
            TufSignerError: refused (recorded).
        """
        return await self._reads.public_keys(identity, name)

    async def admin_keys(self, identity: str) -> list[KeyView]:
        """Every key with policy and versions (``Reads.admin_keys``).

        Raises:
            TufSignerError: refused (recorded).
        """
        return await self._reads.admin_keys(identity)

    async def role_states(
        self, identity: str, key_name: str = "", role: str = ""
    ) -> list[RoleState]:
        """The stored high-water marks, optionally filtered (``Reads.role_states``).

        Raises:
            TufSignerError: refused (recorded).
        """
        return await self._reads.role_states(identity, key_name, role)

    async def audit_records(
        self, identity: str, start_seq: int, limit: int
    ) -> tuple[list[AuditRecord], tuple[int, str]]:
        """Up to ``limit`` records from ``start_seq``, and the head (``Reads.audit_records``).

        Raises:
            TufSignerError: refused (recorded).
        """
        return await self._reads.audit_records(identity, start_seq, limit)

    async def audit_read(self, identity: str, fn: Callable[[AuditStore], T]) -> T:
        """``fn(store)`` off the event loop for a ``read-audit`` caller (``Reads.audit_read``).

        Raises:
            TufSignerError: refused (recorded).
        """
        return await self._reads.audit_read(identity, fn)

    # --- KeyAdmin ------------------------------------------------------------------

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
        """Create a key (version 1) in a backend (``KeyAdmin.create_key``).

        Returns:
            The new key and the audit sequence number of its record.

        Raises:
            TufSignerError: the refusal (recorded).
        """
        return await self._admin.create_key(
            identity, name, algorithm, rules, backend, activate, bins
        )

    async def rotate_key(self, identity: str, name: str) -> tuple[KeyVersion, int]:
        """Create the next version of a key as PENDING (``KeyAdmin.rotate_key``).

        Raises:
            TufSignerError: the refusal (recorded).
        """
        return await self._admin.rotate_key(identity, name)

    async def set_version_state(
        self,
        identity: str,
        name: str,
        version: int,
        state: KeyState,
        expected_keyid: str = "",
    ) -> tuple[KeyVersion, int]:
        """Activate or retire a key version (``KeyAdmin.set_version_state``).

        Raises:
            TufSignerError: the refusal (recorded).
        """
        return await self._admin.set_version_state(identity, name, version, state, expected_keyid)

    async def reset_role_state(
        self, identity: str, key_name: str, role: str, version: int, reason: str
    ) -> tuple[RoleState, int]:
        """Move the (key, role) high-water mark (``KeyAdmin.reset_role_state``).

        Raises:
            TufSignerError: the refusal (recorded).
        """
        return await self._admin.reset_role_state(identity, key_name, role, version, reason)

    async def reset_role_states(
        self, identity: str, key_name: str, version: int, reason: str
    ) -> tuple[int, int, int]:
        """Move every mark of a key (``KeyAdmin.reset_role_states``).

        Raises:
            TufSignerError: the refusal (recorded).
        """
        return await self._admin.reset_role_states(identity, key_name, version, reason)

    async def set_key_rules(
        self, identity: str, name: str, rules: Sequence[RoleRule], reason: str
    ) -> tuple[KeyView, int]:
        """Replace a key's role rules (``KeyAdmin.set_key_rules``).

        Raises:
            TufSignerError: the refusal (recorded).
        """
        return await self._admin.set_key_rules(identity, name, rules, reason)

    async def approve_delegations(
        self, identity: str, name: str, role: str, delegations_sha256: str, reason: str
    ) -> int:
        """Approve the next delegations of a targets role (``KeyAdmin.approve_delegations``).

        Raises:
            TufSignerError: the refusal (recorded).
        """
        return await self._admin.approve_delegations(
            identity, name, role, delegations_sha256, reason
        )

    # --- lifecycle -----------------------------------------------------------------

    async def check_health(self) -> None:
        """Probe every backend, then the store on a Sign's write path (``AuditStore.probe``).

        A full disk, a read-only file or a held store lock fails it, as it
        would fail a Sign; the store runs off the event loop.

        Raises:
            TufSignerError: the first failing component.
        """
        for backend in self._backends.values():
            await backend.check()
        await asyncio.get_running_loop().run_in_executor(None, self._store.probe)

    def close(self) -> None:
        """Commit what is queued and the last refusal summaries, stop the writer
        and the payload checker (the store stays open)."""
        self._recorder.close()
        self._checker.close()
