"""Who may do what (P2): per-identity rules, denied by default. Pure functions.

A rule names one client identity (from its certificate) and the operations it
may call. ``sign`` is further limited to named keys and role-name patterns, so
a stolen backend credential signs only what its rule allows.

Identities carry their type, so that one certificate field can never pass for
another: ``uri:spiffe://example.org/backend`` (a SAN URI), ``dns:backend.example``
(a SAN DNS name) and ``cn:Repository Backend`` (a subject CN, only when the server
turns that fallback on) are three different identities.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tuf_signer.errors import ConfigError, PermissionError_, UnauthenticatedError, shown

SIGN = "sign"
KEY_ADMIN = "key-admin"
READ_KEYS = "read-keys"
READ_AUDIT = "read-audit"
OPERATIONS = (SIGN, KEY_ADMIN, READ_KEYS, READ_AUDIT)

# The identity of a caller on a plaintext (insecure, loopback-only) listener.
ANONYMOUS = "anonymous"

# Identity types, by the certificate field they come from (RFC 5280 §4.2.1.6
# subjectAltName uniformResourceIdentifier / dNSName; subject commonName).
URI = "uri"
DNS = "dns"
CN = "cn"
IDENTITY_TYPES = (URI, DNS, CN)
MAX_IDENTITY_CHARS = 1024  # of the value after the type prefix
_PRINTABLE_ASCII = re.compile(r"[!-~]+")  # IA5String without space and controls


def identity_type(identity: str) -> str:
    """The type of a typed identity (``uri``, ``dns`` or ``cn``); "" for any other string."""
    kind, sep, _ = identity.partition(":")
    return kind if sep and kind in IDENTITY_TYPES else ""


def check_identity(identity: str) -> None:
    """Refuse an identity that is untyped, empty, too long or holds odd characters.

    ``uri:`` and ``dns:`` values are printable ASCII without spaces (SAN URIs and
    DNS names are IA5Strings); ``dns:`` values are lower case, since DNS names
    compare case-insensitively (RFC 5280 §7.2) and one spelling keeps one reading.
    ``cn:`` values are printable Unicode; single inner spaces are allowed. No
    value holds a control character, NUL or a line break.

    Raises:
        UnauthenticatedError: saying what is wrong (the identity shown escaped).
    """
    kind = identity_type(identity)
    if not kind:
        raise UnauthenticatedError(f"identity {shown(identity)} has no type (uri:, dns: or cn:)")
    value = identity[len(kind) + 1 :]
    if not value:
        raise UnauthenticatedError(f"identity {shown(identity)} is empty after its type")
    if len(value) > MAX_IDENTITY_CHARS:
        raise UnauthenticatedError(
            f"identity {shown(identity)} is longer than {MAX_IDENTITY_CHARS} characters"
        )
    if kind == CN:
        bad = value != value.strip() or not value.isprintable()
    else:
        bad = _PRINTABLE_ASCII.fullmatch(value) is None
    if bad:
        raise UnauthenticatedError(
            f"identity {shown(identity)} holds control, space or other unprintable characters"
        )
    if kind == DNS and value != value.lower():
        raise UnauthenticatedError(
            f"identity {shown(identity)}: DNS names are compared in lower case; "
            f"write {shown(identity.lower())}"
        )


@dataclass(frozen=True)
class AccessRule:
    """What one identity may do.

    Attributes:
        identity: the typed client identity (``uri:…``, ``dns:…`` or ``cn:…``),
            or ``anonymous`` for callers on a plaintext loopback listener.
        operations: a subset of ``OPERATIONS``.
        keys: key-name patterns (``fnmatch``, case-sensitive, like ``roles``)
            this identity may sign with: ``*`` for any, ``pypi-*`` for a family.
        roles: role-name patterns (``fnmatch``, case-sensitive) it may sign.
        max_concurrent: per-identity override of ``limits.max_concurrent``.
        rate: per-identity override of ``limits.rate`` (requests/s).
        burst: per-identity override of ``limits.burst`` (requests).
    """

    identity: str
    operations: frozenset[str]
    keys: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    max_concurrent: int | None = None
    rate: float | None = None
    burst: int | None = None


@dataclass(frozen=True)
class AccessPolicy:
    """Every rule, by identity. An identity without a rule may do nothing."""

    rules: Mapping[str, AccessRule] = field(default_factory=dict)

    @classmethod
    def from_rules(cls, rules: Iterable[AccessRule]) -> AccessPolicy:
        """Build and validate a policy.

        Raises:
            ConfigError: a rule is contradictory or malformed (names it).
        """
        by_identity: dict[str, AccessRule] = {}
        for i, rule in enumerate(rules):
            where = f"authz.rules[{i}]"
            validate_rule(rule, where)
            if rule.identity in by_identity:
                raise ConfigError(
                    f"{where}.identity: {shown(rule.identity)} already has a rule; merge them"
                )
            by_identity[rule.identity] = rule
        return cls(by_identity)


def validate_rule(rule: AccessRule, where: str) -> None:
    """Check one rule on its own.

    Raises:
        ConfigError: naming the setting at fault.
    """
    _check_rule_identity(rule.identity, where)
    if not rule.operations:
        raise ConfigError(f"{where}.operations: at least one of {', '.join(OPERATIONS)}")
    unknown = sorted(rule.operations - set(OPERATIONS))
    if unknown:
        raise ConfigError(
            f"{where}.operations: unknown operation {unknown[0]!r} "
            f"(choose from {', '.join(OPERATIONS)})"
        )
    if SIGN in rule.operations:
        if not rule.keys:
            raise ConfigError(f"{where}.keys: 'sign' needs the key names it may use")
        if not rule.roles:
            raise ConfigError(f"{where}.roles: 'sign' needs the role patterns it may sign")
    elif rule.keys or rule.roles:
        raise ConfigError(f"{where}.keys/roles: only meaningful with the 'sign' operation")
    if any(not r or r != r.strip() for r in (*rule.keys, *rule.roles)):
        raise ConfigError(f"{where}.keys/roles: empty or padded entries are not allowed")
    if any(fnmatch.fnmatchcase("root", pattern) for pattern in rule.roles):
        raise ConfigError(f"{where}.roles: a pattern matches 'root', which is never signed online")
    for name, value in (("max_concurrent", rule.max_concurrent), ("burst", rule.burst)):
        if value is not None and value < 1:
            raise ConfigError(f"{where}.{name}: must be at least 1")
    if rule.rate is not None and rule.rate <= 0:
        raise ConfigError(f"{where}.rate: must be positive")


def _check_rule_identity(identity: str, where: str) -> None:
    if identity == ANONYMOUS:
        return
    if not identity_type(identity):
        typed = ("uri:" if "://" in identity else "dns:") + identity
        raise ConfigError(
            f"{where}.identity: {shown(identity)} does not say its type; identities are "
            f"typed by the certificate field they come from (uri:, dns: or cn:), "
            f"e.g. {typed!r}"
        )
    try:
        check_identity(identity)
    except UnauthenticatedError as e:
        raise ConfigError(f"{where}.identity: {e.reason}") from None


def authorize(policy: AccessPolicy, identity: str, operation: str) -> AccessRule:
    """The rule that lets ``identity`` call ``operation``.

    Raises:
        UnauthenticatedError: the caller has no identity (or is anonymous and
            the policy has no rule for anonymous callers).
        PermissionError_: the identity may not call ``operation``.
    """
    rule = policy.rules.get(identity)
    if not identity or (identity == ANONYMOUS and rule is None):
        raise UnauthenticatedError("the caller presented no identity (client certificate)")
    if rule is None:
        raise PermissionError_(f"identity {shown(identity)} has no access rule")
    if operation not in rule.operations:
        raise PermissionError_(f"identity {shown(identity)} may not {operation}")
    return rule


def authorize_key(rule: AccessRule, key_name: str) -> None:
    """Refuse a key that matches none of the rule's ``keys`` patterns (issue 14, item 4).

    Raises:
        PermissionError_: the identity may not sign with ``key_name``.
    """
    if not any(fnmatch.fnmatchcase(key_name, pattern) for pattern in rule.keys):
        raise PermissionError_(
            f"identity {shown(rule.identity)} may not sign with key {shown(key_name)}"
        )


def authorize_role(rule: AccessRule, role: str) -> None:
    """Refuse a role outside the rule's ``roles`` patterns.

    Raises:
        PermissionError_: the identity may not sign ``role``.
    """
    if not any(fnmatch.fnmatchcase(role, pattern) for pattern in rule.roles):
        raise PermissionError_(f"identity {shown(rule.identity)} may not sign role {shown(role)}")


UNRESTRICTED = AccessRule(
    identity="*local*",
    operations=frozenset(OPERATIONS),
    keys=("*",),
    roles=("*",),
)
"""For in-process administration (``dev-init``), never for a network caller."""
