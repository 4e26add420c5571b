"""Software audit and witness keys that sign and cosign a test store's checkpoints.

Stand-ins for the server's checkpointer (HSM audit key) and for witnesses, so
that the proof commands and RPCs have stored checkpoints to prove against. The
proofs never see how a checkpoint was signed: they read the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import build_go_checker, json_requests
from tuf_signer.audit import AuditStore
from tuf_signer.audit._checkpoint import Checkpoint, sign_checkpoint
from tuf_signer.audit._note import (
    COSIGNATURE_V1,
    ED25519,
    VerifierKey,
    cosign_text,
)

ORIGIN = "tuf-signer.test/audit"
CREATED_AT = "2025-01-01T00:00:00Z"


def _raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class SoftwareLogKey:
    """An Ed25519 audit key in memory, named after the log's origin."""

    private: Ed25519PrivateKey
    key: VerifierKey

    @classmethod
    def generate(cls, origin: str = ORIGIN) -> SoftwareLogKey:
        private = Ed25519PrivateKey.generate()
        return cls(private, VerifierKey(origin, ED25519, _raw(private)))

    @property
    def origin(self) -> str:
        return self.key.name

    def checkpoint(self, store: AuditStore, size: int | None = None) -> bytes:
        """Sign the store's tree at ``size`` (default: all of it), keep it there; the note."""
        size = store.tree_size() if size is None else size
        body = Checkpoint(self.origin, size, store.tree_hash(size))
        note = sign_checkpoint(body, self.key, self.private.sign).format()
        store.add_checkpoint(self.origin, size, note, CREATED_AT)
        return note


@dataclass(frozen=True)
class SoftwareWitness:
    """A cosignature/v1 witness key in memory."""

    private: Ed25519PrivateKey
    key: VerifierKey

    @classmethod
    def generate(cls, name: str = "witness.test/w1") -> SoftwareWitness:
        private = Ed25519PrivateKey.generate()
        return cls(private, VerifierKey(name, COSIGNATURE_V1, _raw(private)))

    def cosign(self, store: AuditStore, origin: str, size: int, timestamp: int = 1700000000) -> str:
        """Cosign the stored checkpoint of ``size`` and keep the line; the line (no newline)."""
        stored = store.checkpoint_at(origin, size)
        assert stored is not None
        body = stored.note.decode().split("\n\n", 1)[0] + "\n"
        line = cosign_text(body, self.key, timestamp, self.private.sign).line().removesuffix("\n")
        store.add_cosignatures(origin, size, [(self.key.name, line)], CREATED_AT)
        return line


def serve_log(monkeypatch: pytest.MonkeyPatch, log_key: VerifierKey) -> None:
    """Servers started from now on serve the log of ``log_key`` on AuditLog, whatever their config.

    Replaces the ``AuditLogServicer`` that ``SignerServer.start`` builds, so the
    proof RPCs are tested on their own, apart from the server's checkpointer.
    """
    from tuf_signer.server import _app
    from tuf_signer.server._grpc import AuditLogServicer

    def servicer(service: Any, identity: Any, **_wired_by_the_server: Any) -> AuditLogServicer:
        return AuditLogServicer(service, identity, origin=log_key.name, verifier_key=log_key.text())

    monkeypatch.setattr(_app, "AuditLogServicer", servicer)


# --- Go's golang.org/x/mod/sumdb: the independent verifier of what we hand out --------------

GO_PROOF = Path(__file__).with_name("gocheck_proof")


def build_go_proof(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict[str, Any]]]:
    """Build ``gocheck_proof`` and return a function that runs requests through it."""
    binary = build_go_checker(
        GO_PROOF,
        tmp_path_factory.mktemp("gocheck_proof"),
        "golang.org/x/mod/sumdb/tlog",
        "Go's sumdb/note and sumdb/tlog are the independent reference",
    )
    return json_requests(binary)
