"""The audit hash chain (P5), specified so that an auditor can re-implement it.

Every record has a sequence number ``seq`` (1, 2, 3, ... with no gaps), the
``prev_hash`` of the record before it, and its own ``hash``::

    prev_hash(1)   = GENESIS_HASH                  (64 ASCII zeros)
    prev_hash(n)   = hash(n - 1)                   for n > 1
    hash(n)        = lowercase hex SHA-256 of the UTF-8 bytes of J(n)
    J(n)           = {"event":E,"prev_hash":P,"seq":n}

``J`` is JSON text as Python's ``json.dumps(obj, sort_keys=True,
separators=(",", ":"), ensure_ascii=True)`` writes it:

- object keys sorted by code point, at every level; no whitespace at all;
- integers in plain decimal; ``true``/``false``/``null`` for booleans and None;
- strings in double quotes with ``\\"``, ``\\\\``, ``\\b``, ``\\f``, ``\\n``,
  ``\\r``, ``\\t`` escaped as shown, every other character below U+0020 and every
  character above U+007E written as ``\\uXXXX`` (lowercase hex; a UTF-16
  surrogate pair above U+FFFF); ``/`` is not escaped.

``E`` is the event as a JSON object with exactly these members (the fields of
``tuf_signer.model.AuditEvent``, and the columns of the ``audit_log`` table)::

    time, identity, operation, status, reason, key_name, keyid, role,
    expires, payload_sha256, signature          strings ("" = not applicable)
    outcome                                     "granted" or "refused"
    key_version, metadata_version               integers (0 = not applicable)
    detail                                      object (stored as that JSON text)

``detail`` may hold strings, integers, booleans, null, arrays and objects with
string keys, but no floating-point numbers: their text form differs between
languages, and a verifier must be able to rebuild ``J`` byte for byte.

Worked example (checked by the test suite): record 1 with the event
``AuditEvent(time="2025-01-01T00:00:00.000000Z", identity="repo",
operation="sign", outcome=Outcome.GRANTED, status="OK")`` has ``J`` (one line;
wrapped here) ::

    {"event":{"detail":{},"expires":"","identity":"repo","key_name":"",
    "key_version":0,"keyid":"","metadata_version":0,"operation":"sign",
    "outcome":"granted","payload_sha256":"","reason":"","role":"","signature":"",
    "status":"OK","time":"2025-01-01T00:00:00.000000Z"},"prev_hash":"000...000",
    "seq":1}

and ``hash(1) = 438120952e021a2df7c140ccad31fb434a1f9789c718b5841c3bd4ded74c0448``.

The chain shows any edit, deletion, insertion or reordering of records before
the last one. Dropping records from the *end* leaves a shorter valid chain;
``verify_store`` catches that when the role state points past the end, and the
planned Merkle checkpoints will catch it in general.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from tuf_signer.audit._store import AuditRecord
from tuf_signer.model import AuditEvent, Outcome, RoleState

# The operation of a signature record; a granted one always passed the high-water check.
SIGN = "sign"
# The operation of an admin reset of a (key, role) mark; a granted one set that role state.
RESET = "reset-role-state"

# The event's members, in the dataclass order (also the audit_log column order).
EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(AuditEvent))

_STR_FIELDS = frozenset(
    name
    for name in EVENT_FIELDS
    if name not in ("outcome", "key_version", "metadata_version", "detail")
)
_INT_FIELDS = frozenset(("key_version", "metadata_version"))


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` the way the chain does (see the module docstring).

    Raises:
        ValueError: ``obj`` holds NaN or an infinity.
        TypeError: ``obj`` holds something JSON cannot represent.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def _check_detail(value: Any, where: str) -> None:
    """Raise ValueError unless ``value`` is JSON without floats and with string keys."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        raise ValueError(f"{where}: floating-point numbers are not allowed in detail")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_detail(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: detail object keys must be strings")
            _check_detail(item, f"{where}.{key}")
        return
    raise ValueError(f"{where}: {type(value).__name__} is not allowed in detail")


def _check_event_dict(d: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``d`` has exactly the event members, well typed."""
    missing = [name for name in EVENT_FIELDS if name not in d]
    extra = sorted(set(d) - set(EVENT_FIELDS))
    if missing or extra:
        raise ValueError(f"event members wrong: missing {missing}, unexpected {extra}")
    for name in _STR_FIELDS:
        if not isinstance(d[name], str):
            raise ValueError(f"event.{name} must be a string")
    for name in _INT_FIELDS:
        value = d[name]
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"event.{name} must be an integer")
    if d["outcome"] not in (Outcome.GRANTED.value, Outcome.REFUSED.value):
        raise ValueError("event.outcome must be 'granted' or 'refused'")
    if not isinstance(d["detail"], Mapping):
        raise ValueError("event.detail must be an object")
    _check_detail(d["detail"], "event.detail")


def event_to_dict(event: AuditEvent) -> dict[str, Any]:
    """Return the event as the JSON object ``E`` that the chain hashes.

    Raises:
        ValueError: a field has the wrong type, or ``detail`` holds something
            the chain cannot represent portably (floats, non-string keys...).
    """
    if not isinstance(event.outcome, Outcome):
        raise ValueError("event.outcome must be an Outcome")
    d: dict[str, Any] = {name: getattr(event, name) for name in EVENT_FIELDS}
    d["outcome"] = event.outcome.value
    _check_event_dict(d)
    return d


def event_from_dict(d: Mapping[str, Any]) -> AuditEvent:
    """Parse the JSON object ``E`` (as produced by ``event_to_dict``) back into an event.

    Raises:
        ValueError: ``d`` is not exactly a serialised ``AuditEvent``.
    """
    if not isinstance(d, Mapping):
        raise ValueError("event must be an object")
    _check_event_dict(d)
    kwargs = {name: d[name] for name in EVENT_FIELDS}
    kwargs["outcome"] = Outcome(d["outcome"])
    kwargs["detail"] = dict(d["detail"])
    return AuditEvent(**kwargs)


def record_hash(prev_hash: str, seq: int, event: AuditEvent) -> str:
    """Return ``hash(seq)`` for ``event`` chained after ``prev_hash``.

    Raises:
        ValueError: the event cannot be serialised (see ``event_to_dict``).
    """
    return hash_of_event_dict(prev_hash, seq, event_to_dict(event))


def hash_of_event_dict(prev_hash: str, seq: int, e: Mapping[str, Any]) -> str:
    """``record_hash`` of the event whose ``event_to_dict`` is ``e``, already checked."""
    body = canonical_json({"prev_hash": prev_hash, "seq": seq, "event": e})
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def chain(prev_hash: str, seq: int, event: AuditEvent) -> AuditRecord:
    """Return ``event`` as record ``seq``, linked to ``prev_hash``.

    Raises:
        ValueError: the event cannot be serialised (see ``event_to_dict``).
    """
    return AuditRecord(
        seq=seq, event=event, prev_hash=prev_hash, hash=record_hash(prev_hash, seq, event)
    )


def is_granted_sign(event: AuditEvent) -> bool:
    """Whether ``event`` records a signature handed out (and so a role state)."""
    return event.operation == SIGN and event.outcome is Outcome.GRANTED


def is_granted_reset(event: AuditEvent) -> bool:
    """Whether ``event`` records an admin reset of a role state (``ResetRole``)."""
    return event.operation == RESET and event.outcome is Outcome.GRANTED


def sets_role_state(event: AuditEvent) -> bool:
    """Whether ``event`` set the role state of its (key, role): a granted sign or reset."""
    return is_granted_sign(event) or is_granted_reset(event)


def state_of(event: AuditEvent, seq: int = 0) -> RoleState:
    """The role state that a granted sign or reset ``event``, as record ``seq``, stands for."""
    return RoleState(
        key_name=event.key_name,
        role=event.role,
        version=event.metadata_version,
        payload_sha256=event.payload_sha256,
        keyid=event.keyid,
        key_version=event.key_version,
        signature=event.signature,
        expires=event.expires,
        audit_seq=seq,
    )


def state_differences(state: RoleState, event: AuditEvent) -> list[str]:
    """The role-state fields on which ``state`` and a sign or reset ``event`` disagree."""
    pairs = {
        "key_name": (state.key_name, event.key_name),
        "role": (state.role, event.role),
        "version": (state.version, event.metadata_version),
        "payload_sha256": (state.payload_sha256, event.payload_sha256),
        "keyid": (state.keyid, event.keyid),
        "key_version": (state.key_version, event.key_version),
        "signature": (state.signature, event.signature),
        "expires": (state.expires, event.expires),
    }
    return [name for name, (a, b) in pairs.items() if a != b]
