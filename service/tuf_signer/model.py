"""Plain value types shared by every layer (no I/O, no gRPC).

Config and records are frozen dataclasses; times are timezone-aware UTC
``datetime`` objects; durations are whole seconds.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

_T = TypeVar("_T")

# Characters a record never stores raw: C0 and C1 controls (NUL included, which
# PostgreSQL's text type refuses), DEL, Unicode format characters (bidi
# overrides, zero-width), line and paragraph separators, surrogates, BOM.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]"
)


def recordable(value: str, limit: int = 255) -> str:
    r"""A client's string as the audit record stores it: escaped and bounded.

    A clean string of at most ``limit`` characters is kept as it is. Otherwise
    unsafe characters become Python-style escapes (``\x00``, ``\u202e``) and
    the result is cut to ``limit`` characters with a note of the original
    length, so a hostile value can neither break a store (NUL), nor a
    terminal, nor fill the disk.
    """
    if len(value) <= limit and _UNSAFE.search(value) is None:
        return value
    escaped = _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)
    if len(escaped) <= limit:
        return escaped
    return f"{escaped[: max(0, limit - 32)]}...[{len(value)} characters]"


def evolve(value: _T, /, **changes: Any) -> _T:
    """``dataclasses.replace`` for the Sign path: a copy of ``value`` with ``changes``.

    For a dataclass whose ``__init__`` only stores its fields (no
    ``__post_init__``, no ``__slots__``), such as ``AuditEvent`` and
    ``RoleState``, it copies the fields instead of running ``__init__`` again:
    the same object in a fifth of the time (issue 16: a SignBatch made four
    such copies per item). Any other dataclass goes through ``replace``.

    Raises:
        TypeError: ``value`` is not a dataclass instance, or a change names no
            field of it.
    """
    cls = type(value)
    fields = getattr(cls, "__dataclass_fields__", None)
    if (
        fields is None
        or hasattr(cls, "__post_init__")
        or not hasattr(value, "__dict__")
        # Anything but the fields (a cached_property's value, an init=False
        # field) would be copied stale: let replace decide.
        or value.__dict__.keys() != fields.keys()
        or any(f.init is False for f in fields.values())
    ):
        return dataclasses.replace(value, **changes)  # type: ignore[type-var]
    if not changes.keys() <= fields.keys():
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(changes.keys() - fields.keys())}")
    copy = object.__new__(cls)
    copy.__dict__.update(value.__dict__, **changes)
    return copy


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
        pattern: a role name, or an ``fnmatch`` glob that matches only the
            key's declared bins, such as ``bins-[0-3][0-9a-f][0-9a-f][0-9a-f]``.
        max_validity: the longest ``expires - now`` allowed, in seconds.
    """

    pattern: str
    max_validity: int


@dataclass(frozen=True)
class BinsDelegation:
    """The succinct hash-bin delegation (TAP 15) a key serves, e.g. PEP 458's ``bins:14``.

    The same meaning as python-tuf's ``SuccinctRoles(bit_length, name_prefix)``:
    ``2**bit_length`` bins named ``PREFIX-`` plus the bin number in zero-padded
    lowercase hex (``bins-0000`` … ``bins-3fff`` for ``bins:14``).

    Attributes:
        prefix: the bins' ``name_prefix``, e.g. "bins".
        bit_length: 1..32.
    """

    prefix: str
    bit_length: int

    def __str__(self) -> str:
        """``PREFIX:BIT_LENGTH``, as ``--bins`` takes it and the store keeps it."""
        return f"{self.prefix}:{self.bit_length}"

    @classmethod
    def parse(cls, text: str) -> BinsDelegation:
        """Read ``PREFIX:BIT_LENGTH`` (the prefix may itself hold ':').

        Only the form is checked here; ``policy.check_bins_delegation`` checks
        the values.

        Raises:
            ValueError: not PREFIX:BIT_LENGTH with a non-empty prefix and a
                decimal bit length.
        """
        prefix, sep, bits = text.rpartition(":")
        if not sep or not prefix or not (bits.isascii() and bits.isdigit()) or len(bits) > 2:
            raise ValueError(f"{text[:48]!r} is not PREFIX:BIT_LENGTH, e.g. bins:14")
        return cls(prefix, int(bits))


@dataclass(frozen=True)
class KeyRecord:
    """A named key: what it may sign and where its versions live.

    Attributes:
        bins: the hash-bin delegation the key serves, or None (it signs no bins).
    """

    name: str
    algorithm: Algorithm
    backend: str
    rules: tuple[RoleRule, ...]
    created_at: str  # RFC 3339 UTC
    bins: BinsDelegation | None = None


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
