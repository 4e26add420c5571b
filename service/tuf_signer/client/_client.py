"""The synchronous client, used by the CLI, by the Signer plugin and by repositories.

One ``Client`` owns one channel, reused by every call and safe to share between
threads. ``sign_many`` runs the asyncio client on a private event loop in a
private thread (started on first use), so synchronous code gets the same
concurrency as asyncio code.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from tuf_signer.client._aio import DEFAULT_CONNECTIONS, DEFAULT_MAX_IN_FLIGHT, AsyncClient
from tuf_signer.client._errors import translated
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
from tuf_signer.client._tls import TlsConfig, open_channel, resolve_server, tls_config
from tuf_signer.errors import RequestError
from tuf_signer.v1 import signer_pb2 as pb
from tuf_signer.v1 import signer_pb2_grpc as pb_grpc

T = TypeVar("T")


class Client:
    """Synchronous tuf-signer client: every RPC, plus ``sign_many``.

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
        connections: TCP connections ``sign_many`` spreads its batches over,
            default ``DEFAULT_CONNECTIONS`` (4; see ``AsyncClient``).

    Raises:
        ConfigError: contradictory or unreadable TLS settings, or plaintext
            to a server that is not loopback without ``insecure``.
        RequestError: both ``tls`` and ``ca``/``cert``/``key`` were given.
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
        self.connections = connections
        self._channel = open_channel(self.server, self.tls)
        self._signer = pb_grpc.SignerStub(self._channel)
        self._admin = pb_grpc.KeyAdminStub(self._channel)
        self._audit = pb_grpc.AuditLogStub(self._channel)
        self._loop_lock = threading.Lock()
        self._loop: _LoopThread | None = None

    def close(self) -> None:
        """Close the channel (and the ``sign_many`` loop, if it was started)."""
        with self._loop_lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Signer -------------------------------------------------------------------

    def sign(
        self,
        key: str,
        payload: bytes,
        role: str | None = None,
        expected_keyid: str = "",
        *,
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
    ) -> SignedResult:
        """Sign a canonical-JSON TUF ``signed`` payload.

        Args:
            key: key name.
            payload: canonical JSON of the ``signed`` object (``Metadata.signed_bytes``).
            role: role name; required for targets-type roles such as bins.
            expected_keyid: refuse unless this is the ACTIVE version's keyid.
            timeout: this call's deadline in seconds (default the client's ``timeout``).
            wait_for_ready: wait (within the deadline) for a channel that is
                reconnecting instead of failing UNAVAILABLE at once.

        Raises:
            RemoteError: the server refused or could not be reached; the
                subclass and ``code`` give the status, ``reason`` says why.
        """
        request = SignRequest(key, payload, role, expected_keyid)
        with translated():
            r = self._signer.Sign(
                request.to_pb(),
                timeout=self.timeout if timeout is None else timeout,
                wait_for_ready=wait_for_ready,
            )
        return SignedResult.from_pb(r)

    def sign_many(
        self,
        requests: Iterable[SignRequest],
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> list[SignOutcome]:
        """Sign many payloads concurrently; see ``AsyncClient.sign_many``.

        Args:
            requests: what to sign, consumed lazily on the client's private thread.
            max_in_flight: most calls open at once (at least 1).

        Returns:
            One outcome per request, in request order: a ``SignedResult``, or
            the ``RemoteError`` the server answered for that request.

        Raises:
            RequestError: ``max_in_flight`` is below 1.
            ConfigError: the client's TLS files cannot be read any more.
        """
        loop = self._loop_thread()
        return loop.run(loop.client.sign_many(requests, max_in_flight=max_in_flight))

    def _loop_thread(self) -> _LoopThread:
        with self._loop_lock:
            if self._loop is None:
                self._loop = _LoopThread(self.server, self.tls, self.timeout, self.connections)
            return self._loop

    def public_keys(self, key: str = "") -> list[KeyInfo]:
        """Every key (or only ``key``) with its versions, states and TUF key dicts.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = self._signer.GetPublicKeys(pb.GetPublicKeysRequest(key=key), timeout=self.timeout)
        return [key_info(k) for k in r.keys]

    def role_state(self, key: str = "", role: str = "") -> list[RoleStateInfo]:
        """The highest version and payload digest signed per (key, role), filtered.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = self._signer.GetRoleState(
                pb.GetRoleStateRequest(key=key, role=role), timeout=self.timeout
            )
        return [role_state_info(s) for s in r.states]

    # --- KeyAdmin -----------------------------------------------------------------

    def create_key(
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
            r = self._admin.CreateKey(request, timeout=self.timeout)
        return key_info(r.key)

    def rotate_key(self, key: str) -> KeyVersionInfo:
        """Create a new PENDING version; returns it with its TUF key dict.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = self._admin.RotateKey(pb.RotateKeyRequest(key=key), timeout=self.timeout)
        return version_info(r.version)

    def activate(self, key: str, version: int, expected_keyid: str = "") -> KeyVersionInfo:
        """Make a version ACTIVE; the previous ACTIVE one becomes RETIRED.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = self._admin.ActivateKeyVersion(
                pb.ActivateKeyVersionRequest(
                    key=key, version=version, expected_keyid=expected_keyid
                ),
                timeout=self.timeout,
            )
        return version_info(r.version)

    def retire(self, key: str, version: int) -> KeyVersionInfo:
        """Retire a version for good.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = self._admin.RetireKeyVersion(
                pb.RetireKeyVersionRequest(key=key, version=version), timeout=self.timeout
            )
        return version_info(r.version)

    def list_keys(self) -> list[KeyInfo]:
        """Every key with its policy, backend and versions.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = self._admin.ListKeys(pb.ListKeysRequest(), timeout=self.timeout)
        return [key_info(k) for k in r.keys]

    def reset_role(self, key: str, role: str, version: int, reason: str) -> RoleStateInfo:
        """Move the high-water mark of (``key``, ``role``) to ``version``, with a reason.

        The next signature of the role must be above ``version`` (0 forgets the
        role). The reset is on the audit record with the caller's identity and
        ``reason`` (required; printable, at most 1024 characters). Needs
        ``key-admin``.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = self._admin.ResetRoleState(
                pb.ResetRoleStateRequest(key=key, role=role, version=version, reason=reason),
                timeout=self.timeout,
            )
        return role_state_info(r.state)

    def reset_roles(self, key: str, version: int, reason: str) -> tuple[int, int, int]:
        """Move the mark of every role ``key`` has signed to ``version`` (a re-bootstrap).

        One transaction, one record per role, each with ``reason``. Needs ``key-admin``.

        Returns:
            How many marks moved, and the first and last record's ``seq``.

        Raises:
            RemoteError: the server refused or could not be reached.
        """
        with translated():
            r = self._admin.ResetRoleStates(
                pb.ResetRoleStatesRequest(key=key, version=version, reason=reason),
                timeout=self.timeout,
            )
        return r.roles, r.first_audit_seq, r.last_audit_seq

    def set_key_rules(self, key: str, roles: Sequence[tuple[str, int]], reason: str) -> KeyInfo:
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
            r = self._admin.SetKeyRules(request, timeout=self.timeout)
        return key_info(r.key)

    def approve_delegations(self, key: str, role: str, delegations_sha256: str, reason: str) -> int:
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
            r = self._admin.ApproveDelegations(request, timeout=self.timeout)
        return int(r.audit_seq)

    # --- AuditLog -----------------------------------------------------------------

    def audit_records(self, start_seq: int = 1, limit: int = 100) -> AuditPage:
        """Audit records from ``start_seq`` on (at most ``limit``; the server caps it at 1000).

        Page through the log by asking again from the last ``seq`` + 1. Check
        the records with the hash chain yourself: they are evidence, not the
        server's word.

        Raises:
            RemoteError: the server refused (the caller needs ``read-audit``)
                or could not be reached.
        """
        with translated():
            r = self._audit.ListRecords(
                pb.ListRecordsRequest(start_seq=start_seq, limit=limit), timeout=self.timeout
            )
        return audit_page(r)

    # --- the transparency log (README "Proofs") --------------------------------------

    def checkpoint(
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
            r = self._audit.GetCheckpoint(
                pb.GetCheckpointRequest(size=size, witnessed_by=witnessed_by, fresh=fresh),
                timeout=self.timeout,
            )
        return CheckpointInfo(r.checkpoint, r.verifier_key, r.size)

    def prove_inclusion(self, seq: int, tree_size: int = 0) -> bytes:
        """The c2sp.org/tlog-proof@v1 text of record ``seq`` in a checkpoint (0: the newest).

        Verify it with the record's ``audit export`` line and the log's
        verifier key (e.g. ``tuf_signer.audit._checkpoint.verify_tlog_proof``).

        Raises:
            RemoteError: refused (FAILED_PRECONDITION: no checkpoint covers
                ``seq`` yet, retry later; OUT_OF_RANGE: beyond the log) or the
                server could not be reached.
        """
        with translated():
            r = self._audit.ProveInclusion(
                pb.ProveInclusionRequest(seq=seq, tree_size=tree_size), timeout=self.timeout
            )
        return r.proof

    def prove_consistency(self, from_size: int, to_size: int = 0) -> ConsistencyInfo:
        """The consistency proof from tree ``from_size`` to a checkpoint (0: the newest).

        Raises:
            RemoteError: refused (INVALID_ARGUMENT: ``from_size`` 0 or above
                ``to_size``; FAILED_PRECONDITION: no checkpoint covers it yet)
                or the server could not be reached.
        """
        with translated():
            r = self._audit.ProveConsistency(
                pb.ProveConsistencyRequest(from_size=from_size, to_size=to_size),
                timeout=self.timeout,
            )
        return ConsistencyInfo(tuple(r.hashes), r.checkpoint)

    def find_records(
        self, payload_sha256: str, *, granted_signs_only: bool = False
    ) -> list[RecordLeafInfo]:
        """The records of a payload digest (at most 100, oldest first), each as its leaf.

        ``granted_signs_only``: only granted ``sign`` records (refusals cannot fill the 100).

        Raises:
            RemoteError: refused (INVALID_ARGUMENT: not 64 lowercase hex digits)
                or the server could not be reached.
        """
        with translated():
            r = self._audit.FindRecords(
                pb.FindRecordsRequest(
                    payload_sha256=payload_sha256, granted_signs_only=granted_signs_only
                ),
                timeout=self.timeout,
            )
        return [RecordLeafInfo(e.seq, e.leaf) for e in r.records]


class _LoopThread:
    """An event loop on a daemon thread, with an ``AsyncClient`` created on it.

    Raises:
        ConfigError: the TLS files cannot be read.
    """

    def __init__(self, server: str, tls: TlsConfig, timeout: float, connections: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tuf-signer-client", daemon=True
        )
        self._thread.start()
        try:
            self.client = self.run(
                _in_loop(
                    lambda: AsyncClient(server, timeout=timeout, tls=tls, connections=connections)
                )
            )
        except BaseException:
            self._stop()
            raise

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (or exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Close the client's channel, then stop the loop and its thread."""
        try:
            self.run(self.client.close())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _in_loop(factory: Callable[[], T]) -> T:
    # A grpc.aio channel binds to the loop it is created in: create it there.
    return factory()
