"""Sign and SignBatch: policy, HSM, record, in that order.

One Sign (docs/design.md §3):

1. identity (given by the caller's transport layer);
2. look up the key and its ACTIVE version;
3. parse the payload and apply the TUF policy (P3), then the high-water mark
   known to this process;
4. sign in the backend (off the event loop);
5. in one transaction: compare-and-set the role state and append the record
   (the store is authoritative: a signature that loses the race is dropped);
6. reply.

A refusal never reaches the backend, and a signature is returned only once its
record is durable.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

from tuf_signer import policy
from tuf_signer.audit import Committed, Entry
from tuf_signer.errors import (
    BackendQuotaError,
    BackendUnavailableError,
    DeadlineError,
    RequestError,
    StaleKeyVersionError,
    StoreError,
    TufSignerError,
)
from tuf_signer.keys import KeyBackend, SignatureVerifier
from tuf_signer.policy import AccessRule
from tuf_signer.server import _metrics
from tuf_signer.server._preparing import Prepared, Preparer
from tuf_signer.server._recording import Recorder, Refusal
from tuf_signer.server._registry import KeyRegistry
from tuf_signer.server._requestlog import log_batch, log_granted
from tuf_signer.server._values import SignItem, SignRequest, SignResult

# SignBatch items checked before they go to the HSM together.
_PIPELINE_CHUNK = 64

# An item of a SignBatch once signed (or refused) and before its record commits.
_Owner = Prepared | TufSignerError

# Backend errors that say nothing about the key (the HSM is away, slow or
# busy): no reason to re-read the key's state after them.
_NOT_ABOUT_THE_KEY = (BackendUnavailableError, DeadlineError, BackendQuotaError)


class Signer:
    """Sign and SignBatch over the checks, the backends and the record.

    Args:
        preparer: every check before the HSM.
        registry: keys, backends and role states as last read.
        recorder: admission and the record.
        hsm_timeout: seconds a backend call may take before the request is
            refused with DEADLINE_EXCEEDED.
        max_batch: most requests in one SignBatch.
    """

    def __init__(
        self,
        preparer: Preparer,
        registry: KeyRegistry,
        recorder: Recorder,
        hsm_timeout: float,
        max_batch: int,
    ) -> None:
        self._preparer = preparer
        self._registry = registry
        self._recorder = recorder
        self._hsm_timeout = hsm_timeout
        self._max_batch = max_batch
        # Every signature is checked against the registered public key (issue 10).
        self._verifier = SignatureVerifier()

    def _request(self, identity: str, item: SignItem, at: str = "") -> SignRequest:
        digest = hashlib.sha256(item.payload).hexdigest()
        # The refusal record carries whatever was learnt before the refusal.
        event = self._recorder.event(
            identity, "sign", at, key_name=item.key, role=item.role or "", payload_sha256=digest
        )
        return SignRequest(item, event)

    # --- Sign ----------------------------------------------------------------

    async def sign(self, identity: str, item: SignItem) -> SignResult:
        """Check, sign and record one TUF ``signed`` payload.

        Raises:
            TufSignerError: the refusal (already recorded), or ``StoreError``
                when nothing could be recorded (nothing was signed).
        """
        request = self._request(identity, item)

        # The role the checks resolved (a request may name none), for the metrics.
        roles = [item.role or ""]

        async def body(rule: AccessRule) -> SignResult | Refusal:
            result = await self._sign(request, rule)
            if isinstance(result, Refusal) and result.event.role:
                roles[0] = result.event.role
            return result

        try:
            result = await self._recorder.guarded(
                request.event, policy.SIGN, body, nbytes=len(item.payload)
            )
        except TufSignerError as e:
            self._count("Sign", [item], [e], roles)
            raise
        self._count("Sign", [item], [result], roles)
        log_granted(request.event, result.audit_seq, result.role, result.metadata_version)
        return result

    def _count(
        self,
        method: str,
        items: Sequence[SignItem],
        results: Sequence[SignResult | TufSignerError],
        roles: Sequence[str],
    ) -> None:
        """Count answered items in ``tuf_signer_sign_requests_total`` (labels bounded:
        a key not in the registry is ``other``). A refusal counts under ``roles``:
        the role its checks resolved, else the one the request named."""
        # One increment per label set, not per item: a SignBatch's items share a few.
        counts: dict[tuple[str, str, str], int] = {}
        for item, result, role in zip(items, results, roles, strict=True):
            key = item.key if self._registry.knows(item.key) else _metrics.OTHER
            if isinstance(result, SignResult):
                labels = (key, _metrics.role_class(result.role), "OK")
            else:
                labels = (key, _metrics.role_class(role), result.code)
            counts[labels] = counts.get(labels, 0) + 1
        for (key, role_class, status), n in counts.items():
            _metrics.count_sign(method, key, role_class, status, n)

    async def _sign(self, request: SignRequest, rule: AccessRule) -> SignResult | Refusal:
        pinned = bool(request.item.expected_keyid)
        for attempt in (1, 2):
            with _metrics.timed("policy"):
                prep = await self._preparer.prepare(request, rule, lone=True)
            if isinstance(prep, Refusal):
                return prep
            if prep.replay is not None:
                committed = await self._recorder.commit(prep.entry(prep.replay.signature))
                return self._replayed(prep, committed)
            signed = await self._recorder.before_record(
                prep.event, self._backend_sign(prep.backend, [prep])
            )
            if isinstance(signed, Refusal):
                return signed
            (sig,) = signed
            if isinstance(sig, TufSignerError):
                # Another worker may have retired this version meanwhile (and
                # disabled it in the HSM): if a newer version is ACTIVE now,
                # sign again with it, unless the caller pinned this one; a
                # pinned request is refused for the key's state, not INTERNAL.
                stale = await self._recorder.before_record(prep.event, self._stale(prep, sig))
                if isinstance(stale, Refusal):
                    return stale
                if stale is None:
                    return Refusal(sig, prep.event)
                if attempt == 1 and not pinned:
                    continue
                return Refusal(stale, prep.event)
            committed = await self._recorder.commit(prep.entry(sig.hex()))
            outcome = await self._recorder.outcome(prep.event, self._conclude(prep, committed))
            # Another process activated a new version after our cache last
            # looked: that attempt is refused on the record; sign again with
            # the version now ACTIVE (unless the caller pinned the old one).
            if (
                isinstance(outcome, Refusal)
                and outcome.recorded
                and isinstance(outcome.error, StaleKeyVersionError)
                and attempt == 1
                and not pinned
            ):
                continue
            return outcome
        raise AssertionError("unreachable")

    async def _backend_sign(
        self, backend: KeyBackend, preps: Sequence[Prepared]
    ) -> list[bytes | TufSignerError]:
        """Sign prepared requests in one backend call, bounded by the HSM timeout."""
        digests = [bytes.fromhex(p.state.payload_sha256) for p in preps]
        try:
            async with asyncio.timeout(self._hsm_timeout):
                with _metrics.timed("hsm"):
                    results = await backend.sign_batch(
                        [(p.handle, p.algorithm, p.payload) for p in preps], digests
                    )
        except TimeoutError:
            error = DeadlineError(
                f"backend {backend.name!r} did not sign within {self._hsm_timeout:g} s"
            )
            return [error] * len(preps)
        return [
            self._verified(backend, p, r, d)
            for p, r, d in zip(preps, results, digests, strict=True)
        ]

    async def _stale(self, prep: Prepared, error: TufSignerError) -> StaleKeyVersionError | None:
        """Whether the backend refused ``prep`` because its version was retired elsewhere.

        Returns:
            The key-state refusal to answer instead of ``error``, or None when
            ``error`` stands (the version is still ACTIVE, or the backend is
            away rather than refusing this key).

        Raises:
            StoreError: the key could not be re-read.
        """
        if isinstance(error, _NOT_ABOUT_THE_KEY):
            return None
        return await self._registry.unusable(prep.state.key_name, prep.state.key_version)

    def _verified(
        self, backend: KeyBackend, prep: Prepared, result: bytes | TufSignerError, digest: bytes
    ) -> bytes | TufSignerError:
        """The signature if it verifies against the registered public key, else the error.

        Every backend's signature passes here before it is recorded or
        returned (issue 10, finding 10): a mismatch is UNAVAILABLE, recorded
        as a refusal, logged at ERROR, and the role state does not move.
        """
        if isinstance(result, TufSignerError):
            return result
        try:
            self._verifier.verify(
                backend.name,
                prep.version,
                prep.algorithm,
                result,
                prep.payload,
                digest,
            )
        except TufSignerError as e:
            return e
        return result

    def _replayed(self, prep: Prepared, committed: Committed) -> SignResult | Refusal:
        """The reply for a committed replay, or the store's (recorded) refusal."""
        self._registry.note(committed)
        if committed.error is not None:
            return Refusal(committed.error, prep.event, recorded=True, seq=committed.seq)
        assert prep.replay is not None
        return prep.result(committed.current or prep.replay, committed, replayed=True)

    async def _conclude(self, prep: Prepared, committed: Committed) -> SignResult | Refusal:
        """The reply for a committed grant, or the store's (recorded) refusal.

        Raises:
            StoreError: the key could not be re-read after a stale version.
        """
        self._registry.note(committed)
        if committed.error is not None:
            # Lost a race (another process or request advanced the role first,
            # or the version was retired meanwhile): the signature is dropped.
            if isinstance(committed.error, StaleKeyVersionError):
                await self._registry.refresh(prep.state.key_name)
            return Refusal(committed.error, prep.event, recorded=True, seq=committed.seq)
        final = committed.current or prep.state
        return prep.result(final, committed, committed.replayed)

    # --- SignBatch -------------------------------------------------------------

    async def sign_batch(
        self, identity: str, items: Sequence[SignItem]
    ) -> list[SignResult | TufSignerError]:
        """Sign many payloads: per-item policy and results, one audit transaction.

        Each item is checked and recorded exactly as a lone Sign would be; a
        refused item never stops the others. All the batch's records (grants
        and refusals) commit together: one transaction, one fsync.

        Raises:
            TufSignerError: the whole call was refused (recorded once): not
                admitted, empty or too large; or ``StoreError`` when nothing
                could be recorded (no signature is returned).
        """
        batch = self._recorder.event(identity, "sign-batch", detail={"items": len(items)})
        # Each item's role as its checks resolved it (a request may name none), for the metrics.
        roles = [item.role or "" for item in items]

        async def body(rule: AccessRule) -> list[SignResult | TufSignerError] | Refusal:
            if not items:
                raise RequestError("SignBatch needs at least one request")
            if len(items) > self._max_batch:
                raise RequestError(
                    f"SignBatch takes at most {self._max_batch} requests, got {len(items)}"
                )
            # A cancellation before the items' records is recorded on the batch.
            signed = await self._recorder.before_record(
                batch, self._sign_items(identity, rule, items, batch.time)
            )
            if isinstance(signed, Refusal):
                return signed
            owners, entries = signed
            for i, entry in enumerate(entries):
                roles[i] = entry.event.role or roles[i]
            committed = await self._recorder.commit_many(entries)
            answers = [
                await self._settle(owner, done)
                for owner, done in zip(owners, committed, strict=True)
            ]
            log_batch(batch, entries, answers, [c.seq for c in committed])
            return answers

        nbytes = sum(len(item.payload) for item in items)
        try:
            results = await self._recorder.guarded(
                batch, policy.SIGN, body, cost=len(items), nbytes=nbytes
            )
        except TufSignerError as e:
            self._count("SignBatch", items, [e] * len(items), roles)
            raise
        self._count("SignBatch", items, results, roles)
        return results

    async def _sign_items(
        self, identity: str, rule: AccessRule, items: Sequence[SignItem], at: str
    ) -> tuple[list[_Owner], list[Entry]]:
        """Check and sign every item; each one's record (as of ``at``), in request order."""
        done: list[tuple[int, _Owner, Entry]] = []
        # Pipeline: while the HSM signs one chunk (C_Sign releases the GIL),
        # this thread checks the next; each chunk goes to its backend(s) at once.
        signing: list[tuple[list[int], list[Prepared], asyncio.Task[list[bytes | TufSignerError]]]]
        signing = []
        pending: dict[str, list[tuple[int, Prepared]]] = {}

        def flush() -> None:
            for group in pending.values():
                preps = [p for _, p in group]
                task = asyncio.ensure_future(self._backend_sign(preps[0].backend, preps))
                signing.append(([i for i, _ in group], preps, task))
            pending.clear()

        queued = 0  # items in ``pending``
        try:
            for i, item in enumerate(items):
                with _metrics.timed("policy"):
                    prep = await self._preparer.prepare(
                        self._request(identity, item, at), rule, lone=False
                    )
                if isinstance(prep, Refusal):
                    done.append((i, prep.error, prep.entry()))
                    continue
                if prep.replay is not None:
                    done.append((i, prep, prep.entry(prep.replay.signature)))
                    continue
                pending.setdefault(prep.backend.name, []).append((i, prep))
                queued += 1
                if queued >= _PIPELINE_CHUNK:
                    flush()
                    queued = 0
                    await asyncio.sleep(0)  # let the chunk reach the HSM thread now
            flush()
            stale: dict[tuple[str, int], StaleKeyVersionError | None] = {}
            for indices, preps, task in signing:
                signatures = await task
                for i, prep, sig in zip(indices, preps, signatures, strict=True):
                    if isinstance(sig, TufSignerError):
                        refusal = await self._batch_refusal(prep, sig, stale)
                        done.append((i, refusal, Refusal(refusal, prep.event).entry()))
                    else:
                        done.append((i, prep, prep.entry(sig.hex())))
        except BaseException:
            # A cancelled (or failed) batch leaves no signing behind it: the
            # payloads are released with its bytes, and the HSM is not kept
            # busy for a caller that has gone.
            for _, _, task in signing:
                task.cancel()
            raise
        # Record in request order: the order the store applies them in, and
        # the order an auditor reads them in.
        done.sort(key=lambda d: d[0])
        return [owner for _, owner, _ in done], [entry for _, _, entry in done]

    async def _batch_refusal(
        self,
        prep: Prepared,
        error: TufSignerError,
        seen: dict[tuple[str, int], StaleKeyVersionError | None],
    ) -> TufSignerError:
        """A batch item's backend refusal, or its key's state when the version was
        retired elsewhere (one re-read per key version and batch; the client
        sends the item again and gets the version ACTIVE now)."""
        if isinstance(error, _NOT_ABOUT_THE_KEY):
            return error
        version = (prep.state.key_name, prep.state.key_version)
        if version not in seen:
            try:
                seen[version] = await self._stale(prep, error)
            except StoreError:
                seen[version] = None  # the backend's error stands
        return seen[version] or error

    async def _settle(self, owner: _Owner, committed: Committed) -> SignResult | TufSignerError:
        """One item's reply once the batch's records are committed."""
        if isinstance(owner, TufSignerError):
            return owner
        if owner.replay is not None:
            outcome = self._replayed(owner, committed)
        else:
            outcome = await self._conclude(owner, committed)
        return outcome.error if isinstance(outcome, Refusal) else outcome
