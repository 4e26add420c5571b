"""The asyncio client, and ``sign_many``: many Signs in flight on one channel."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterable, Sequence
from typing import Any

import grpc

from tuf_signer.client._errors import from_rpc_error, remote_error, translated
from tuf_signer.client._models import (
    AuditPage,
    CheckpointInfo,
    ConsistencyInfo,
    KeyInfo,
    KeyVersionInfo,
    RecordLeafInfo,
    RoleStateInfo,
    SignedResult,
    SignOutcome,
    SignRequest,
    audit_page,
    create_key_request,
    key_info,
    role_state_info,
    version_info,
)
from tuf_signer.client._tls import TlsConfig, open_aio_channel, resolve_server, tls_config
from tuf_signer.errors import RequestError
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

DEFAULT_MAX_IN_FLIGHT = 256
# TCP connections of a client by default. The kernel hands each new connection
# to one of a server's workers (SO_REUSEPORT) at random, so one connection
# leaves all but one worker idle in a bulk re-sign (issue 16 measured it: one of
# two workers did all the work in 10 runs of 10). With 4, two workers both get
# work unless all four land on one (1 in 8). gRPC connects a channel on its
# first call, so the extra connections cost nothing until ``sign`` or
# ``sign_many`` uses them.
DEFAULT_CONNECTIONS = 4
BATCH_ITEMS = 64  # requests per SignBatch call from sign_many
BATCH_BYTES = 8 * 1024 * 1024  # and about this many payload bytes
"""Concurrent Signs of ``sign_many``: enough that the server's group commit fills
each database transaction, few enough to stay far from any server limit."""


class AsyncClient:
    """asyncio tuf-signer client: every RPC, plus ``sign_many``.

    One client owns one channel, reused by every call; gRPC multiplexes
    concurrent calls over it. Create the client in the event loop that uses
    it (a ``grpc.aio`` channel belongs to one loop) and close it there,
    e.g. with ``async with AsyncClient(...) as client``.

    Args:
        server: ``HOST:PORT``; default ``$TUF_SIGNER_SERVER``, else ``127.0.0.1:50051``.
        ca: CA file that issued the server's certificate; default ``$TUF_SIGNER_CA``.
            Without one the channel is plaintext, to a loopback server only
            unless ``insecure``.
        cert: client certificate file for mutual TLS; default ``$TUF_SIGNER_CERT``.
        key: client key file for mutual TLS; default ``$TUF_SIGNER_KEY``.
        timeout: deadline of each call, seconds.
        tls: a ready ``TlsConfig`` instead of ``ca``/``cert``/``key``/``insecure``.
        insecure: allow plaintext to a server that is not loopback; default
            ``$TUF_SIGNER_INSECURE``.
        connections: TCP connections that ``sign`` (in turn) and ``sign_many``
            (its batches) spread over, default ``DEFAULT_CONNECTIONS`` (4);
            more than one lets concurrent signing reach every worker of a
            server with ``server.workers`` > 1 (use about twice as many as
            the server has workers). Other calls use the first connection.

    Raises:
        ConfigError: contradictory or unreadable TLS settings, or plaintext
            to a server that is not loopback without ``insecure``.
        RequestError: both ``tls`` and ``ca``/``cert``/``key`` were given, or
            ``connections`` is below 1.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        tls: TlsConfig | None = None,
        connections: int = DEFAULT_CONNECTIONS,
        insecure: bool | None = None,
    ) -> None:
        if connections < 1:
            raise RequestError(f"connections must be at least 1, got {connections}")
        self.server = resolve_server(server)
        self.tls = tls_config(tls, ca, cert, key, insecure)
        self.timeout = timeout
        self._channel = open_aio_channel(self.server, self.tls)
        self._signer = pb_grpc.SignerStub(self._channel)
        self._admin = pb_grpc.KeyAdminStub(self._channel)
        self._audit = pb_grpc.AuditLogStub(self._channel)
        self._extra = [
            open_aio_channel(self.server, self.tls, own_connection=True)
            for _ in range(connections - 1)
        ]
        self._extra_signers: list[Any] = [pb_grpc.SignerStub(c) for c in self._extra]
        self._turn = itertools.count()

    def _signers(self) -> list[Any]:
        """A Signer stub per connection, the first connection's first."""
        return [self._signer, *self._extra_signers]

    async def close(self) -> None:
        """Close the channels; calls in flight are cancelled."""
        for channel in (self._channel, *self._extra):
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- Signer -------------------------------------------------------------------

    async def sign(
        self,
        key: str,
        payload: bytes,
        role: str | None = None,
        expected_keyid: str = "",
    ) -> SignedResult:
        """Sign a canonical-JSON TUF ``signed`` payload.

        Args:
            key: key name.
            payload: canonical JSON of the ``signed`` object (``Metadata.signed_bytes``).
            role: role name; required for targets-type roles such as bins.
            expected_keyid: refuse unless this is the ACTIVE version's keyid.

        Raises:
            RemoteError: the server refused or could not be reached; the
                subclass and ``code`` give the status, ``reason`` says why.
        """
        return await self._sign(SignRequest(key, payload, role, expected_keyid))

    async def _sign(self, request: SignRequest) -> SignedResult:
        with translated():
            stubs = self._signers()
            stub = stubs[next(self._turn) % len(stubs)]
            r = await stub.Sign(request.to_pb(), timeout=self.timeout)
        return SignedResult.from_pb(r)

    async def sign_many(
        self,
        requests: Iterable[SignRequest],
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> list[SignOutcome]:
        """Sign many payloads concurrently, keeping ``max_in_flight`` calls open.

        The server works on concurrent requests in parallel and commits their
        audit records together, so a bulk re-sign (every bin, after a rotation
        or for an expiry sweep) keeps it busy instead of waiting on one round
        trip at a time. One refusal does not stop the others.

        Requests travel in ``SignBatch`` calls of up to ``BATCH_ITEMS`` items
        (and about ``BATCH_BYTES``), so the server signs and commits each group
        together. At least two calls are open on each connection, so that a
        worker has the next batch while the last one's answer travels back.
        Against a server without SignBatch it falls back to one Sign per
        request.

        ``requests`` is consumed lazily, so a generator that builds payloads
        on demand keeps memory flat.

        Args:
            requests: what to sign.
            max_in_flight: most requests in flight at once (at least 1).

        Returns:
            One outcome per request, in request order: a ``SignedResult``, or
            the ``RemoteError`` the server answered for that request.

        Raises:
            RequestError: ``max_in_flight`` is below 1.
        """
        if max_in_flight < 1:
            raise RequestError(f"max_in_flight must be at least 1, got {max_in_flight}")
        results: dict[int, SignOutcome] = {}
        pending = enumerate(requests)
        stubs = self._signers()
        # Calls open at once, and items per call: at least two calls per
        # connection, never more than max_in_flight items in flight in all.
        calls = min(max_in_flight, max(2 * len(stubs), -(-max_in_flight // BATCH_ITEMS)))
        batch_items = max(1, min(BATCH_ITEMS, max_in_flight // calls))
        unary = False

        def next_chunk() -> list[tuple[int, SignRequest]]:
            chunk: list[tuple[int, SignRequest]] = []
            size = 0
            for i, request in pending:
                chunk.append((i, request))
                size += len(request.payload)
                if len(chunk) >= batch_items or size >= BATCH_BYTES:
                    break
            return chunk

        async def one(stub: Any, i: int, request: SignRequest) -> None:
            try:
                r = await stub.Sign(request.to_pb(), timeout=self.timeout)
            except grpc.RpcError as e:
                results[i] = from_rpc_error(e)
            else:
                results[i] = SignedResult.from_pb(r)

        async def worker(stub: Any) -> None:
            # Workers share one iterator: each takes the next chunk when free.
            nonlocal unary
            while chunk := next_chunk():
                if unary:
                    for i, request in chunk:
                        await one(stub, i, request)
                    continue
                batch = pb.SignBatchRequest()
                for _, r in chunk:
                    r.add_to(batch)
                try:
                    response = await stub.SignBatch(batch, timeout=self.timeout)
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                        unary = True  # an older server: one Sign per request
                        await asyncio.gather(*(one(stub, i, r) for i, r in chunk))
                        continue
                    error = from_rpc_error(e)
                    for i, _ in chunk:
                        results[i] = error
                    continue
                for (i, _), item in zip(chunk, response.results, strict=True):
                    results[i] = (
                        SignedResult.from_pb(item.response)
                        if item.code == 0
                        else remote_error(item.status, item.reason)
                    )

        workers = [asyncio.create_task(worker(stubs[w % len(stubs)])) for w in range(calls)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            # A failing request iterator, or our own cancellation: stop the rest.
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        return [results[i] for i in range(len(results))]

    async def public_keys(self, key: str = "") -> list[KeyInfo]:
        """Every key (or only ``key``) with its versions, states and TUF key dicts.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = await self._signer.GetPublicKeys(
                pb.GetPublicKeysRequest(key=key), timeout=self.timeout
            )
        return [key_info(k) for k in r.keys]

    async def role_state(self, key: str = "", role: str = "") -> list[RoleStateInfo]:
        """The highest version and payload digest signed per (key, role), filtered.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = await self._signer.GetRoleState(
                pb.GetRoleStateRequest(key=key, role=role), timeout=self.timeout
            )
        return [role_state_info(s) for s in r.states]

    # --- KeyAdmin -----------------------------------------------------------------

    async def create_key(
        self,
        name: str,
        roles: Sequence[tuple[str, int]],
        algorithm: str = "ed25519",
        backend: str = "",
        activate: bool = False,
        bins: str | None = None,
    ) -> KeyInfo:
        """Create a key with a role policy of ``(pattern, max_validity_seconds)`` pairs.

        ``bins`` (``PREFIX:BIT_LENGTH``, e.g. ``"bins:14"``) declares the succinct
        hash-bin delegation the key serves; a glob role pattern must then match
        only those bins (``tuf_signer.policy.bins_pattern``).

        Raises:
            RequestError: unknown algorithm name or malformed ``bins`` (nothing
                was sent).
            RemoteError: the server refused or could not be reached.
        """
        request = create_key_request(name, list(roles), algorithm, backend, activate, bins)
        with translated():
            r = await self._admin.CreateKey(request, timeout=self.timeout)
        return key_info(r.key)

    async def rotate_key(self, key: str) -> KeyVersionInfo:
        """Create a new PENDING version; returns it with its TUF key dict.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = await self._admin.RotateKey(pb.RotateKeyRequest(key=key), timeout=self.timeout)
        return version_info(r.version)

    async def activate(self, key: str, version: int, expected_keyid: str = "") -> KeyVersionInfo:
        """Make a version ACTIVE; the previous ACTIVE one becomes RETIRED.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = await self._admin.ActivateKeyVersion(
                pb.ActivateKeyVersionRequest(
                    key=key, version=version, expected_keyid=expected_keyid
                ),
                timeout=self.timeout,
            )
        return version_info(r.version)

    async def retire(self, key: str, version: int) -> KeyVersionInfo:
        """Retire a version for good.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = await self._admin.RetireKeyVersion(
                pb.RetireKeyVersionRequest(key=key, version=version), timeout=self.timeout
            )
        return version_info(r.version)

    async def list_keys(self) -> list[KeyInfo]:
        """Every key with its policy, backend and versions.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = await self._admin.ListKeys(pb.ListKeysRequest(), timeout=self.timeout)
        return [key_info(k) for k in r.keys]

    async def reset_role(self, key: str, role: str, version: int, reason: str) -> RoleStateInfo:
        """Move the high-water mark of (``key``, ``role``) to ``version``, with a reason.

        The next signature of the role must be above ``version`` (0 forgets the
        role). The reset is on the audit record with the caller's identity and
        ``reason`` (required; printable, at most 1024 characters). Needs
        ``key-admin``.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = await self._admin.ResetRoleState(
                pb.ResetRoleStateRequest(key=key, role=role, version=version, reason=reason),
                timeout=self.timeout,
            )
        return role_state_info(r.state)

    async def reset_roles(self, key: str, version: int, reason: str) -> tuple[int, int, int]:
        """Move the mark of every role ``key`` has signed to ``version`` (a re-bootstrap).

        One transaction, one record per role, each with ``reason``. Needs ``key-admin``.

        Returns:
            How many marks moved, and the first and last record's ``seq``.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = await self._admin.ResetRoleStates(
                pb.ResetRoleStatesRequest(key=key, version=version, reason=reason),
                timeout=self.timeout,
            )
        return r.roles, r.first_audit_seq, r.last_audit_seq

    async def set_key_rules(
        self, key: str, roles: Sequence[tuple[str, int]], reason: str
    ) -> KeyInfo:
        """Replace ``key``'s role rules: ``(pattern, max_validity_seconds)`` pairs.

        Checked as ``create_key`` checks them; on the record with ``reason``.
        Needs ``key-admin``.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        request = pb.SetKeyRulesRequest(
            key=key,
            roles=[pb.RoleRule(pattern=p, max_validity_seconds=s) for p, s in roles],
            reason=reason,
        )
        with translated():
            r = await self._admin.SetKeyRules(request, timeout=self.timeout)
        return key_info(r.key)

    async def approve_delegations(
        self, key: str, role: str, delegations_sha256: str, reason: str
    ) -> int:
        """Let the next ``role`` signature carry delegations with this SHA-256.

        The digest is the one a refused Sign names (``policy.delegations_digest``
        of the payload). On the record with ``reason``; used up by that
        signature. Needs ``key-admin``. Returns the record's ``seq``.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        request = pb.ApproveDelegationsRequest(
            key=key, role=role, delegations_sha256=delegations_sha256, reason=reason
        )
        with translated():
            r = await self._admin.ApproveDelegations(request, timeout=self.timeout)
        return int(r.audit_seq)

    # --- AuditLog -----------------------------------------------------------------

    async def audit_records(self, start_seq: int = 1, limit: int = 100) -> AuditPage:
        """Audit records from ``start_seq`` on (at most ``limit``; the server caps it at 1000).

        Page through the log by asking again from the last ``seq`` + 1. Check
        the records with the hash chain yourself: they are evidence, not the
        server's word.

        Raises:
            RemoteError: the server refused (the caller needs ``read-audit``)
                or could not be reached.
        """
        with translated():
            r = await self._audit.ListRecords(
                pb.ListRecordsRequest(start_seq=start_seq, limit=limit), timeout=self.timeout
            )
        return audit_page(r)

    # --- the transparency log (README "Proofs") --------------------------------------

    async def checkpoint(
        self, size: int = 0, *, witnessed_by: int = 0, fresh: bool = False
    ) -> CheckpointInfo:
        """The log's signed checkpoint of tree ``size`` (0: the newest), with cosignatures.

        With ``witnessed_by`` (and size 0): the newest one with at least that many
        witness cosignatures (FAILED_PRECONDITION while there is none). Verify them.
        With ``fresh``: the server signs a checkpoint of its tree first (on demand).

        Raises:
            RemoteError: refused (``read-audit``; FAILED_PRECONDITION: the log is
                off or has no checkpoint yet; NOT_FOUND: no checkpoint of that
                size) or the server could not be reached.
        """
        with translated():
            r = await self._audit.GetCheckpoint(
                pb.GetCheckpointRequest(size=size, witnessed_by=witnessed_by, fresh=fresh),
                timeout=self.timeout,
            )
        return CheckpointInfo(r.checkpoint, r.verifier_key, r.size)

    async def prove_inclusion(self, seq: int, tree_size: int = 0) -> bytes:
        """The c2sp.org/tlog-proof@v1 text of record ``seq`` in a checkpoint (0: the newest).

        Verify it with the record's ``audit export`` line and the log's
        verifier key (e.g. ``tuf_signer.audit._checkpoint.verify_tlog_proof``).

        Raises:
            RemoteError: refused (FAILED_PRECONDITION: no checkpoint covers
                ``seq`` yet, retry later; OUT_OF_RANGE: beyond the log) or the
                server could not be reached.
        """
        with translated():
            r = await self._audit.ProveInclusion(
                pb.ProveInclusionRequest(seq=seq, tree_size=tree_size), timeout=self.timeout
            )
        return r.proof

    async def prove_consistency(self, from_size: int, to_size: int = 0) -> ConsistencyInfo:
        """The consistency proof from tree ``from_size`` to a checkpoint (0: the newest).

        Raises:
            RemoteError: refused (INVALID_ARGUMENT: ``from_size`` 0 or above
                ``to_size``; FAILED_PRECONDITION: no checkpoint covers it yet)
                or the server could not be reached.
        """
        with translated():
            r = await self._audit.ProveConsistency(
                pb.ProveConsistencyRequest(from_size=from_size, to_size=to_size),
                timeout=self.timeout,
            )
        return ConsistencyInfo(tuple(r.hashes), r.checkpoint)

    async def find_records(
        self, payload_sha256: str, *, granted_signs_only: bool = False
    ) -> list[RecordLeafInfo]:
        """The records of a payload digest (at most 100, oldest first), each as its leaf.

        ``granted_signs_only``: only granted ``sign`` records (refusals cannot fill the 100).

        Raises:
            RemoteError: refused (INVALID_ARGUMENT: not 64 lowercase hex digits)
                or the server could not be reached.
        """
        with translated():
            r = await self._audit.FindRecords(
                pb.FindRecordsRequest(
                    payload_sha256=payload_sha256, granted_signs_only=granted_signs_only
                ),
                timeout=self.timeout,
            )
        return [RecordLeafInfo(e.seq, e.leaf) for e in r.records]
