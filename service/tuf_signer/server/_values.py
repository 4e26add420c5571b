"""The service's frozen values: what a Sign asks, what it answers, how a key reads.

Also the few helpers that give them their wire form (times, public keys) and
the one check every key-naming request starts with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tuf_signer.errors import RequestError, shown
from tuf_signer.model import AuditEvent, KeyRecord, KeyVersion

Clock = Callable[[], datetime]

_KEY_NAME_MAX = 128


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


def rfc3339(t: datetime) -> str:
    """UTC time with microseconds, e.g. ``2026-11-24T22:16:48.123456Z``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def public_key_json(public_key: Mapping[str, Any]) -> str:
    """The TUF key dict as canonical-ish JSON for the wire (sorted, compact)."""
    return json.dumps(dict(public_key), sort_keys=True, separators=(",", ":"))


def validate_key_name(name: str) -> None:
    """Key names are short printable ASCII identifiers.

    Raises:
        RequestError: empty, too long, or with characters outside ``[A-Za-z0-9._-]``.
    """
    if not name:
        raise RequestError("key name is required")
    if len(name) > _KEY_NAME_MAX:
        raise RequestError(f"key name is longer than {_KEY_NAME_MAX} characters")
    if not all(c.isascii() and (c.isalnum() or c in "._-") for c in name):
        raise RequestError(f"key name {shown(name)} may only use letters, digits, '.', '_' and '-'")


@dataclass(frozen=True)
class SignItem:
    """One request of a SignBatch (or the body of a lone Sign), as decoded."""

    key: str
    role: str | None
    payload: bytes
    expected_keyid: str = ""


@dataclass(frozen=True)
class SignRequest:
    """One Sign on its way through the service: what was asked, and its record so far.

    ``event`` is the record the request opens with: who asked, when, for which
    key and role (both still unchecked), and the payload's SHA-256. A refusal
    is recorded on it, with whatever the checks learnt before refusing.
    """

    item: SignItem
    event: AuditEvent


@dataclass(frozen=True)
class SignResult:
    """A granted Sign."""

    keyid: str
    signature: str  # hex
    key_version: int
    audit_seq: int
    role: str
    metadata_version: int
    replayed: bool


@dataclass(frozen=True)
class KeyView:
    """A key with its versions, as the read RPCs return it."""

    key: KeyRecord
    versions: tuple[KeyVersion, ...]
