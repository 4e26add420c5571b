"""TUF payload checks (P3) and client authorisation (P2): pure functions, no I/O.

The server calls ``check_sign_request`` for a Sign request and
``validate_rules`` for CreateKey; the smaller checks are public so that tools
and tests can apply them one at a time. Every check raises a
``tuf_signer.errors`` exception that carries its gRPC status code.
"""

from __future__ import annotations

from tuf_signer.policy._authz import (
    ANONYMOUS,
    IDENTITY_TYPES,
    KEY_ADMIN,
    MAX_IDENTITY_CHARS,
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
    check_identity,
    identity_type,
)
from tuf_signer.policy._bins import (
    bin_for_path,
    bin_index,
    bin_name,
    bins_pattern,
    check_bin_payload,
    check_bins_delegation,
    parse_bins,
)
from tuf_signer.policy._canonical import (
    REFERENCE_INLINE_BYTES,
    NeedsExactCheck,
    parse_canonical,
)
from tuf_signer.policy._checks import (
    PEP458_BINS,
    PEP458_ONLINE_RULES,
    TUF_EXPIRES_FORMAT,
    SignedInfo,
    check_expiry,
    check_role_allowed,
    check_sign_request,
    check_spec_version,
    check_type_fits_role,
    inspect_signed,
    pep458_online_rules,
    resolve_role,
    validate_rules,
)
from tuf_signer.policy._coherence import (
    EMPTY_BIN,
    Listing,
    delegated_keyids,
    delegations_digest,
    empty_bin_role,
    infer_targets_role,
    is_empty_bin_role,
    listing,
)
from tuf_signer.policy._native import native_check_off

__all__ = [
    "ANONYMOUS",
    "EMPTY_BIN",
    "IDENTITY_TYPES",
    "KEY_ADMIN",
    "MAX_IDENTITY_CHARS",
    "OPERATIONS",
    "PEP458_BINS",
    "PEP458_ONLINE_RULES",
    "READ_AUDIT",
    "READ_KEYS",
    "REFERENCE_INLINE_BYTES",
    "SIGN",
    "TUF_EXPIRES_FORMAT",
    "UNRESTRICTED",
    "AccessPolicy",
    "AccessRule",
    "Listing",
    "NeedsExactCheck",
    "SignedInfo",
    "authorize",
    "authorize_key",
    "authorize_role",
    "bin_for_path",
    "bin_index",
    "bin_name",
    "bins_pattern",
    "check_bin_payload",
    "check_bins_delegation",
    "check_expiry",
    "check_identity",
    "check_role_allowed",
    "check_sign_request",
    "check_spec_version",
    "check_type_fits_role",
    "delegated_keyids",
    "delegations_digest",
    "empty_bin_role",
    "identity_type",
    "infer_targets_role",
    "inspect_signed",
    "is_empty_bin_role",
    "listing",
    "native_check_off",
    "parse_bins",
    "parse_canonical",
    "pep458_online_rules",
    "resolve_role",
    "validate_rules",
]
