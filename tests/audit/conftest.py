"""Fixtures for the audit store tests: store implementations and an entry factory."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import build_go_checker
from tuf_signer.audit import (
    AddVersion,
    AdvanceRole,
    AuditStore,
    CreateKey,
    Entry,
    PostgresAuditStore,
    ResetRole,
    SetVersionState,
    SqliteAuditStore,
)
from tuf_signer.model import (
    Algorithm,
    AuditEvent,
    KeyRecord,
    KeyState,
    KeyVersion,
    Outcome,
    RoleRule,
    RoleState,
)

KEY = "online"
T0 = "2025-01-01T00:00:00.000000Z"
EXPIRES = "2025-01-02T00:00:00Z"


def _sqlite(request: pytest.FixtureRequest) -> Callable[[], AuditStore]:
    path: Path = request.getfixturevalue("tmp_path") / "audit.db"
    return lambda: SqliteAuditStore(path)


def _postgres(request: pytest.FixtureRequest) -> Callable[[], AuditStore]:
    dsn: str = request.getfixturevalue("postgres_dsn")  # skips without a server
    return lambda: PostgresAuditStore(dsn)


# Every AuditStore implementation runs the contract suite. Each entry finds one
# test's store location (a file under tmp_path, a schema of its own) and
# returns a function that opens (or reopens) the store there.
STORES = [
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_postgres, id="postgres"),
]


@pytest.fixture(params=STORES)
def open_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], AuditStore]]:
    """A function that opens this test's store; call it again to reopen it."""
    opener: Callable[[], AuditStore] = request.param(request)
    opened: list[AuditStore] = []

    def open_() -> AuditStore:
        store = opener()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], AuditStore]) -> AuditStore:
    """A fresh, empty store."""
    return open_store()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class AuditFactory:
    """Builds entries the way the server will: consistent events and changes."""

    def keyid(self, key: str, version: int) -> str:
        return sha(f"keyid:{key}/{version}")

    def digest(self, payload: str) -> str:
        return sha(f"payload:{payload}")

    def event(self, operation: str = "note", **fields: Any) -> AuditEvent:
        values: dict[str, Any] = {
            "time": T0,
            "identity": "repo-backend",
            "operation": operation,
            "outcome": Outcome.GRANTED,
            "status": "OK",
        }
        values.update(fields)
        return AuditEvent(**values)

    def note(self, **fields: Any) -> Entry:
        """An event that carries no change (e.g. a request refused by policy)."""
        return Entry(self.event(**fields))

    def key_version(self, key: str, version: int, state: KeyState = KeyState.PENDING) -> KeyVersion:
        return KeyVersion(
            key_name=key,
            version=version,
            state=state,
            keyid=self.keyid(key, version),
            public_key={"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "00"}},
            handle=f"handle-{key}-{version}",
            created_at=T0,
            activated_at=T0 if state is KeyState.ACTIVE else None,
        )

    def create_key(self, key: str = KEY, state: KeyState = KeyState.ACTIVE) -> Entry:
        record = KeyRecord(
            name=key,
            algorithm=Algorithm.ED25519,
            backend="pkcs11",
            rules=(RoleRule("snapshot", 86400), RoleRule("bins-*", 86400)),
            created_at=T0,
        )
        return Entry(
            self.event("create-key", key_name=key, key_version=1, keyid=self.keyid(key, 1)),
            CreateKey(record, self.key_version(key, 1, state)),
        )

    def add_version(self, key: str = KEY, version: int = 2) -> Entry:
        return Entry(
            self.event("rotate-key", key_name=key, key_version=version),
            AddVersion(self.key_version(key, version)),
        )

    def set_state(
        self, key: str = KEY, version: int = 2, state: KeyState = KeyState.ACTIVE, at: str = T0
    ) -> Entry:
        return Entry(
            self.event("set-key-version-state", key_name=key, key_version=version),
            SetVersionState(key, version, state, at),
        )

    def sign(
        self,
        version: int,
        payload: str = "a",
        *,
        role: str = "snapshot",
        key: str = KEY,
        key_version: int = 1,
        keyid: str | None = None,
        signature: str | None = None,
        max_step: int | None = None,
    ) -> Entry:
        keyid = keyid if keyid is not None else self.keyid(key, key_version)
        digest = self.digest(payload)
        signature = signature if signature is not None else sha(f"sig:{digest}:{keyid}")
        state = RoleState(
            key_name=key,
            role=role,
            version=version,
            payload_sha256=digest,
            keyid=keyid,
            key_version=key_version,
            signature=signature,
            expires=EXPIRES,
            audit_seq=0,
        )
        event = self.event(
            "sign",
            key_name=key,
            keyid=keyid,
            key_version=key_version,
            role=role,
            metadata_version=version,
            expires=EXPIRES,
            payload_sha256=digest,
            signature=signature,
        )
        return Entry(event, AdvanceRole(state, max_step=max_step))

    def reset(
        self,
        version: int,
        *,
        role: str = "snapshot",
        key: str = KEY,
        key_version: int = 1,
        keyid: str | None = None,
        reason: str = "recover from a fast-forward",
    ) -> Entry:
        """An admin reset of the (key, role) mark to ``version``, as the server records it."""
        keyid = keyid if keyid is not None else self.keyid(key, key_version)
        state = RoleState(
            key_name=key,
            role=role,
            version=version,
            payload_sha256="",
            keyid=keyid,
            key_version=key_version,
            signature="",
            expires="",
            audit_seq=0,
        )
        event = self.event(
            "reset-role-state",
            identity="admin",
            key_name=key,
            keyid=keyid,
            key_version=key_version,
            role=role,
            metadata_version=version,
            detail={"reason": reason},
        )
        return Entry(event, ResetRole(state))


@pytest.fixture
def make() -> AuditFactory:
    """The entry factory."""
    return AuditFactory()


@pytest.fixture(scope="module")
def go_checker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Go's golang.org/x/mod/sumdb/tlog, the independent reference for our Merkle tree."""
    return build_go_checker(
        Path(__file__).with_name("gocheck_merkle"),
        tmp_path_factory.mktemp("gocheck"),
        "golang.org/x/mod/sumdb/tlog",
        "Go's sumdb/tlog is the independent reference",
    )
