"""What the client hands back: protobuf messages parsed into plain, typed values.

Key and role-state answers are ``TypedDict``s: typed for callers, and plain
JSON-able dicts for the CLI, which prints them as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypedDict

from securesystemslib.signer import Signature, SSlibKey

from tuf_signer.errors import RemoteError, RequestError
from tuf_signer.model import BinsDelegation
from tuf_signer.v1 import signer_pb2 as pb

ALGORITHMS: dict[str, pb.Algorithm.ValueType] = {
    "ed25519": pb.ED25519,
    "ecdsa-p256": pb.ECDSA_P256,
    "rsa-3072-pss": pb.RSA_3072_PSS,
}
_ALGORITHM_NAMES = {v: n for n, v in ALGORITHMS.items()}
STATES = {pb.PENDING: "PENDING", pb.ACTIVE: "ACTIVE", pb.RETIRED: "RETIRED"}


@dataclass(frozen=True)
class SignRequest:
    """One payload to sign, for ``sign_many``.

    Attributes:
        key: key name on the server.
        payload: canonical JSON of a TUF ``signed`` object
            (python-tuf: ``Metadata.signed_bytes``).
        role: role name; required for targets-type roles (a bin's name),
            optional for timestamp and snapshot.
        expected_keyid: if set, the server refuses unless this is the keyid
            of the key's ACTIVE version.
    """

    key: str
    payload: bytes
    role: str | None = None
    expected_keyid: str = ""

    def to_pb(self) -> pb.SignRequest:
        """The wire form."""
        return pb.SignRequest(**self._fields())

    def add_to(self, batch: pb.SignBatchRequest) -> None:
        """Append the wire form to ``batch`` in place: the payload is copied once, not twice."""
        batch.requests.add(**self._fields())

    def _fields(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "role": self.role or "",
            "payload": self.payload,
            "expected_keyid": self.expected_keyid,
        }


@dataclass(frozen=True)
class SignedResult:
    """A signature returned by the server, with what the server recorded about it.

    Attributes:
        keyid: keyid of the key version that signed.
        sig: the signature, hex.
        key_version: that key version's number.
        audit_seq: sequence number of the audit record of this Sign.
        role: the role as the server resolved it.
        metadata_version: ``version`` of the signed payload.
        replayed: True when this repeats the signature of an identical earlier request.
    """

    keyid: str
    sig: str
    key_version: int
    audit_seq: int
    role: str
    metadata_version: int
    replayed: bool

    @classmethod
    def from_pb(cls, r: pb.SignResponse) -> SignedResult:
        """Parse a ``SignResponse``."""
        return cls(
            keyid=r.signature.keyid,
            sig=r.signature.sig,
            key_version=r.key_version,
            audit_seq=r.audit_seq,
            role=r.role,
            metadata_version=r.metadata_version,
            replayed=r.replayed,
        )

    def signature_dict(self) -> dict[str, str]:
        """``{"keyid": ..., "sig": ...}`` as in TUF metadata ``signatures``."""
        return {"keyid": self.keyid, "sig": self.sig}

    def signature(self) -> Signature:
        """The signature as securesystemslib's ``Signature`` (python-tuf's type)."""
        return Signature(self.keyid, self.sig)


SignOutcome = SignedResult | RemoteError
"""One item of ``sign_many``'s answer: the signature, or why the server refused."""


class RoleRuleInfo(TypedDict):
    """One entry of a key's role policy."""

    pattern: str
    max_validity: int  # seconds


class KeyVersionInfo(TypedDict):
    """One version of a key."""

    key: str
    version: int
    state: str  # PENDING, ACTIVE or RETIRED
    keyid: str
    public_key: dict[str, Any] | None  # TUF key dict: keytype, scheme, keyval
    created_at: str  # RFC 3339
    activated_at: str | None
    retired_at: str | None


class BinsInfo(TypedDict):
    """The succinct hash-bin delegation a key serves (python-tuf ``SuccinctRoles``)."""

    prefix: str  # e.g. "bins"
    bit_length: int  # e.g. 14: bins "bins-0000".."bins-3fff"


class KeyInfo(TypedDict):
    """A key with its policy and versions.

    ``bins`` is the hash-bin delegation the key serves, or None.
    """

    name: str
    algorithm: str  # a key of ALGORITHMS
    backend: str
    roles: list[RoleRuleInfo]
    bins: BinsInfo | None
    created_at: str
    versions: list[KeyVersionInfo]


class RoleStateInfo(TypedDict):
    """The highest version signed for one (key, role)."""

    key: str
    role: str
    version: int
    payload_sha256: str
    keyid: str
    key_version: int
    expires: str
    audit_seq: int


class AuditRecordInfo(TypedDict):
    """One audit record, as the hash chain covers it (README "The audit log")."""

    seq: int
    prev_hash: str
    hash: str
    event: dict[str, Any]


class AuditPage(TypedDict):
    """Consecutive audit records, and the log's head when they were read."""

    records: list[AuditRecordInfo]
    head_seq: int
    head_hash: str


def audit_page(r: pb.ListRecordsResponse) -> AuditPage:
    """Parse a ``ListRecordsResponse``."""
    return {
        "records": [
            {
                "seq": a.seq,
                "prev_hash": a.prev_hash,
                "hash": a.hash,
                "event": json.loads(a.event_json),
            }
            for a in r.records
        ],
        "head_seq": r.head_seq,
        "head_hash": r.head_hash,
    }


@dataclass(frozen=True)
class CheckpointInfo:
    """A signed checkpoint of the transparency log, as the server stores it (unverified).

    Attributes:
        checkpoint: the signed note (c2sp.org/tlog-checkpoint) with the
            witnesses' cosignature lines, verbatim.
        verifier_key: the log's verifier key, as the server states it; check
            the note with one you got elsewhere (README "Proofs").
        size: the tree size the checkpoint covers.
    """

    checkpoint: bytes
    verifier_key: str
    size: int


@dataclass(frozen=True)
class ConsistencyInfo:
    """A consistency proof (RFC 6962 §2.1.2) and the checkpoint it leads to (unverified).

    Attributes:
        hashes: the proof, 32 bytes per hash.
        checkpoint: the signed checkpoint note of the larger tree size.
    """

    hashes: tuple[bytes, ...]
    checkpoint: bytes


@dataclass(frozen=True)
class RecordLeafInfo:
    """One audit record as the Merkle tree holds it.

    Attributes:
        seq: the record's sequence number (leaf ``seq - 1``).
        leaf: its ``tuf-signer audit export`` line without the newline, the
            leaf data an inclusion proof proves.
    """

    seq: int
    leaf: bytes


def version_info(v: pb.KeyVersionInfo) -> KeyVersionInfo:
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


def key_info(k: pb.KeyInfo) -> KeyInfo:
    """A key with its policy and versions as plain JSON-able data."""
    return {
        "name": k.name,
        "algorithm": _ALGORITHM_NAMES.get(k.algorithm, "unspecified"),
        "backend": k.backend,
        "roles": [{"pattern": r.pattern, "max_validity": r.max_validity_seconds} for r in k.roles],
        "bins": (
            {"prefix": k.bins.prefix, "bit_length": k.bins.bit_length}
            if k.HasField("bins")
            else None
        ),
        "created_at": k.created_at,
        "versions": [version_info(v) for v in k.versions],
    }


def role_state_info(s: pb.RoleStateInfo) -> RoleStateInfo:
    """A role's high-water mark as plain JSON-able data."""
    return {
        "key": s.key,
        "role": s.role,
        "version": s.version,
        "payload_sha256": s.payload_sha256,
        "keyid": s.keyid,
        "key_version": s.key_version,
        "expires": s.expires,
        "audit_seq": s.audit_seq,
    }


def sslib_key(version: KeyVersionInfo) -> SSlibKey:
    """The securesystemslib public key of a key version (what root or targets lists).

    Raises:
        RequestError: the server sent no public key, or one securesystemslib
            does not support.
    """
    if version["public_key"] is None:
        raise RequestError(f"key {version['key']!r} version {version['version']} has no public key")
    try:
        return SSlibKey.from_dict(version["keyid"], dict(version["public_key"]))
    except (KeyError, TypeError, ValueError) as e:
        raise RequestError(
            f"key {version['key']!r} version {version['version']}: unusable public key: {e}"
        ) from e


def create_key_request(
    name: str,
    roles: list[tuple[str, int]],
    algorithm: str,
    backend: str,
    activate: bool,
    bins: str | None = None,
) -> pb.CreateKeyRequest:
    """The CreateKey request.

    Raises:
        RequestError: unknown algorithm name, or ``bins`` is not PREFIX:BIT_LENGTH.
    """
    if algorithm not in ALGORITHMS:
        raise RequestError(f"unknown algorithm {algorithm!r} (choose from {', '.join(ALGORITHMS)})")
    return pb.CreateKeyRequest(
        name=name,
        algorithm=ALGORITHMS[algorithm],
        roles=[pb.RoleRule(pattern=p, max_validity_seconds=s) for p, s in roles],
        backend=backend,
        activate=activate,
        bins=bins_declaration(bins) if bins is not None else None,
    )


def bins_declaration(text: str) -> pb.BinsDelegation:
    """Read ``PREFIX:BIT_LENGTH`` (e.g. ``bins:14``); the server checks the values.

    Raises:
        RequestError: not of that form.
    """
    try:
        bins = BinsDelegation.parse(text)
    except ValueError:
        raise RequestError(f"bins {text[:48]!r} is not PREFIX:BIT_LENGTH, e.g. bins:14") from None
    return pb.BinsDelegation(prefix=bins.prefix, bit_length=bins.bit_length)
