"""TUF payload checks (P3) and client authorisation (P2): pure functions, no I/O.

The server calls ``check_sign_request`` for a Sign request and
``validate_rules`` for CreateKey; the smaller checks are public so that tools
and tests can apply them one at a time. Every check raises a
``tuf_signer.errors`` exception that carries its gRPC status code.
"""

from __future__ import annotations

from tuf_signer.policy._authz import (
    ANONYMOUS,
    KEY_ADMIN,
    OPERATIONS,
    READ_AUDIT,
    READ_KEYS,
    SIGN,
    UNRESTRICTED,
    AccessPolicy,
    AccessRule,
    authorize,
    authorize_key,
    authorize_role,
)
from tuf_signer.policy._canonical import parse_canonical
from tuf_signer.policy._checks import (
    PEP458_ONLINE_RULES,
    TUF_EXPIRES_FORMAT,
    SignedInfo,
    check_expiry,
    check_role_allowed,
    check_sign_request,
    check_spec_version,
    check_type_fits_role,
    inspect_signed,
    resolve_role,
    validate_rules,
)

__all__ = [
    "ANONYMOUS",
    "KEY_ADMIN",
    "OPERATIONS",
    "PEP458_ONLINE_RULES",
    "READ_AUDIT",
    "READ_KEYS",
    "SIGN",
    "TUF_EXPIRES_FORMAT",
    "UNRESTRICTED",
    "AccessPolicy",
    "AccessRule",
    "SignedInfo",
    "authorize",
    "authorize_key",
    "authorize_role",
    "check_expiry",
    "check_role_allowed",
    "check_sign_request",
    "check_spec_version",
    "check_type_fits_role",
    "inspect_signed",
    "parse_canonical",
    "resolve_role",
    "validate_rules",
]
