"""A small synchronous client for every RPC, used by the CLI and by repositories.

One ``Client`` owns one channel; reuse it across calls.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from tuf_signer.errors import RemoteError, RequestError
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

SERVER_ENV = "TUF_SIGNER_SERVER"
DEFAULT_SERVER = "127.0.0.1:50051"
_MAX_MESSAGE = 64 * 1024 * 1024

T = TypeVar("T")

ALGORITHMS = {
    "ed25519": pb.ED25519,
    "ecdsa-p256": pb.ECDSA_P256,
    "rsa-3072-pss": pb.RSA_3072_PSS,
}
STATES = {pb.PENDING: "PENDING", pb.ACTIVE: "ACTIVE", pb.RETIRED: "RETIRED"}


@dataclass(frozen=True)
class SignedResult:
    """A signature returned by the server, in securesystemslib ``Signature`` form."""

    keyid: str
    sig: str
    key_version: int
    audit_seq: int
    role: str
    metadata_version: int
    replayed: bool

    def signature_dict(self) -> dict[str, str]:
        """``{"keyid": ..., "sig": ...}`` as in TUF metadata ``signatures``."""
        return {"keyid": self.keyid, "sig": self.sig}


def version_dict(v: pb.KeyVersionInfo) -> dict[str, Any]:
    """A key version as plain JSON-able data, with its TUF key dict."""
    return {
        "key": v.key,
        "version": v.version,
        "state": STATES.get(v.state, "UNSPECIFIED"),
        "keyid": v.keyid,
        "public_key": json.loads(v.public_key_json) if v.public_key_json else None,
        "created_at": v.created_at,
        "activated_at": v.activated_at or None,
        "retired_at": v.retired_at or None,
    }


def key_dict(k: pb.KeyInfo) -> dict[str, Any]:
    """A key with its policy and versions as plain JSON-able data."""
    names = {v: n for n, v in ALGORITHMS.items()}
    return {
        "name": k.name,
        "algorithm": names.get(k.algorithm, "unspecified"),
        "backend": k.backend,
        "roles": [{"pattern": r.pattern, "max_validity": r.max_validity_seconds} for r in k.roles],
        "created_at": k.created_at,
        "versions": [version_dict(v) for v in k.versions],
    }


def resolve_server(server: str | None) -> str:
    """``server``, else ``$TUF_SIGNER_SERVER``, else ``127.0.0.1:50051``."""
    return server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER


@contextmanager
def _remote_errors() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        details = e.details() if hasattr(e, "details") else None
        name = code.name if code is not None else "UNKNOWN"
        raise RemoteError(details or name, code=name) from None


class Client:
    """Synchronous tuf-signer client.

    Args:
        server: ``HOST:PORT``; defaults to ``$TUF_SIGNER_SERVER``.
        timeout: per-call deadline in seconds.
    """

    def __init__(self, server: str | None = None, timeout: float = 30.0) -> None:
        self.server = resolve_server(server)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            self.server,
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ],
        )
        self._signer = pb_grpc.SignerStub(self._channel)
        self._admin = pb_grpc.KeyAdminStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sign(
        self, key: str, payload: bytes, role: str | None = None, expected_keyid: str = ""
    ) -> SignedResult:
        """Sign a canonical-JSON TUF ``signed`` payload.

        Raises:
            RemoteError: the server refused (``code`` and ``reason`` say why).
        """
        with _remote_errors():
            r = self._signer.Sign(
                pb.SignRequest(
                    key=key, role=role or "", payload=payload, expected_keyid=expected_keyid
                ),
                timeout=self.timeout,
            )
        return SignedResult(
            keyid=r.signature.keyid,
            sig=r.signature.sig,
            key_version=r.key_version,
            audit_seq=r.audit_seq,
            role=r.role,
            metadata_version=r.metadata_version,
            replayed=r.replayed,
        )

    def public_keys(self, key: str = "") -> list[dict[str, Any]]:
        """Every key (or one) with versions, states and TUF key dicts."""
        with _remote_errors():
            r = self._signer.GetPublicKeys(pb.GetPublicKeysRequest(key=key), timeout=self.timeout)
        return [key_dict(k) for k in r.keys]

    def role_state(self, key: str = "", role: str = "") -> list[dict[str, Any]]:
        """The highest version and payload digest signed per (key, role)."""
        with _remote_errors():
            r = self._signer.GetRoleState(
                pb.GetRoleStateRequest(key=key, role=role), timeout=self.timeout
            )
        return [
            {
                "key": s.key,
                "role": s.role,
                "version": s.version,
                "payload_sha256": s.payload_sha256,
                "keyid": s.keyid,
                "key_version": s.key_version,
                "expires": s.expires,
                "audit_seq": s.audit_seq,
            }
            for s in r.states
        ]

    def create_key(
        self,
        name: str,
        roles: Sequence[tuple[str, int]],
        algorithm: str = "ed25519",
        backend: str = "",
        activate: bool = False,
    ) -> dict[str, Any]:
        """Create a key with a role policy of ``(pattern, max_validity_seconds)``.

        Raises:
            RequestError: unknown algorithm name.
            RemoteError: the server refused.
        """
        if algorithm not in ALGORITHMS:
            raise RequestError(
                f"unknown algorithm {algorithm!r} (choose from {', '.join(ALGORITHMS)})"
            )
        with _remote_errors():
            r = self._admin.CreateKey(
                pb.CreateKeyRequest(
                    name=name,
                    algorithm=ALGORITHMS[algorithm],
                    roles=[pb.RoleRule(pattern=p, max_validity_seconds=s) for p, s in roles],
                    backend=backend,
                    activate=activate,
                ),
                timeout=self.timeout,
            )
        return key_dict(r.key)

    def rotate_key(self, key: str) -> dict[str, Any]:
        """Create a new PENDING version; returns it with its TUF key dict."""
        with _remote_errors():
            r = self._admin.RotateKey(pb.RotateKeyRequest(key=key), timeout=self.timeout)
        return version_dict(r.version)

    def activate(self, key: str, version: int, expected_keyid: str = "") -> dict[str, Any]:
        """Make a version ACTIVE (the previous ACTIVE one becomes RETIRED)."""
        with _remote_errors():
            r = self._admin.ActivateKeyVersion(
                pb.ActivateKeyVersionRequest(
                    key=key, version=version, expected_keyid=expected_keyid
                ),
                timeout=self.timeout,
            )
        return version_dict(r.version)

    def retire(self, key: str, version: int) -> dict[str, Any]:
        """Retire a version for good."""
        with _remote_errors():
            r = self._admin.RetireKeyVersion(
                pb.RetireKeyVersionRequest(key=key, version=version), timeout=self.timeout
            )
        return version_dict(r.version)

    def list_keys(self) -> list[dict[str, Any]]:
        """Every key with its policy, backend and versions."""
        with _remote_errors():
            r = self._admin.ListKeys(pb.ListKeysRequest(), timeout=self.timeout)
        return [key_dict(k) for k in r.keys]
