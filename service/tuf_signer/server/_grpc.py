"""gRPC servicers and the error interceptor: protobuf in, ``SigningService`` out."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from tuf_signer.audit import event_to_dict
from tuf_signer.errors import LimitError, RequestError, TufSignerError
from tuf_signer.model import (
    Algorithm,
    BinsDelegation,
    KeyState,
    KeyVersion,
    RoleRule,
    RoleState,
)
from tuf_signer.server._identity import Authenticator, identity_of
from tuf_signer.server._service import SigningService
from tuf_signer.server._values import KeyView, SignItem, SignResult, public_key_json
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

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


_ALGORITHMS: dict[int, Algorithm] = {
    pb.ALGORITHM_UNSPECIFIED: Algorithm.ED25519,
    pb.ED25519: Algorithm.ED25519,
    pb.ECDSA_P256: Algorithm.ECDSA_P256,
    pb.RSA_3072_PSS: Algorithm.RSA_3072_PSS,
}
_ALGORITHM_TO_PB = {
    Algorithm.ED25519: pb.ED25519,
    Algorithm.ECDSA_P256: pb.ECDSA_P256,
    Algorithm.RSA_3072_PSS: pb.RSA_3072_PSS,
}
_STATE_TO_PB = {
    KeyState.PENDING: pb.PENDING,
    KeyState.ACTIVE: pb.ACTIVE,
    KeyState.RETIRED: pb.RETIRED,
}


def _role_state_pb(s: RoleState) -> pb.RoleStateInfo:
    return pb.RoleStateInfo(
        key=s.key_name,
        role=s.role,
        version=s.version,
        payload_sha256=s.payload_sha256,
        keyid=s.keyid,
        key_version=s.key_version,
        expires=s.expires,
        audit_seq=s.audit_seq,
    )


def _sign_response(result: SignResult) -> pb.SignResponse:
    return pb.SignResponse(
        signature=pb.TufSignature(keyid=result.keyid, sig=result.signature),
        key_version=result.key_version,
        audit_seq=result.audit_seq,
        role=result.role,
        metadata_version=result.metadata_version,
        replayed=result.replayed,
    )


def _version_pb(v: KeyVersion) -> pb.KeyVersionInfo:
    return pb.KeyVersionInfo(
        key=v.key_name,
        version=v.version,
        state=_STATE_TO_PB[v.state],
        keyid=v.keyid,
        public_key_json=public_key_json(v.public_key),
        created_at=v.created_at,
        activated_at=v.activated_at or "",
        retired_at=v.retired_at or "",
    )


def _key_pb(view: KeyView) -> pb.KeyInfo:
    return pb.KeyInfo(
        name=view.key.name,
        algorithm=_ALGORITHM_TO_PB[view.key.algorithm],
        backend=view.key.backend,
        roles=[
            pb.RoleRule(pattern=r.pattern, max_validity_seconds=r.max_validity)
            for r in view.key.rules
        ],
        versions=[_version_pb(v) for v in view.versions],
        created_at=view.key.created_at,
        bins=_bins_pb(view.key.bins),
    )


def _bins_pb(bins: BinsDelegation | None) -> pb.BinsDelegation | None:
    if bins is None:
        return None
    return pb.BinsDelegation(prefix=bins.prefix, bit_length=bins.bit_length)


def _bins(request: pb.CreateKeyRequest) -> BinsDelegation | None:
    """The request's declaration; the service checks its values."""
    if not request.HasField("bins"):
        return None
    return BinsDelegation(request.bins.prefix, request.bins.bit_length)


def _algorithm(value: int) -> Algorithm:
    try:
        return _ALGORITHMS[value]
    except KeyError:
        raise RequestError(f"unknown algorithm {value}") from None


class SignerServicer(pb_grpc.SignerServicer):
    """``tuf_signer.v1.Signer``."""

    def __init__(self, service: SigningService, identity: IdentityOf = identity_of) -> None:
        self._service = service
        self._identity_of = identity

    async def Sign(
        self, request: pb.SignRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SignResponse:
        result = await self._service.sign(
            self._identity_of(context),
            SignItem(request.key, request.role or None, request.payload, request.expected_keyid),
        )
        return _sign_response(result)

    async def SignBatch(
        self, request: pb.SignBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SignBatchResponse:
        outcomes = await self._service.sign_batch(
            self._identity_of(context),
            [
                SignItem(r.key, r.role or None, r.payload, r.expected_keyid)
                for r in request.requests
            ],
        )
        results = []
        for outcome in outcomes:
            if isinstance(outcome, TufSignerError):
                code = grpc.StatusCode[outcome.code]
                results.append(
                    pb.SignBatchResult(code=code.value[0], status=code.name, reason=outcome.reason)
                )
            else:
                results.append(pb.SignBatchResult(response=_sign_response(outcome)))
        return pb.SignBatchResponse(results=results)

    async def GetPublicKeys(
        self, request: pb.GetPublicKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetPublicKeysResponse:
        views = await self._service.public_keys(self._identity_of(context), request.key)
        return pb.GetPublicKeysResponse(keys=[_key_pb(v) for v in views])

    async def GetRoleState(
        self, request: pb.GetRoleStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetRoleStateResponse:
        states = await self._service.role_states(
            self._identity_of(context), request.key, request.role
        )
        return pb.GetRoleStateResponse(states=[_role_state_pb(s) for s in states])


class KeyAdminServicer(pb_grpc.KeyAdminServicer):
    """``tuf_signer.v1.KeyAdmin``."""

    def __init__(self, service: SigningService, identity: IdentityOf = identity_of) -> None:
        self._service = service
        self._identity_of = identity

    async def CreateKey(
        self, request: pb.CreateKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateKeyResponse:
        identity = self._identity_of(context)
        try:
            algorithm = _algorithm(request.algorithm)
        except RequestError as e:
            await self._service.refuse(identity, "create-key", e, key_name=request.name)
        view, seq = await self._service.create_key(
            identity,
            request.name,
            algorithm,
            [RoleRule(r.pattern, r.max_validity_seconds) for r in request.roles],
            request.backend,
            request.activate,
            _bins(request),
        )
        return pb.CreateKeyResponse(key=_key_pb(view), audit_seq=seq)

    async def RotateKey(
        self, request: pb.RotateKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.KeyVersionResponse:
        version, seq = await self._service.rotate_key(self._identity_of(context), request.key)
        return pb.KeyVersionResponse(version=_version_pb(version), audit_seq=seq)

    async def ActivateKeyVersion(
        self, request: pb.ActivateKeyVersionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.KeyVersionResponse:
        identity = self._identity_of(context)
        number = await self._version_number(identity, "activate-key-version", request)
        version, seq = await self._service.set_version_state(
            identity, request.key, number, KeyState.ACTIVE, request.expected_keyid
        )
        return pb.KeyVersionResponse(version=_version_pb(version), audit_seq=seq)

    async def RetireKeyVersion(
        self, request: pb.RetireKeyVersionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.KeyVersionResponse:
        identity = self._identity_of(context)
        number = await self._version_number(identity, "retire-key-version", request)
        version, seq = await self._service.set_version_state(
            identity, request.key, number, KeyState.RETIRED
        )
        return pb.KeyVersionResponse(version=_version_pb(version), audit_seq=seq)

    async def _version_number(
        self,
        identity: str,
        operation: str,
        request: pb.ActivateKeyVersionRequest | pb.RetireKeyVersionRequest,
    ) -> int:
        if request.version < 1:
            await self._service.refuse(
                identity,
                operation,
                RequestError("key version is required (versions start at 1)"),
                key_name=request.key,
            )
        return request.version

    async def ListKeys(
        self, request: pb.ListKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListKeysResponse:
        views = await self._service.admin_keys(self._identity_of(context))
        return pb.ListKeysResponse(keys=[_key_pb(v) for v in views])

    async def ResetRoleState(
        self, request: pb.ResetRoleStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ResetRoleStateResponse:
        state, seq = await self._service.reset_role_state(
            self._identity_of(context), request.key, request.role, request.version, request.reason
        )
        return pb.ResetRoleStateResponse(state=_role_state_pb(state), audit_seq=seq)


class AuditLogServicer(pb_grpc.AuditLogServicer):
    """``tuf_signer.v1.AuditLog``."""

    def __init__(self, service: SigningService, identity: IdentityOf = identity_of) -> None:
        self._service = service
        self._identity_of = identity

    async def ListRecords(
        self, request: pb.ListRecordsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListRecordsResponse:
        limit = min(request.limit or 100, 1000)
        records, (head_seq, head_hash) = await self._service.audit_records(
            self._identity_of(context), request.start_seq, limit
        )
        return pb.ListRecordsResponse(
            records=[
                pb.AuditRecordInfo(
                    seq=r.seq,
                    prev_hash=r.prev_hash,
                    hash=r.hash,
                    event_json=json.dumps(event_to_dict(r.event), sort_keys=True),
                )
                for r in records
            ],
            head_seq=head_seq,
            head_hash=head_hash,
        )


Refuse = Callable[..., Awaitable[None]]

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
    """

    def __init__(
        self,
        deadline: float,
        refuse: Refuse,
        message_limits: Mapping[str, int] | None = None,
        authenticator: Authenticator | None = None,
        check_caller: Callable[[str, str], None] | None = None,
    ) -> None:
        self._deadline = deadline
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
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the call ran past the server's {self._deadline:g} s deadline",
                )
            except TufSignerError as e:
                await context.abort(grpc.StatusCode[e.code], e.reason)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except NotImplementedError:
                # The generated base servicer's answer for a method we lack.
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
            except Exception:
                log.exception("unexpected error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")

        behaviour: Any = guarded  # grpc's stubs type only the sync context
        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=check_size,
            response_serializer=handler.response_serializer,
        )
