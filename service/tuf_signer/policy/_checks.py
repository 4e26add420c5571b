"""The TUF policy a payload must meet before an online key signs it (P3).

Every check is a pure function that raises on failure: no I/O and no clock (the
caller passes ``now``). The rollback check (version above the high-water mark)
needs the role state, so the server does it in the same transaction as the
audit record; everything else is here.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, TypeVar

from tuf_signer.errors import PayloadError, PermissionError_, PolicyError, RequestError, shown
from tuf_signer.model import BinsDelegation, RoleRule
from tuf_signer.policy._bins import (
    bin_index,
    bins_pattern,
    check_bin_payload,
    check_bins_delegation,
    check_rules_fit_bins,
)
from tuf_signer.policy._canonical import parse_canonical
from tuf_signer.policy._coherence import (
    Listing,
    check_not_a_bin,
    check_role_agrees,
    delegations_digest,
    empty_bin_rule,
    infer_targets_role,
    is_empty_bin_role,
    listing,
)

DAY = 86400  # seconds

# PEP 458: timestamp, snapshot and bin-n metadata expire after 1 day.
DEFAULT_MAX_VALIDITY = DAY

# PEP 458's hashed bins as RSTUF names them: python-tuf succinct hash bins with
# prefix "bins" and 16,384 bins ("bins-0000" ... "bins-3fff").
PEP458_BINS = BinsDelegation("bins", 14)


def pep458_online_rules(bins: BinsDelegation = PEP458_BINS) -> tuple[RoleRule, ...]:
    """A key policy for a PEP 458 repository's online roles, each valid for 1 day.

    Timestamp, snapshot, and exactly the declared bins (``bins_pattern``), which
    never match "bins" itself, an offline role.
    """
    return (
        RoleRule("timestamp", DEFAULT_MAX_VALIDITY),
        RoleRule("snapshot", DEFAULT_MAX_VALIDITY),
        RoleRule(bins_pattern(bins), DEFAULT_MAX_VALIDITY),
    )


# The rules for a key that declares PEP458_BINS:
# timestamp, snapshot, "bins-[0-3][0-9a-f][0-9a-f][0-9a-f]".
PEP458_ONLINE_RULES: tuple[RoleRule, ...] = pep458_online_rules()

# The longest max_validity a rule may set: 10 years, leap days included.
MAX_RULE_VALIDITY = 3653 * DAY

# TUF spec, "File formats: general principles": expires is ISO 8601 in UTC with
# second precision and a literal "Z", e.g. "2030-01-01T00:00:00Z".
TUF_EXPIRES_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_EXPIRES_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")
_SPEC_VERSION_RE = re.compile(r"[0-9]{1,9}\.[0-9]{1,9}(?:\.[0-9]{1,9})?")

# TUF spec, "Roles and PKI": the four top-level roles; delegated roles are
# "targets" metadata.
_TUF_TYPES = ("root", "snapshot", "targets", "timestamp")
_TYPE_FOR_ROLE = {"root": "root", "snapshot": "snapshot", "timestamp": "timestamp"}
_OFFLINE_ROLE = "root"
_MAX_INT64 = 2**63 - 1
_MAX_ROLE_NAME = 255  # characters
# Control, format (bidi overrides, zero-width), surrogate, line/paragraph separators.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

_T = TypeVar("_T")


@dataclass(frozen=True)
class SignedInfo:
    """What the policy and the audit record need from a TUF ``signed`` object.

    Attributes:
        type: the ``_type`` field ("root", "timestamp", "snapshot" or "targets").
        version: the metadata version, 1 <= version <= 2**63 - 1.
        expires: the ``expires`` field as an aware UTC datetime.
        spec_version: the ``spec_version`` field, e.g. "1.0.31".
        payload_sha256: hex SHA-256 of the exact payload bytes.
        lists: for a key that declares bins, what a snapshot or timestamp
            lists of the roles the key signs (``_coherence.listing``); None
            when coherence does not apply.
        delegations_sha256: for targets metadata other than a bin, the
            digest of its ``delegations`` (``_coherence.delegations_digest``);
            "" otherwise.
    """

    type: str
    version: int
    expires: datetime
    spec_version: str
    payload_sha256: str
    lists: Listing | None = None
    delegations_sha256: str = ""


def inspect_signed(
    obj: dict[str, Any], payload: bytes, payload_sha256: str | None = None
) -> SignedInfo:
    """Read and type-check the fields every TUF ``signed`` object has.

    TUF spec, "File formats: general principles": ``_type``, ``spec_version``,
    ``version`` and ``expires`` are required in every role's ``signed`` object.

    Args:
        obj: the parsed payload (from ``parse_canonical``).
        payload: the payload bytes, for the digest.
        payload_sha256: the digest, when the caller has it already (hex).

    Returns:
        The fields as a frozen value.

    Raises:
        PayloadError: a field is missing, has the wrong JSON type or is out of
            range (naming the field).
    """
    type_ = _field(obj, "_type", str, "a string")
    if type_ not in _TUF_TYPES:
        raise PayloadError(
            f"_type {_show(type_)} is not a TUF metadata type (one of {', '.join(_TUF_TYPES)})"
        )

    version = _field(obj, "version", int, "an integer")
    # TUF versions start at 1; 2**63 - 1 is what every client can hold.
    if not 1 <= version <= _MAX_INT64:
        raise PayloadError(f"version {_show(str(version))} is out of range 1..2**63-1")

    expires_str = _field(obj, "expires", str, "a string")
    expires = _parse_expires(expires_str)

    spec_version = _field(obj, "spec_version", str, "a string")
    if _SPEC_VERSION_RE.fullmatch(spec_version) is None:
        raise PayloadError(
            f"spec_version {_show(spec_version)} is not MAJOR.MINOR or MAJOR.MINOR.PATCH"
        )

    return SignedInfo(
        type=type_,
        version=version,
        expires=expires,
        spec_version=spec_version,
        payload_sha256=payload_sha256 or hashlib.sha256(payload).hexdigest(),
    )


def resolve_role(role: str | None, type_: str) -> str:
    """Name the role a payload is signed for, and check the name.

    Timestamp, snapshot and root have one role of their type, so an empty role
    defaults to ``_type``; targets metadata can be any delegated role, so the
    caller must name it.

    Args:
        role: the role named in the request, or None / "" to default.
        type_: the payload's ``_type``.

    Returns:
        The role name.

    Raises:
        RequestError: no role was named for targets metadata, or the name is
            not an acceptable role name.
    """
    if not role:
        if type_ not in _TYPE_FOR_ROLE:
            raise RequestError(f"role name required for {type_} metadata")
        role = type_
    _check_name(role, "role name")
    if any(c in _GLOB_CHARS for c in role):
        # A literal "bins-*" would match the rule "bins-*" and get its own
        # high-water mark: glob characters belong in rules, not in names.
        raise RequestError(f"role name {_show(role)} contains a glob character (* ? [ ])")
    return role


_GLOB_CHARS = frozenset("*?[]")


def check_type_fits_role(role: str, type_: str) -> None:
    """Check that the payload's ``_type`` is the one the role signs.

    Args:
        role: the resolved role name.
        type_: the payload's ``_type``.

    Raises:
        PayloadError: the type does not fit, e.g. a snapshot sent as timestamp.
    """
    expected = _TYPE_FOR_ROLE.get(role, "targets")
    if type_ != expected:
        raise PayloadError(
            f"_type {_show(type_)} does not fit role {_show(role)} (expected {expected!r})"
        )


def check_role_allowed(role: str, rules: Sequence[RoleRule], key_name: str) -> RoleRule:
    """Find the key's rule that allows signing ``role``.

    Args:
        role: the resolved role name.
        rules: the key's rules, in order; the first match wins.
        key_name: the key's name, for the reason.

    Returns:
        The first rule whose pattern matches (case-sensitive ``fnmatch``).

    Raises:
        PermissionError_: the role is root, which is never signed online, or
            no rule matches.
    """
    if role == _OFFLINE_ROLE:
        raise PermissionError_("root is an offline role: an online key never signs it")
    for rule in rules:
        if fnmatchcase(role, rule.pattern):
            return rule
    raise PermissionError_(f"role {_show(role)} is not allowed for key {_show(key_name)}")


def check_spec_version(spec_version: str, supported_major: int = 1) -> None:
    """Check that the payload follows a TUF spec major version we understand.

    TAP 6 / TUF spec "spec_version" (SemVer): a client refuses metadata of a major
    version it does not support, so signing it would only strand clients. The
    major is compared as a string, as python-tuf does, so "01.0" is refused too.

    Args:
        spec_version: the payload's ``spec_version`` (already format-checked).
        supported_major: the major version supported.

    Raises:
        PolicyError: the major version is not ``supported_major``.
    """
    major = spec_version.split(".", 1)[0]
    if major != str(supported_major):
        raise PolicyError(
            f"unsupported spec_version major in {_show(spec_version)} "
            f"(supported: {supported_major}.x)"
        )


def check_expiry(
    expires: datetime, now: datetime, max_validity: int, max_clock_skew: int = 0
) -> None:
    """Check that ``expires`` is in the future and within the role's maximum.

    Args:
        expires: the payload's expiry (aware).
        now: the current time (aware), passed in by the caller.
        max_validity: the longest ``expires - now`` allowed, in seconds.
        max_clock_skew: how far ahead of ours a repository's clock may run, in
            seconds (``policy.max_clock_skew``): a repository that asks for
            exactly its now + the maximum is not refused for a clock a few
            seconds ahead (issue 14, obstacle 5).

    Raises:
        PolicyError: ``expires`` is not after ``now``, or is later than
            ``now + max_validity + max_clock_skew``.
        ValueError: ``now`` or ``expires`` is naive (a programming error).
    """
    if now.tzinfo is None or expires.tzinfo is None:
        raise ValueError("check_expiry needs timezone-aware datetimes")
    shown = _format_time(expires)
    if expires <= now:
        raise PolicyError(f"expires {shown} is in the past (now {_format_time(now)})")
    latest = now + timedelta(seconds=max_validity + max_clock_skew)
    if expires > latest:
        skew = f" plus max_clock_skew {max_clock_skew} s" if max_clock_skew else ""
        raise PolicyError(
            f"expires {shown} is beyond the maximum validity of {max_validity} s{skew} "
            f"for this role (latest allowed {_format_time(latest)})"
        )


def validate_rules(rules: Sequence[RoleRule], bins: BinsDelegation | None = None) -> None:
    """Check a key's role rules (and its bins declaration) before the key is created.

    Args:
        rules: the rules asked for.
        bins: the hash-bin delegation the key declares, if any.

    Raises:
        RequestError: there is no rule; a pattern is empty, not an acceptable
            role name (glob characters ``*?[]`` allowed), matches "root", or
            appears twice; a max_validity is not in 1 s .. 10 years; the bins
            declaration is malformed; or a glob pattern could match a name that
            is not one of the declared bins (every glob, when none are declared).
    """
    if bins is not None:
        check_bins_delegation(bins)
    if not rules:
        raise RequestError("a key needs at least one role rule")
    seen: set[str] = set()
    for rule in rules:
        pattern = rule.pattern
        if not isinstance(pattern, str) or not pattern:
            raise RequestError("role rule pattern must be a non-empty string")
        _check_name(pattern, "role rule pattern")
        if fnmatchcase(_OFFLINE_ROLE, pattern):
            raise RequestError(
                f"role rule pattern {_show(pattern)} would allow signing root, an offline role"
            )
        if pattern in seen:
            raise RequestError(f"role rule pattern {_show(pattern)} appears twice")
        seen.add(pattern)
        validity = rule.max_validity
        if (
            not isinstance(validity, int)
            or isinstance(validity, bool)
            or not 0 < validity <= MAX_RULE_VALIDITY
        ):
            raise RequestError(
                f"max_validity {_show(repr(validity))} of role rule {_show(pattern)} "
                f"must be a whole number of seconds in 1..{MAX_RULE_VALIDITY} (10 years)"
            )
    check_rules_fit_bins(rules, bins)


def check_sign_request(
    payload: bytes,
    role: str | None,
    key_name: str,
    rules: Sequence[RoleRule],
    now: datetime,
    max_payload_bytes: int,
    payload_sha256: str | None = None,
    *,
    exact: bool = True,
    bins: BinsDelegation | None = None,
    max_clock_skew: int = 0,
) -> tuple[str, SignedInfo, RoleRule]:
    """Apply every stateless P3 check to one Sign request, in a fixed order.

    Order: size, canonical JSON, required fields, role name (inferred for
    role-less targets metadata from a key that declares bins, else it must
    agree with the inference: ``_coherence``), ``_type`` fits role, role
    allowed for the key, hash bin (``check_bin_payload``, targets only),
    ``spec_version``, ``expires``, then what the store needs for coherence
    (``SignedInfo.lists``, ``SignedInfo.delegations_sha256``). The rollback
    check (version above the last one signed) and coherence are the caller's,
    with the role state.

    Args:
        payload: the canonical JSON ``signed`` object to be signed.
        role: the role named in the request; None or "" to default from ``_type``.
        key_name: the key asked for, for reasons.
        rules: that key's role rules.
        now: the current time (aware).
        max_payload_bytes: the largest payload accepted.
        payload_sha256: the payload's SHA-256 (hex), when the caller has it.
        exact: False to raise ``NeedsExactCheck`` rather than run the slow
            exact canonical check (see ``parse_canonical``).
        bins: the hash-bin delegation the key declares, if any.
        max_clock_skew: seconds added to the expiry bound (``check_expiry``).

    Returns:
        The resolved role, the payload's fields and the rule that allowed it.

    Raises:
        NeedsExactCheck: ``exact`` is False and the payload needs the exact check.
        PayloadError: too large, not canonical JSON, a required field missing or
            malformed, or ``_type`` does not fit the role (INVALID_ARGUMENT).
        RequestError: the role name is missing or unacceptable (INVALID_ARGUMENT).
        PermissionError_: the key may not sign this role (PERMISSION_DENIED).
        PolicyError: unsupported ``spec_version`` major, or ``expires`` in the
            past or beyond the rule's maximum, or a glob rule allowed a bin but
            the key declares no bins (FAILED_PRECONDITION).
        RequestError, PayloadError: a bin name that is not one of the declared
            bins, a target path outside the bin, or a bin with delegations
            (INVALID_ARGUMENT).
    """
    if len(payload) > max_payload_bytes:
        raise PayloadError(
            f"payload is {len(payload)} bytes, more than the limit of {max_payload_bytes}"
        )
    # No check reads a target's hashes or length, only its path (parse_canonical).
    obj = parse_canonical(payload, exact=exact, target_paths_only=True)
    info = inspect_signed(obj, payload, payload_sha256)
    inferred = not role and info.type == "targets"
    if inferred:
        resolved = infer_targets_role(obj, bins, key_name, info.payload_sha256)
    else:
        resolved = resolve_role(role, info.type)
    check_type_fits_role(resolved, info.type)
    is_a_bin = bins is not None and bin_index(bins, resolved) is not None
    is_empty_bin = bins is not None and is_empty_bin_role(resolved)
    if bins is not None and is_empty_bin:
        rule = empty_bin_rule(rules, bins, key_name)
    else:
        rule = check_role_allowed(resolved, rules, key_name)
        if info.type == "targets":
            # Inference named the bin its paths hash into, and a bin carries no
            # delegations: the bin checks have nothing left to find.
            if not (inferred and is_a_bin):
                check_bin_payload(resolved, obj, rule, bins, key_name)
            if not is_a_bin:  # a bin's paths were just checked: it agrees, and it is one
                if role:
                    check_role_agrees(resolved, obj, bins, info.payload_sha256)
                check_not_a_bin(resolved, obj, bins)
    check_spec_version(info.spec_version)
    check_expiry(info.expires, now, rule.max_validity, max_clock_skew)
    lists = listing(obj, info.type, bins, rules)
    delegations = ""
    if info.type == "targets" and not (is_a_bin or is_empty_bin):
        delegations = delegations_digest(obj)
    if lists is not None or delegations:
        info = replace(info, lists=lists, delegations_sha256=delegations)
    return resolved, info, rule


# --- helpers ----------------------------------------------------------------------


def _field(obj: dict[str, Any], name: str, kind: type[_T], described: str) -> _T:
    if name not in obj:
        raise PayloadError(f"signed object has no {name!r} field")
    value = obj[name]
    # bool is an int in Python but not in JSON.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PayloadError(f"{name!r} must be {described}, not {_json_type(value)}")
    return value


def _parse_expires(value: str) -> datetime:
    match = _EXPIRES_RE.fullmatch(value)
    if match is None:
        raise PayloadError(
            f"expires {_show(value)} is not in TUF's form YYYY-MM-DDTHH:MM:SSZ (UTC)"
        )
    year, month, day, hour, minute, second = map(int, match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as e:
        raise PayloadError(f"expires {_show(value)} is not a valid date and time: {e}") from e


def _check_name(name: str, what: str) -> None:
    """Refuse names that would be unsafe as file names, log fields or identities."""
    if not isinstance(name, str):
        raise RequestError(f"{what} must be a string")
    if not name:
        raise RequestError(f"{what} is empty")
    if len(name) > _MAX_ROLE_NAME:
        raise RequestError(f"{what} is {len(name)} characters long, more than {_MAX_ROLE_NAME}")
    bad = next((c for c in name if unicodedata.category(c) in _BAD_CATEGORIES), None)
    if bad is not None:
        raise RequestError(
            f"{what} {_show(name)} contains a control or format character {bad!r} "
            f"(U+{ord(bad):04X})"
        )
    if "/" in name:
        raise RequestError(f"{what} {_show(name)} contains '/'")
    if ".." in name or name == ".":
        raise RequestError(f"{what} {_show(name)} contains '..' or is '.'")
    if name != name.strip():
        raise RequestError(f"{what} {_show(name)} has leading or trailing whitespace")
    if not unicodedata.is_normalized("NFC", name):
        raise RequestError(f"{what} {_show(name)} is not in Unicode normal form NFC")


_show = shown


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(TUF_EXPIRES_FORMAT)


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return type(value).__name__
