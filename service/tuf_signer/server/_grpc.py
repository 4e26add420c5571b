"""gRPC servicers: protobuf in, ``SigningService`` out (the interceptor is ``_interceptor``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from tuf_signer.audit import (
    AuditRecord,
    AuditStore,
    Consistency,
    NoCheckpointError,
    consistency,
    event_to_dict,
    find_checkpoint,
    record_leaf,
    tlog_proof,
)
from tuf_signer.audit._checkpoints import StoredCheckpoint
from tuf_signer.audit._note import ED25519, NoteError, VerifierKey, parse_verifier_key
from tuf_signer.errors import ConfigError, RequestError, TufSignerError, shown
from tuf_signer.model import (
    Algorithm,
    BinsDelegation,
    KeyState,
    KeyVersion,
    RoleRule,
    RoleState,
)
from tuf_signer.server._identity import identity_of
from tuf_signer.server._interceptor import (
    FAULTS,
    ErrorInterceptor,
    IdentityOf,
    OnFault,
    admitted_identity,
)
from tuf_signer.server._service import SigningService
from tuf_signer.server._values import KeyView, SignItem, SignResult, public_key_json
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

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
    """``tuf_signer.v1.Signer``.

    Args:
        service: the signing service.
        identity: the caller's identity for a call.
        on_fault: told of a store or backend fault that a SignBatch answers
            per item (the interceptor sees only a whole call's error).
    """

    def __init__(
        self,
        service: SigningService,
        identity: IdentityOf = identity_of,
        on_fault: OnFault | None = None,
    ) -> None:
        self._service = service
        self._identity_of = identity
        self._on_fault = on_fault

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
        fault = next((o for o in outcomes if isinstance(o, FAULTS)), None)
        if fault is not None and self._on_fault is not None:
            await self._on_fault(fault)
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

    async def ResetRoleStates(
        self, request: pb.ResetRoleStatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ResetRoleStatesResponse:
        count, first, last = await self._service.reset_role_states(
            self._identity_of(context), request.key, request.version, request.reason
        )
        return pb.ResetRoleStatesResponse(roles=count, first_audit_seq=first, last_audit_seq=last)

    async def SetKeyRules(
        self, request: pb.SetKeyRulesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateKeyResponse:
        rules = [RoleRule(r.pattern, r.max_validity_seconds) for r in request.roles]
        view, seq = await self._service.set_key_rules(
            self._identity_of(context), request.key, rules, request.reason
        )
        return pb.CreateKeyResponse(key=_key_pb(view), audit_seq=seq)

    async def ApproveDelegations(
        self, request: pb.ApproveDelegationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ApproveDelegationsResponse:
        seq = await self._service.approve_delegations(
            self._identity_of(context),
            request.key,
            request.role,
            request.delegations_sha256,
            request.reason,
        )
        return pb.ApproveDelegationsResponse(audit_seq=seq)


class AuditLogServicer(pb_grpc.AuditLogServicer):
    """``tuf_signer.v1.AuditLog``: the records, and the transparency log's proofs.

    Every checkpoint handed out (alone or in a proof) is a stored one whose
    signature verifies with ``verifier_key`` and whose root is the store's
    tree hash (``tuf_signer.audit._proofs``).

    Args:
        service: the signing service.
        identity: the caller's identity for a call.
        origin: the log's origin line (``audit.origin``); None when the log
            is off, and the checkpoint and proof RPCs answer FAILED_PRECONDITION.
        verifier_key: the audit key's verifier key text (signed-note
            ``origin+keyid+base64``); None exactly when ``origin`` is.
        checkpoint_now: signs a checkpoint of the tree now (the transparency
            log's ``tick``), for ``GetCheckpoint(fresh=true)``.

    Raises:
        ConfigError: only one of ``origin`` and ``verifier_key`` is given, or
            the key does not parse or is not an Ed25519 key named after the origin.
    """

    def __init__(
        self,
        service: SigningService,
        identity: IdentityOf = identity_of,
        *,
        origin: str | None = None,
        verifier_key: str | None = None,
        checkpoint_now: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._service = service
        self._identity_of = identity
        self._log = _log_key(origin, verifier_key)
        self._checkpoint_now = checkpoint_now

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

    async def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetCheckpointResponse:
        def read(store: AuditStore) -> tuple[StoredCheckpoint, VerifierKey]:
            origin, key = self._log_on()
            size = request.size or None
            if request.witnessed_by:
                size = _witnessed_size(store, origin, request.size, request.witnessed_by)
            return find_checkpoint(store, origin, size, log_key=key), key

        identity = self._identity_of(context)
        if request.fresh:

            def admit(_store: AuditStore) -> None:
                self._log_on()
                if request.size or request.witnessed_by:
                    raise RequestError("fresh: a new checkpoint has no size or witnessed_by yet")

            # Admitted (and a refusal recorded) as any read first: only a caller
            # allowed read-audit makes the audit key sign.
            await self._service.audit_read(identity, admit)
            if self._checkpoint_now is not None:
                await self._checkpoint_now()
        found, key = await self._service.audit_read(identity, read)
        return pb.GetCheckpointResponse(
            checkpoint=found.note, verifier_key=key.text(), size=found.size
        )

    async def ProveInclusion(
        self, request: pb.ProveInclusionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ProveInclusionResponse:
        def read(store: AuditStore) -> bytes:
            origin, key = self._log_on()
            return tlog_proof(store, origin, request.seq, request.tree_size or None, log_key=key)

        proof = await self._service.audit_read(self._identity_of(context), read)
        return pb.ProveInclusionResponse(proof=proof)

    async def ProveConsistency(
        self, request: pb.ProveConsistencyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ProveConsistencyResponse:
        def read(store: AuditStore) -> Consistency:
            origin, key = self._log_on()
            return consistency(
                store, origin, request.from_size, request.to_size or None, log_key=key
            )

        proof = await self._service.audit_read(self._identity_of(context), read)
        return pb.ProveConsistencyResponse(hashes=proof.hashes, checkpoint=proof.checkpoint)

    async def FindRecords(
        self, request: pb.FindRecordsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.FindRecordsResponse:
        def read(store: AuditStore) -> list[AuditRecord]:
            return store.find_records(
                request.payload_sha256, MAX_FOUND, granted_signs_only=request.granted_signs_only
            )

        records = await self._service.audit_read(self._identity_of(context), read)
        return pb.FindRecordsResponse(
            records=[pb.RecordLeaf(seq=r.seq, leaf=record_leaf(r)) for r in records]
        )

    def _log_on(self) -> tuple[str, VerifierKey]:
        if self._log is None:
            raise ConfigError(
                "the transparency log is off on this server (audit.origin and audit.key "
                "are not set): it has no checkpoints or proofs"
            )
        return self._log


MAX_FOUND = 100  # FindRecords answers at most this many records, oldest first


def _witnessed_size(store: AuditStore, origin: str, size: int, witnessed_by: int) -> int:
    """The size of the newest stored checkpoint with ``witnessed_by`` cosignatures.

    Raises:
        RequestError: ``size`` is given too (witnessed_by asks for the newest).
        NoCheckpointError: no stored checkpoint has that many yet.
    """
    if size:
        raise RequestError("witnessed_by asks for the newest witnessed checkpoint: give size 0")
    found = store.latest_witnessed(origin, witnessed_by)
    if found is None:
        raise NoCheckpointError(
            f"no checkpoint is cosigned by {witnessed_by} witnesses yet (witnessed_by)"
        )
    return found.size


def _log_key(origin: str | None, text: str | None) -> tuple[str, VerifierKey] | None:
    """The log's origin and parsed verifier key; None when the log is off."""
    if origin is None and text is None:
        return None
    if origin is None or text is None:
        raise ConfigError("the AuditLog servicer needs both the log's origin and verifier key")
    try:
        key = parse_verifier_key(text)
    except NoteError as e:
        raise ConfigError(f"the log's verifier key does not parse: {e.reason}") from None
    if key.name != origin or key.sig_type != ED25519:
        raise ConfigError(f"the log's verifier key is not an Ed25519 key named {shown(origin)}")
    return origin, key


__all__ = [
    "MAX_FOUND",
    "AuditLogServicer",
    "ErrorInterceptor",
    "KeyAdminServicer",
    "SignerServicer",
    "admitted_identity",
]
