"""This process's view of the key registry and of the role high-water marks.

The store is authoritative; these caches only save reads. The role state
cache is a lower bound on the stored high-water marks (except after an admin
reset made elsewhere lowered one), so a refusal based on it is checked against
the store once (``Preparer._role_decision``), and a stale entry only costs an HSM
call that the transaction then refuses.

The key cache may trail a change made through another worker or replica (a
creation, rotation, activation or retirement), so no Sign is refused on it
alone (issue 12, finding 2): an unknown key, no ACTIVE version, or a pinned
keyid that is not the cached ACTIVE one re-reads the key first (``recheck``),
at most once per key every ``KEY_RECHECK_SECONDS`` and once for all the
requests waiting on it, so that a flood of requests for a missing key is not
a flood of store reads. A version the HSM or the store refuses re-reads the
key at once. Hence the bound: a refusal for a key's state rests on a store
read at most ``KEY_RECHECK_SECONDS`` old, and a change made elsewhere is seen
by every worker within that time (at once by a worker that has not re-read
that key for a refusal within it).

Store reads run off the event loop (``refresh``, ``recheck``, ``exists``,
``reread_role``), like every other store read of the service; the caches
change on the loop, except in ``reload`` and ``read_key``, which the read RPCs
run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Mapping

from tuf_signer.audit import AuditStore, Committed
from tuf_signer.errors import (
    BackendError,
    KeyStateError,
    NotFoundError,
    StaleKeyVersionError,
    shown,
)
from tuf_signer.keys import KeyBackend
from tuf_signer.model import KeyRecord, KeyState, KeyVersion, RoleState
from tuf_signer.server._values import KeyView

RoleKey = tuple[str, str]  # (key name, role)

# The longest a refusal for a key's state may rest on an older read of the
# key (seconds), and so the most often a flood of refused requests re-reads it.
KEY_RECHECK_SECONDS = 0.25

# Past this many keys rechecked, the finished rechecks older than the
# interval are forgotten, so that many names cannot grow the table for good.
_RECHECKS_KEPT = 1024


class KeyRegistry:
    """Keys with their versions and backends, and the role states, as last read.

    Args:
        store: the audit store (also the key registry and role state).
        backends: key backends by name, already started.
        recheck_seconds: at most one re-read per key in this time after a
            miss (see the module docstring).

    Raises:
        StoreError: the store cannot be read.
    """

    def __init__(
        self,
        store: AuditStore,
        backends: Mapping[str, KeyBackend],
        recheck_seconds: float = KEY_RECHECK_SECONDS,
    ) -> None:
        self._store = store
        self._backends = dict(backends)
        self._recheck_seconds = recheck_seconds
        self._keys: dict[str, KeyView] = {}
        self._roles: dict[RoleKey, RoleState] = {}
        # key name -> (monotonic start, read) of its last recheck.
        self._rechecks: dict[str, tuple[float, asyncio.Future[KeyView | None]]] = {}
        self.reload()

    # --- keys ----------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the key registry and role state from the store (blocking).

        Raises:
            StoreError: the store cannot be read.
        """
        keys = {}
        for key in self._store.list_keys():
            keys[key.name] = KeyView(key, tuple(self._store.list_versions(key.name)))
        self._keys = keys
        self._roles = {(s.key_name, s.role): s for s in self._store.list_role_states()}

    def views(self) -> list[KeyView]:
        """Every cached key, by name."""
        return [self._keys[k] for k in sorted(self._keys)]

    def knows(self, name: str) -> bool:
        """Whether the key ``name`` is cached (a metric label names only these)."""
        return name in self._keys

    def read_key(self, name: str) -> KeyView | None:
        """Re-read one key from the store (blocking: off the event loop only).

        Raises:
            StoreError: the store cannot be read.
        """
        return self._keep(name, self._fetch(name))

    async def refresh(self, name: str) -> KeyView | None:
        """Re-read one key from the store, off the event loop; None if it does not exist.

        Raises:
            StoreError: the store cannot be read.
        """
        loop = asyncio.get_running_loop()
        return self._keep(name, await loop.run_in_executor(None, self._fetch, name))

    async def exists(self, name: str) -> bool:
        """Whether the store holds a key ``name`` (read off the event loop).

        Raises:
            StoreError: the store cannot be read.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._store.get_key, name) is not None

    async def recheck(self, name: str) -> KeyView | None:
        """Re-read a key the cache failed on, at most once per ``recheck_seconds``.

        Requests that miss while a recheck of the key runs wait for it; within
        ``recheck_seconds`` of its start they get the cached view as it left
        it. A read that failed is not kept: the next miss reads again.

        Returns:
            The key as last read (None: no such key).

        Raises:
            StoreError: the store cannot be read.
        """
        now = time.monotonic()
        last = self._rechecks.get(name)
        if last is not None:
            started, read = last
            if not read.done():
                return await asyncio.shield(read)
            failed = read.cancelled() or read.exception() is not None
            if now - started < self._recheck_seconds and not failed:
                return self._keys.get(name)
        return await asyncio.shield(self._start_read(name, now))

    async def reread_since(self, name: str, since: float) -> KeyView | None:
        """The key as a read started at ``since`` or later found it.

        One read of a key at a time: callers that need a newer read than the
        one running wait for it, then share the next one, so a flood of
        failing signs on a key costs a read per read's duration, not per sign.

        Raises:
            StoreError: the store cannot be read.
        """
        while True:
            last = self._rechecks.get(name)
            if last is None:
                break
            started, read = last
            if started >= since:
                return await asyncio.shield(read)  # raises its StoreError, if any
            if read.done():
                break
            with contextlib.suppress(Exception):  # its error is not this caller's
                await asyncio.shield(read)
        return await asyncio.shield(self._start_read(name, time.monotonic()))

    def _start_read(self, name: str, now: float) -> asyncio.Future[KeyView | None]:
        read = asyncio.ensure_future(self.refresh(name))
        # Re-inserted at the end: the table stays in the order the reads started.
        self._rechecks.pop(name, None)
        self._rechecks[name] = (now, read)
        if len(self._rechecks) > _RECHECKS_KEPT:
            self._forget_rechecks(now)
        return read

    def _forget_rechecks(self, now: float) -> None:
        """Drop the oldest finished reads, from the start of the table only.

        Amortised O(1) per read: each entry is dropped once, and the scan stops
        at the first it must keep (a flood of new names never rescans them).
        """
        for name, (started, read) in list(itertools.islice(self._rechecks.items(), 64)):
            if not read.done() or now - started < self._recheck_seconds:
                return
            del self._rechecks[name]

    async def view(self, name: str) -> KeyView:
        """The key ``name``, from the cache or else the store (``recheck``).

        Raises:
            NotFoundError: no such key (read at most ``recheck_seconds`` ago).
            StoreError: the store cannot be read.
        """
        view = self._keys.get(name) or await self.recheck(name)
        if view is None:
            raise NotFoundError(f"unknown key {shown(name)}")
        return view

    def _fetch(self, name: str) -> KeyView | None:
        key = self._store.get_key(name)
        if key is None:
            return None
        return KeyView(key, tuple(self._store.list_versions(name)))

    def _keep(self, name: str, view: KeyView | None) -> KeyView | None:
        if view is None:
            self._keys.pop(name, None)
        else:
            self._keys[name] = view
        return view

    def backend_for(self, key: KeyRecord) -> KeyBackend:
        """The backend that holds ``key``.

        Raises:
            BackendError: that backend is not configured.
        """
        backend = self._backends.get(key.backend)
        if backend is None:
            raise BackendError(f"key {key.name!r} lives in backend {key.backend!r}, not configured")
        return backend

    async def active_for(self, view: KeyView, expected_keyid: str) -> KeyVersion:
        """The ACTIVE version, which must have ``expected_keyid`` when one is given.

        A miss (no ACTIVE version, another keyid ACTIVE) re-reads the key
        (``recheck``) before it refuses: the cache may trail a change made
        through another worker.

        Raises:
            KeyStateError: no ACTIVE version, or another keyid is ACTIVE.
            StoreError: the store cannot be read.
        """
        active = active_version(view)
        if active is None or (expected_keyid and expected_keyid != active.keyid):
            view = await self.recheck(view.key.name) or view
            active = active_version(view)
        if active is None:
            raise KeyStateError(f"key {view.key.name!r} has no ACTIVE version")
        if expected_keyid and expected_keyid != active.keyid:
            raise KeyStateError(
                f"expected keyid {expected_keyid[:16]}... is not the ACTIVE version of "
                f"key {view.key.name!r} (active: version {active.version}, "
                f"keyid {active.keyid[:16]}...)"
            )
        return active

    async def unusable(self, key_name: str, key_version: int) -> StaleKeyVersionError | None:
        """Re-read the key after the backend refused to sign with ``key_version``.

        Another worker may have retired that version (and disabled it in the
        HSM) since this cache read it: then the refusal is about the key's
        state, not an HSM fault.

        Returns:
            Why the version may no longer sign, or None when it is still the
            ACTIVE one (the backend's error stands).

        Raises:
            StoreError: the store cannot be read.
        """
        # A read started after the failure sees any retirement behind it.
        view = await self.reread_since(key_name, time.monotonic())
        active = active_version(view) if view is not None else None
        if active is not None and active.version == key_version:
            return None
        return StaleKeyVersionError(
            f"key version {key_version} of {key_name!r} is no longer ACTIVE"
        )

    # --- role states ---------------------------------------------------------------

    def role_state(self, key: RoleKey) -> RoleState | None:
        """The cached high-water mark of (key name, role)."""
        return self._roles.get(key)

    def remember(self, state: RoleState) -> None:
        """Cache ``state`` unless a newer one is cached."""
        # The state its later record set is the newer one: record numbers only
        # grow, while versions may go down (an admin reset).
        key = (state.key_name, state.role)
        cur = self._roles.get(key)
        if cur is None or state.audit_seq >= cur.audit_seq:
            self._roles[key] = state

    def note(self, committed: Committed) -> None:
        """Cache the role state a commit left, if it touched one."""
        if committed.current is not None:
            self.remember(committed.current)

    async def role_states_of(self, key_name: str) -> list[RoleState]:
        """Every stored role state of ``key_name`` (read off the event loop).

        Raises:
            StoreError: the store cannot be read.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._store.list_role_states, key_name)

    async def reread_role(self, key: RoleKey) -> RoleState | None:
        """Re-read the stored mark of (key name, role) off the event loop; the cached one after.

        Raises:
            StoreError: the store cannot be read.
        """
        loop = asyncio.get_running_loop()
        stored = await loop.run_in_executor(None, self._store.get_role_state, *key)
        if stored is None:
            self._roles.pop(key, None)
        else:
            self.remember(stored)
        return self._roles.get(key)


def active_version(view: KeyView) -> KeyVersion | None:
    """The key's ACTIVE version, if it has one."""
    for v in view.versions:
        if v.state is KeyState.ACTIVE:
            return v
    return None
