"""One exception tree for tuf-signer, split by origin.

Every class carries the name of the gRPC status code it maps to, as a string, so
that the lower layers (policy, keys, audit) never import gRPC. The server's error
interceptor is the only place that turns these into statuses.

Messages must never contain PINs or key material: they are shown to clients and
written to the audit record.
"""

from __future__ import annotations

SHOWN = 48  # characters of a caller's string echoed in a reason


def shown(value: str) -> str:
    """Quote a caller's string for a reason: ``repr`` (no raw control characters), cut short.

    Reasons go to clients in gRPC trailers (a few KiB at most) and into the
    audit record, so a hostile 100k-character name must not be echoed whole.
    """
    if len(value) > SHOWN:
        return repr(value[:SHOWN]) + "..."
    return repr(value)


class TufSignerError(Exception):
    """Base class of every error this project raises on purpose.

    Attributes:
        code: name of the gRPC status code (``grpc.StatusCode[code]``).
        reason: a short message safe to show to a client and to record.
    """

    code: str = "INTERNAL"

    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


# --- request: the caller sent something we cannot accept -----------------------


class RequestError(TufSignerError):
    """The request itself is malformed."""

    code = "INVALID_ARGUMENT"


class NotFoundError(RequestError):
    """A named key or key version does not exist."""

    code = "NOT_FOUND"


class AlreadyExistsError(RequestError):
    """A key with that name exists already."""

    code = "ALREADY_EXISTS"


class PermissionError_(RequestError):
    """The key's policy (or, later, the caller's identity) does not allow this."""

    code = "PERMISSION_DENIED"


class UnauthenticatedError(RequestError):
    """The caller has no identity we can authorise."""

    code = "UNAUTHENTICATED"


class UnknownIdentityError(PermissionError_):
    """The caller's identity has no access rule at all (counted, not recorded one by one)."""


class ResourceExhaustedError(RequestError):
    """A limit was hit (rate, concurrency, quota)."""

    code = "RESOURCE_EXHAUSTED"


class LimitError(ResourceExhaustedError):
    """An identity is over one of its own limits (counted, not recorded one by one)."""


# --- policy: the payload is well-formed but must not be signed ------------------


class PolicyError(TufSignerError):
    """The payload is well-formed JSON but breaks a TUF rule (P3)."""

    code = "FAILED_PRECONDITION"


class PayloadError(PolicyError):
    """The payload is not acceptable TUF ``signed`` canonical JSON."""

    code = "INVALID_ARGUMENT"


class RollbackError(PolicyError):
    """The metadata version is not above the high-water mark (rollback/equivocation)."""


class VersionStepError(PolicyError):
    """The metadata version is too far above the high-water mark (``max_version_step``).

    A compromised backend could otherwise fast-forward a role to 2**63 - 1 and
    leave it unsignable for good; an admin reset moves the mark on purpose.
    """


class KeyStateError(PolicyError):
    """The key version asked for cannot be used (not ACTIVE, stale keyid pin...)."""


class StaleKeyVersionError(KeyStateError):
    """The key version a signature was made with was retired before it was recorded.

    Another worker activated a newer version meanwhile: the signature is
    dropped, and an unpinned request may be signed again with the new version.
    """


class StaleReplayError(TufSignerError):
    """A retry answered from a stale cache does not repeat the stored mark; send it again."""

    code = "ABORTED"


# --- backend: the HSM or KMS -----------------------------------------------------


class BackendError(TufSignerError):
    """The key backend failed in a way the caller cannot fix."""

    code = "INTERNAL"


class BackendUnavailableError(BackendError):
    """The HSM or KMS cannot be reached or refused to work; fail closed."""

    code = "UNAVAILABLE"


class SignatureMismatchError(BackendUnavailableError):
    """The backend returned a signature that does not verify against the registered key.

    A faulty HSM, or a KMS serving another key under the version's name: the
    signature is never recorded as granted nor returned (fail closed).
    """


class DeadlineError(BackendError):
    """The backend did not answer within the call's deadline; nothing was signed."""

    code = "DEADLINE_EXCEEDED"


class BackendQuotaError(BackendError):
    """The KMS refused for quota (requests per minute, per key...); try again later."""

    code = "RESOURCE_EXHAUSTED"


class BackendPermissionError(BackendError):
    """The KMS refused our credentials or a permission; an operator must grant it."""

    code = "FAILED_PRECONDITION"


# --- store: the audit record and role state ---------------------------------------


class StoreError(TufSignerError):
    """The audit store cannot be written or read; fail closed."""

    code = "UNAVAILABLE"


class LogUnavailableError(TufSignerError):
    """The transparency log cannot vouch for a new signature; fail closed.

    Its witnesses are further behind than ``audit.max_unwitnessed_*`` allows,
    or the store disagrees with what they cosigned (an older copy of it, or a
    fork): signing waits for the witnesses, or for an operator. Unlike a
    ``StoreError``, the store works, so the refusal is recorded.
    """

    code = "UNAVAILABLE"


class AuditChainError(TufSignerError):
    """The audit record failed verification.

    Attributes:
        seq: sequence number of the first broken record, or None when the
            break is not tied to one record.
    """

    code = "DATA_LOSS"

    def __init__(self, reason: str, seq: int | None = None) -> None:
        super().__init__(reason)
        self.seq = seq


# --- configuration ------------------------------------------------------------------


class RemoteError(TufSignerError):
    """A refusal or failure reported by a tuf-signer server to a client.

    ``code`` is the gRPC status name the server sent, ``reason`` its message.
    """


class ConfigError(TufSignerError):
    """The configuration is wrong, missing or contradictory; names the setting."""

    code = "FAILED_PRECONDITION"
