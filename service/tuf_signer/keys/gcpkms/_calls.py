"""Calling Cloud KMS: call budgets, retries with backoff, and Google errors mapped to ours.

Deadlines. ``KeyBackend`` calls carry no deadline, so each backend call has its
own budget (``bounded``) for all attempts together, backoff included.
UNAVAILABLE and DEADLINE_EXCEEDED are retried with jittered exponential
backoff while the budget lasts, each RPC getting what is left of it as its
timeout (``KmsCalls.call``); a backstop timer cancels whatever still runs at
the end.

Errors. RESOURCE_EXHAUSTED becomes ``BackendQuotaError``; PERMISSION_DENIED
and UNAUTHENTICATED become ``BackendPermissionError``, naming the IAM
permission the call needs; UNAVAILABLE and DEADLINE_EXCEEDED become
``BackendUnavailableError`` once the budget is spent; anything else is a
``BackendError``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

from tuf_signer.errors import (
    BackendError,
    BackendPermissionError,
    BackendQuotaError,
    BackendUnavailableError,
)
from tuf_signer.keys._backoff import Backoff

if TYPE_CHECKING:
    from tuf_signer.keys.gcpkms._google import GoogleApis, KeyManagementServiceAsyncClient

__all__ = ["KmsCalls", "bounded", "short"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_BACKSTOP_GRACE = 0.05  # seconds past the budget before the backstop cancels
_MESSAGE_MAX = 240  # characters of a KMS error message kept in our reasons

# The IAM permission each call needs, and a predefined role that grants it.
_PERMISSION: Final = {
    "GetKeyRing": ("cloudkms.keyRings.get", "roles/cloudkms.admin"),
    "CreateKeyRing": ("cloudkms.keyRings.create", "roles/cloudkms.admin"),
    "GetCryptoKey": ("cloudkms.cryptoKeys.get", "roles/cloudkms.admin"),
    "CreateCryptoKey": ("cloudkms.cryptoKeys.create", "roles/cloudkms.admin"),
    "CreateCryptoKeyVersion": ("cloudkms.cryptoKeyVersions.create", "roles/cloudkms.admin"),
    "GetCryptoKeyVersion": ("cloudkms.cryptoKeyVersions.get", "roles/cloudkms.admin"),
    "UpdateCryptoKeyVersion": ("cloudkms.cryptoKeyVersions.update", "roles/cloudkms.admin"),
    "GetPublicKey": ("cloudkms.cryptoKeyVersions.viewPublicKey", "roles/cloudkms.publicKeyViewer"),
    "AsymmetricSign": ("cloudkms.cryptoKeyVersions.useToSign", "roles/cloudkms.signerVerifier"),
}


def short(message: object) -> str:
    """``message`` on one line, cut to ``_MESSAGE_MAX`` characters (KMS texts can be long)."""
    text = " ".join(str(message).split())
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."


def _unavailable(
    method: str, resource: str, attempts: int, last: Exception | None
) -> BackendUnavailableError:
    what = "no answer" if last is None else short(getattr(last, "message", last))
    return BackendUnavailableError(
        f"Cloud KMS unavailable: {method} on {resource} failed after {attempts} "
        f"attempt(s) within the call budget: {what or type(last).__name__}"
    )


async def bounded(what: str, budget: float, body: Callable[[float], Awaitable[_T]]) -> _T:
    """Run ``body(deadline)``; cancel it if it outlives ``budget`` seconds.

    Raises:
        BackendUnavailableError: the budget ran out.
    """
    deadline = asyncio.get_running_loop().time() + budget
    try:
        async with asyncio.timeout_at(deadline + _BACKSTOP_GRACE):
            return await body(deadline)
    except TimeoutError as e:
        raise BackendUnavailableError(
            f"Cloud KMS: {what} did not finish within {budget:g} s"
        ) from e


@dataclass(frozen=True)
class KmsCalls:
    """A started backend's way to KMS: its client, the Google libraries, and ``call``.

    Attributes:
        backend: the backend's name, for messages and logs.
        client: the KMS client, on the backend's transport.
        google: the Google libraries (request types, exception classes).
        sleep: awaited between attempts (tests observe the backoff).
        backoff: the delays between attempts.
    """

    backend: str
    client: KeyManagementServiceAsyncClient
    google: GoogleApis
    sleep: Callable[[float], Awaitable[None]]
    backoff: Backoff = field(default_factory=Backoff)

    async def call(
        self,
        method: str,
        resource: str,
        rpc: Callable[..., Awaitable[_T]],
        request: Any,
        deadline: float,
        *,
        passthrough: tuple[type[Exception], ...] = (),
        retry: bool = True,
    ) -> _T:
        """One KMS RPC, retried on UNAVAILABLE / DEADLINE_EXCEEDED until ``deadline``.

        Args:
            method: the RPC's name (for messages and the IAM permission).
            resource: what it acts on (for messages).
            rpc: the client method.
            request: its request message.
            deadline: ``loop.time()`` by which everything must be done.
            passthrough: google.api_core exceptions the caller handles itself.
            retry: False for calls that are not idempotent.

        Raises:
            BackendQuotaError: RESOURCE_EXHAUSTED.
            BackendPermissionError: PERMISSION_DENIED, UNAUTHENTICATED, or
                credentials that cannot be refreshed.
            BackendUnavailableError: transient failures until the deadline.
            BackendError: any other error status.
        """
        gexc, auth_exceptions = self.google.api_errors, self.google.auth_errors
        loop = asyncio.get_running_loop()
        attempt = 0
        last: Exception | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _unavailable(method, resource, attempt, last) from last
            attempt += 1
            try:
                return await rpc(request=request, retry=None, timeout=remaining)
            except passthrough:
                raise
            except (gexc.ServiceUnavailable, gexc.DeadlineExceeded) as e:
                last = e
            except auth_exceptions.TransportError as e:  # fetching a token failed
                last = e
            except gexc.ResourceExhausted as e:
                raise BackendQuotaError(
                    f"Cloud KMS quota exhausted for {method} on {resource}: {short(e.message)}"
                ) from e
            except (gexc.PermissionDenied, gexc.Unauthenticated) as e:
                permission, role = _PERMISSION.get(method, ("?", "roles/cloudkms.admin"))
                if isinstance(e, gexc.Unauthenticated):
                    reason = (
                        f"Cloud KMS rejected the credentials of backend {self.backend!r} "
                        f"({method} on {resource}): {short(e.message)}"
                    )
                else:
                    reason = (
                        f"Cloud KMS denied {method} on {resource}: grant IAM permission "
                        f"{permission} (e.g. {role}) to the signer's service account"
                    )
                raise BackendPermissionError(reason) from e
            except gexc.GoogleAPICallError as e:
                status = e.grpc_status_code.name if e.grpc_status_code else type(e).__name__
                raise BackendError(
                    f"Cloud KMS refused {method} on {resource}: {status}: {short(e.message)}"
                ) from e
            except auth_exceptions.GoogleAuthError as e:
                raise BackendPermissionError(
                    f"backend {self.backend!r} cannot obtain Google credentials "
                    f"({type(e).__name__})"
                ) from e
            delay = self.backoff.delay(attempt)
            if not retry or delay >= deadline - loop.time():
                raise _unavailable(method, resource, attempt, last) from last
            log.warning(
                "backend %r: %s on %s: %s; retrying in %.2fs",
                self.backend,
                method,
                resource,
                short(last),
                delay,
            )
            await self.sleep(delay)
