"""Plain value types shared by every layer (no I/O, no gRPC).

Config and records are frozen dataclasses; times are timezone-aware UTC
``datetime`` objects; durations are whole seconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Algorithm(enum.Enum):
    """Signing algorithms, named by their securesystemslib scheme."""

    ED25519 = "ed25519"
    ECDSA_P256 = "ecdsa-sha2-nistp256"
    RSA_3072_PSS = "rsassa-pss-sha256"

    @property
    def keytype(self) -> str:
        """The securesystemslib ``keytype`` for this algorithm."""
        return {
            Algorithm.ED25519: "ed25519",
            Algorithm.ECDSA_P256: "ecdsa",
            Algorithm.RSA_3072_PSS: "rsa",
        }[self]

    @property
    def scheme(self) -> str:
        """The securesystemslib ``scheme`` for this algorithm."""
        return self.value


class KeyState(enum.Enum):
    """Lifecycle of one key version (P6): PENDING -> ACTIVE -> RETIRED."""

    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    RETIRED = "RETIRED"


@dataclass(frozen=True)
class RoleRule:
    """One entry of a key's role policy.

    Attributes:
        pattern: a role name or an ``fnmatch`` glob such as ``bins-*``.
        max_validity: the longest ``expires - now`` allowed, in seconds.
    """

    pattern: str
    max_validity: int


@dataclass(frozen=True)
class KeyRecord:
    """A named key: what it may sign and where its versions live."""

    name: str
    algorithm: Algorithm
    backend: str
    rules: tuple[RoleRule, ...]
    created_at: str  # RFC 3339 UTC


@dataclass(frozen=True)
class KeyVersion:
    """One version of a key, held by a backend under ``handle``.

    Attributes:
        public_key: the TUF key dict (``SSlibKey.to_dict()``), keyid excluded.
        handle: backend-specific reference (PKCS#11 CKA_ID hex, KMS resource name).
    """

    key_name: str
    version: int
    state: KeyState
    keyid: str
    public_key: dict[str, Any]
    handle: str
    created_at: str
    activated_at: str | None = None
    retired_at: str | None = None


@dataclass(frozen=True)
class RoleState:
    """The high-water mark for one (key, role): what was last signed (P3)."""

    key_name: str
    role: str
    version: int
    payload_sha256: str
    keyid: str
    key_version: int
    signature: str  # hex
    expires: str
    audit_seq: int


class Outcome(enum.Enum):
    """What became of a request."""

    GRANTED = "granted"
    REFUSED = "refused"


@dataclass(frozen=True)
class AuditEvent:
    """What one request asked and what it got, before the store chains it.

    Empty strings and zero mean "not applicable" so that the chained form is
    the same in every store.
    """

    time: str  # RFC 3339 UTC with microseconds
    identity: str
    operation: str  # sign | create-key | rotate-key | activate-key-version | ...
    outcome: Outcome
    status: str  # gRPC status code name, "OK" when granted
    reason: str = ""
    key_name: str = ""
    keyid: str = ""
    key_version: int = 0
    role: str = ""
    metadata_version: int = 0
    expires: str = ""
    payload_sha256: str = ""
    signature: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
