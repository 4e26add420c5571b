"""The error interceptor: identity step, message limits, deadline, errors into statuses.

Every call passes here first (docs/design.md §3, step 1). A ``TufSignerError``
raised below becomes its gRPC status; anything else becomes INTERNAL with a
generic message, and the cause's type and frames go to the log. A store or
backend fault (``StoreError``, ``BackendUnavailableError``, a backend or the
whole call out of time) is also reported to health at once (``on_fault``), so
health does not wait for its next probe to say so.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from tuf_signer.errors import (
    BackendUnavailableError,
    DeadlineError,
    LimitError,
    LogUnavailableError,
    RequestError,
    StoreError,
    TufSignerError,
)
from tuf_signer.server._identity import Authenticator
from tuf_signer.server._recording import loggable_cause

log = logging.getLogger(__name__)

# The caller's typed identity ("" when refused): ``Authenticator.identity_of``.
IdentityOf = Callable[[grpc.aio.ServicerContext[Any, Any]], str]

# The identity the interceptor's identity step admitted for the call in this task.
_ADMITTED: ContextVar[str | None] = ContextVar("tuf_signer_admitted_identity", default=None)


def admitted_identity(fallback: IdentityOf) -> IdentityOf:
    """The identity ``ErrorInterceptor`` admitted for the current call, else ``fallback``'s."""

    def identity(context: grpc.aio.ServicerContext[Any, Any]) -> str:
        admitted = _ADMITTED.get()
        return admitted if admitted is not None else fallback(context)

    return identity


Refuse = Callable[..., Awaitable[None]]

# Told of a store or backend fault as it reaches a caller (``Health.fault``).
OnFault = Callable[[TufSignerError], Awaitable[None]]

# Errors that tell health the HSM or the store is failing (``on_fault``): a
# backend that did not answer within its timeout is one.
FAULTS = (StoreError, BackendUnavailableError, DeadlineError, LogUnavailableError)

# Methods outside the identity step and the access policy.
_OPEN_METHODS = ("/grpc.health.v1.Health/",)


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request message that failed to decode, or was too large."""

    error: TufSignerError


def _operation_of(method: str) -> str:
    """``/tuf_signer.v1.KeyAdmin/RotateKey`` -> ``rotate-key`` (the audit operation)."""
    name = method.rsplit("/", 1)[-1]
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns ``TufSignerError`` into its status; anything else into INTERNAL.

    It also bounds every unary call by the server-side deadline. The reason of
    a ``TufSignerError`` is safe to show (it never holds secrets); an
    unexpected exception's details go to the log only.

    A request that does not even decode (invalid UTF-8 in a string field,
    say) is refused with INVALID_ARGUMENT through ``refuse``, which records it,
    instead of surfacing as gRPC's UNKNOWN.

    A request message larger than its method's limit is refused before it is
    decoded (RESOURCE_EXHAUSTED, counted like any limit).

    Args:
        deadline: the longest a call may run, in seconds.
        refuse: records a refusal and raises it (``SigningService.refuse``).
        authenticator: the identity step, run first on every call: a caller
            it refuses (an unfit or revoked certificate, no identity) gets
            UNAUTHENTICATED with the reason, through ``refuse``.
        message_limits: the largest request message per method name, in
            bytes; ``"*"`` for every other method. No limit when omitted.
        authenticator: the identity step (see above).
        check_caller: refuses an identity without any access rule
            (``Guard.check_known``) before its message is decoded.
        on_fault: told of every ``StoreError``, ``BackendUnavailableError``
            and ``DeadlineError`` a call ends with, and of a call that ran past
            the server's deadline (a hung HSM or store), before the caller gets
            its status: health turns NOT_SERVING at the first failing Sign, not
            at the next probe. It must return at once (``Health.fault`` does).
    """

    def __init__(
        self,
        deadline: float,
        refuse: Refuse,
        message_limits: Mapping[str, int] | None = None,
        authenticator: Authenticator | None = None,
        check_caller: Callable[[str, str], None] | None = None,
        on_fault: OnFault | None = None,
    ) -> None:
        self._deadline = deadline
        self._on_fault = on_fault
        self._refuse = refuse
        self._authenticator = authenticator or Authenticator()
        self._check_caller = check_caller
        self._limits = dict(message_limits or {})
        # The wrapped handler of each method, built on its first call: the
        # server's handlers never change, and a Sign should not pay for
        # building closures and a handler again.
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # The stubs type handlers as sync; under grpc.aio they are coroutines.
        inner: Any = handler.unary_unary
        decode = handler.request_deserializer
        operation = _operation_of(method)
        name = method.rsplit("/", 1)[-1]
        limit = self._limits.get(name, self._limits.get("*"))
        # Health answers anyone who completed the TLS handshake (a probe may
        # have a certificate without any rule): it tells only SERVING or not.
        identify = not method.startswith(_OPEN_METHODS)

        def check_size(data: bytes) -> bytes | _Undecodable:
            # Decoding waits for the identity step: a caller without a rule
            # never gets its (up to max_batch_bytes) message parsed.
            if limit is not None and len(data) > limit:
                return _Undecodable(
                    LimitError(
                        f"the {name} request is {len(data)} bytes, more than its limit of {limit}"
                    )
                )
            return data

        def safe_decode(data: bytes) -> Any:
            try:
                return decode(data) if decode is not None else data
            except Exception as e:
                what = "a string field is not valid UTF-8" if "UTF-8" in str(e) else "malformed"
                return _Undecodable(RequestError(f"the request message does not decode: {what}"))

        async def guarded(
            raw: bytes | _Undecodable, context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            try:
                identity = None
                if identify:
                    caller = self._authenticator.caller_of(context)
                    identity = caller.identity
                    if caller.refusal is not None:
                        await self._refuse(identity, operation, caller.refusal)
                    if self._check_caller is not None:
                        try:
                            self._check_caller(identity, operation)
                        except TufSignerError as e:
                            await self._refuse(identity, operation, e)
                request = raw if isinstance(raw, _Undecodable) else safe_decode(raw)
                if isinstance(request, _Undecodable):
                    if identity is None:
                        raise request.error
                    await self._refuse(identity, operation, request.error)
                # The servicer reads the identity judged here (``admitted_identity``)
                # instead of judging the certificate a second time.
                token = _ADMITTED.set(identity)
                try:
                    async with asyncio.timeout(self._deadline):
                        return await inner(request, context)
                finally:
                    _ADMITTED.reset(token)
            except TimeoutError:
                reason = f"the call ran past the server's {self._deadline:g} s deadline"
                if self._on_fault is not None and identify:
                    # Past the deadline, the call was waiting on the HSM or
                    # the store (its message was already in): a hung one.
                    await self._on_fault(DeadlineError(f"a {name} call: {reason}"))
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, reason)
            except TufSignerError as e:
                if self._on_fault is not None and isinstance(e, FAULTS):
                    await self._on_fault(e)
                await context.abort(grpc.StatusCode[e.code], e.reason)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except NotImplementedError:
                # The generated base servicer's answer for a method we lack.
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
            except Exception as e:
                # Types and frames only: a library's text may hold a secret.
                log.error("unexpected error in %s: %s", method, loggable_cause(e))
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")

        behaviour: Any = guarded  # grpc's stubs type only the sync context
        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=check_size,
            response_serializer=handler.response_serializer,
        )
