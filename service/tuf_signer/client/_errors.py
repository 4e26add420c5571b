"""gRPC statuses from the server, raised as the project's exception tree.

Each class below is both a ``RemoteError`` (it came from the server: ``code``
is the status name, ``reason`` the server's message) and the local class for
that status, so ``except PolicyError`` catches a refusal whether it was raised
in-process or over the wire. The tree is split by status code only: the
server's reason text is for people and is not parsed here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from tuf_signer.errors import (
    AlreadyExistsError,
    NotFoundError,
    PermissionError_,
    PolicyError,
    RemoteError,
    RequestError,
    ResourceExhaustedError,
    UnauthenticatedError,
)


class RemoteRequestError(RemoteError, RequestError):
    """INVALID_ARGUMENT: the request or payload is malformed (not canonical JSON, wrong _type)."""


class RemoteNotFoundError(RemoteError, NotFoundError):
    """NOT_FOUND: no such key or key version."""


class RemoteAlreadyExistsError(RemoteError, AlreadyExistsError):
    """ALREADY_EXISTS: a key with that name exists."""


class RemotePermissionError(RemoteError, PermissionError_):
    """PERMISSION_DENIED: the key's policy or the caller's identity does not allow it."""


class RemoteUnauthenticatedError(RemoteError, UnauthenticatedError):
    """UNAUTHENTICATED: the server could not tell who the caller is."""


class RemoteResourceExhaustedError(RemoteError, ResourceExhaustedError):
    """RESOURCE_EXHAUSTED: a limit was hit (message size, rate)."""


class RemotePolicyError(RemoteError, PolicyError):
    """FAILED_PRECONDITION: a TUF rule refused the payload.

    Rollback, equivocation, expiry out of range, a stale expected keyid, a key
    with no ACTIVE version.
    """


class RemoteUnavailableError(RemoteError):
    """UNAVAILABLE: the server, its HSM/KMS or its audit store cannot answer now.

    Nothing was signed; the request may be retried (a Sign retry with the same
    payload is answered with the same signature).
    """

    code = "UNAVAILABLE"


_BY_CODE: dict[str, type[RemoteError]] = {
    "INVALID_ARGUMENT": RemoteRequestError,
    "NOT_FOUND": RemoteNotFoundError,
    "ALREADY_EXISTS": RemoteAlreadyExistsError,
    "PERMISSION_DENIED": RemotePermissionError,
    "UNAUTHENTICATED": RemoteUnauthenticatedError,
    "RESOURCE_EXHAUSTED": RemoteResourceExhaustedError,
    "FAILED_PRECONDITION": RemotePolicyError,
    "UNAVAILABLE": RemoteUnavailableError,
}


def remote_error(code: str, reason: str) -> RemoteError:
    """The exception for a status ``code`` (a ``grpc.StatusCode`` name) and its message."""
    return _BY_CODE.get(code, RemoteError)(reason or code, code=code)


def from_rpc_error(error: grpc.RpcError) -> RemoteError:
    """Translate a failed call (sync or asyncio) into our tree."""
    # grpc.RpcError itself declares neither method; the raised objects are also grpc.Call.
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    status = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    name = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
    return remote_error(name, details or "")


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise a ``grpc.RpcError`` inside the block as a ``RemoteError``.

    Raises:
        RemoteError: one of the classes above, by status code.
    """
    try:
        yield
    except grpc.RpcError as e:
        raise from_rpc_error(e) from e
