"""This process's view of the key registry and of the role high-water marks.

The store is authoritative; these caches only save reads. The role state
cache is a lower bound on the stored high-water marks (except after an admin
reset made elsewhere lowered one), so a refusal based on it is checked against
the store once (``Signer._role_decision``), and a stale entry only costs an HSM
call that the transaction then refuses.

Store reads run off the event loop (``refresh``, ``exists``, ``reread_role``),
like every other store read of the service; the caches change on the loop,
except in ``reload`` and ``read_key``, which the read RPCs run in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from tuf_signer.audit import AuditStore, Committed
from tuf_signer.errors import BackendError, KeyStateError, NotFoundError, shown
from tuf_signer.keys import KeyBackend
from tuf_signer.model import KeyRecord, KeyState, KeyVersion, RoleState
from tuf_signer.server._values import KeyView

RoleKey = tuple[str, str]  # (key name, role)


class KeyRegistry:
    """Keys with their versions and backends, and the role states, as last read.

    Args:
        store: the audit store (also the key registry and role state).
        backends: key backends by name, already started.

    Raises:
        StoreError: the store cannot be read.
    """

    def __init__(self, store: AuditStore, backends: Mapping[str, KeyBackend]) -> None:
        self._store = store
        self._backends = dict(backends)
        self._keys: dict[str, KeyView] = {}
        self._roles: dict[RoleKey, RoleState] = {}
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

    async def view(self, name: str) -> KeyView:
        """The key ``name``, from the cache or else the store.

        Raises:
            NotFoundError: no such key.
            StoreError: the store cannot be read.
        """
        view = self._keys.get(name) or await self.refresh(name)
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

        Raises:
            KeyStateError: no ACTIVE version, or another keyid is ACTIVE.
            StoreError: the store cannot be read.
        """
        active = _active(view)
        if expected_keyid and expected_keyid != active.keyid:
            # Our cache may trail an activation made elsewhere: look once more.
            view = await self.refresh(view.key.name) or view
            active = _active(view)
            if expected_keyid != active.keyid:
                raise KeyStateError(
                    f"expected keyid {expected_keyid[:16]}... is not the ACTIVE version of "
                    f"key {view.key.name!r} (active: version {active.version}, "
                    f"keyid {active.keyid[:16]}...)"
                )
        return active

    async def active_moved(self, key_name: str, key_version: int) -> bool:
        """Re-read the key: is another version than ``key_version`` ACTIVE now?

        Raises:
            StoreError: the store cannot be read.
        """
        view = await self.refresh(key_name)
        if view is None:
            return False
        active = [v for v in view.versions if v.state is KeyState.ACTIVE]
        return bool(active) and active[0].version != key_version

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


def _active(view: KeyView) -> KeyVersion:
    """The key's ACTIVE version.

    Raises:
        KeyStateError: it has none.
    """
    for v in view.versions:
        if v.state is KeyState.ACTIVE:
            return v
    raise KeyStateError(f"key {view.key.name!r} has no ACTIVE version")
