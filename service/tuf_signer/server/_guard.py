"""Admission: authorisation (P2) and per-identity abuse limits, before any HSM work.

Each call is admitted under its caller's identity and operation: the identity
must have an access rule, a free concurrency slot, a call token and enough byte
tokens for what it sent, and then the rule must allow the operation. A
compromised backend can then spend at most its own share of the HSM, the
payload checker and the audit store, while other identities keep working.

Refusals of callers that have no identity, no rule, or are over a limit are
raised as ``UnauthenticatedError``, ``UnknownIdentityError`` or ``LimitError``:
the service counts those instead of recording each one (``RefusalTally``), so
that a flood costs one record per identity per interval, not one fsync per call.

One limit is the process's, not an identity's: the payload bytes of every call
being worked on at once (``limits.max_inflight_bytes``). Decoding, checking and
signing a batch costs a few times its size in memory, so without it four
concurrent 64 MiB SignBatch calls took a worker to 1 GiB (with the cap and
the 16 MiB default message size, four max-size calls peak near 300 MiB). A call that would pass
the cap is refused (RESOURCE_EXHAUSTED, counted like the others) and its bytes,
like those of every admitted call, are given back when the call ends, however
it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tuf_signer.config import LimitsConfig, ServerConfig
from tuf_signer.errors import LimitError, PermissionError_, UnknownIdentityError, shown
from tuf_signer.policy import UNRESTRICTED, AccessPolicy, AccessRule, authorize


@dataclass
class _Bucket:
    tokens: float  # calls
    stamp: float
    bytes: float  # request bytes
    check_seconds: float  # CPU seconds of off-loop payload checks
    rate: float  # the call rate and burst in force when last admitted
    burst: int
    in_flight: int = 0


def _most_streams(cfg: ServerConfig) -> int:
    """Streams all connections of one worker may have open at once."""
    return cfg.max_connections * cfg.max_streams_per_connection


class Guard:
    """Holds the access policy and limits; swapped atomically on reload.

    Args:
        policy: the access rules (deny by default).
        limits: the default per-identity limits.
        clock: monotonic seconds (tests inject their own).
    """

    def __init__(
        self,
        policy: AccessPolicy,
        limits: LimitsConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._limits = limits
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._unrestricted = False
        self._inflight_bytes = 0  # payload bytes of the calls admitted and not yet ended

    @classmethod
    def unrestricted(cls) -> Guard:
        """Everything allowed, no limits: for in-process administration only."""
        guard = cls(AccessPolicy(), LimitsConfig())
        guard._unrestricted = True
        return guard

    @property
    def policy(self) -> AccessPolicy:
        """The policy in force."""
        return self._policy

    @property
    def inflight_bytes(self) -> int:
        """Payload bytes of the calls admitted and not yet ended, in this process."""
        return self._inflight_bytes

    @staticmethod
    def transport_options(cfg: ServerConfig) -> list[tuple[str, int]]:
        """gRPC core's connection and stream limits for ``cfg`` (server channel arguments).

        Each was checked against grpcio 1.85 with a hand-written HTTP/2 client
        (``tests/server/test_resources.py``). Neither the idle timeout (it never
        closes a connection that holds streams) nor
        ``grpc.server_max_unrequested_time_in_server`` (left out: ``grpc.aio``
        picks every call up at once, so it never fires) reaps a stream that
        never sends its message; the connection age and its grace do.
        """
        ms = 1000
        return [
            # Past it, gRPC closes a new connection right after accepting it.
            ("grpc.max_allowed_incoming_connections", cfg.max_connections),
            # Advertised in SETTINGS; a stream past it gets RST_STREAM(REFUSED_STREAM).
            ("grpc.max_concurrent_streams", cfg.max_streams_per_connection),
            # A stream the client resets keeps its place in that count until
            # gRPC has freed the call ("rapid reset", CVE-2023-44487). Without
            # it one connection can queue calls for the event loop without end.
            # On by default in grpcio 1.85 (off, 10 flooding connections of 100
            # streams cancelled 97 of 100 calls); set so a new default cannot undo it.
            ("grpc.http.overload_protection", 1),
            # gRPC cancels calls queued for the event loop past this (its default
            # is 1000): a reset flood over a few connections then cancelled other
            # clients' calls. With the line above no more calls can be queued
            # than every connection's streams, so none is ever cancelled; a call
            # waits behind at most that many (README "Resource limits").
            ("grpc.server.max_pending_requests", _most_streams(cfg)),
            ("grpc.server.max_pending_requests_hard_limit", _most_streams(cfg)),
            # GOAWAY at the age (jittered by gRPC), then close what is left after
            # one call deadline: a call admitted just before GOAWAY can still finish.
            ("grpc.max_connection_age_ms", int(cfg.max_connection_age_seconds * ms)),
            ("grpc.max_connection_age_grace_ms", int(cfg.call_deadline * ms)),
            ("grpc.max_connection_idle_ms", int(cfg.idle_timeout_seconds * ms)),
            ("grpc.keepalive_time_ms", int(cfg.keepalive_seconds * ms)),
            ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_seconds * ms)),
            # A client pinging more often than gRPC allows is closed after two strikes.
            ("grpc.http2.max_ping_strikes", 2),
            # Soft and hard limits alike: no header list above it is ever accepted.
            ("grpc.max_metadata_size", cfg.max_header_bytes),
            ("grpc.absolute_max_metadata_size", cfg.max_header_bytes),
        ]

    def update(self, policy: AccessPolicy, limits: LimitsConfig) -> None:
        """Put a new, already validated policy and limits in force."""
        self._policy = policy
        self._limits = limits

    def knows(self, identity: str) -> bool:
        """Whether ``identity`` has an access rule (or admission is unrestricted)."""
        return self._unrestricted or (bool(identity) and identity in self._policy.rules)

    def check_known(self, identity: str, operation: str = "") -> None:
        """Refuse a caller that has no identity or no access rule at all.

        Raises:
            UnauthenticatedError: no identity.
            UnknownIdentityError: the identity has no access rule.
        """
        if self._unrestricted or (identity and identity in self._policy.rules):
            return
        try:
            authorize(self._policy, identity, operation)
        except PermissionError_ as e:  # UnauthenticatedError passes as it is
            raise UnknownIdentityError(e.reason) from None
        raise UnknownIdentityError(f"identity {shown(identity)} has no access rule")

    @contextmanager
    def admit(
        self, identity: str, operation: str, cost: int = 1, nbytes: int = 0
    ) -> Iterator[AccessRule]:
        """Admit one call for its duration; yields the rule that allows it.

        ``cost`` is the number of call tokens the call takes (one per item of
        a SignBatch) and ``nbytes`` the byte tokens (its payloads); a call
        costlier than the burst may still go when the bucket is full.

        Raises:
            UnauthenticatedError: no identity.
            UnknownIdentityError: the identity has no access rule.
            LimitError: the identity is over its concurrency, call or byte limit,
                or the call's bytes would pass the process's in-flight cap.
            PermissionError_: the identity's rule does not allow the operation.
        """
        if self._unrestricted:
            yield UNRESTRICTED
            return
        self.check_known(identity, operation)
        rule = self._policy.rules[identity]
        bucket = self._refill(identity, rule)
        limits = self._limits
        max_concurrent = rule.max_concurrent or limits.max_concurrent
        rate = rule.rate or limits.rate
        burst = rule.burst or limits.burst
        if bucket.in_flight >= max_concurrent:
            raise LimitError(
                f"identity {shown(identity)} already has {bucket.in_flight} calls in flight "
                f"(limit {max_concurrent})"
            )
        cap = limits.max_inflight_bytes
        if nbytes and self._inflight_bytes + nbytes > cap:
            # Not this caller's fault alone, so checked before its tokens are spent.
            raise LimitError(
                f"the server has {self._inflight_bytes} payload bytes in flight; this "
                f"call's {nbytes} would pass limits.max_inflight_bytes ({cap}): retry later"
            )
        need = min(float(cost), float(burst))
        if bucket.tokens < need:
            raise LimitError(
                f"identity {shown(identity)} is over its rate limit "
                f"({rate:g} calls/s, burst {burst})"
            )
        need_bytes = min(float(nbytes), float(limits.bytes_burst))
        if bucket.bytes < need_bytes:
            raise LimitError(
                f"identity {shown(identity)} is over its byte rate limit "
                f"({limits.bytes_rate:g} bytes/s, burst {limits.bytes_burst})"
            )
        # Tokens are spent before the operation check: a known identity that
        # floods a method it may not call runs out of them, and is then
        # throttled (and counted) like any other.
        bucket.tokens -= need
        bucket.bytes -= need_bytes
        rule = authorize(self._policy, identity, operation)
        bucket.in_flight += 1
        self._inflight_bytes += nbytes
        try:
            yield rule
        finally:  # success, refusal or cancellation alike
            bucket.in_flight -= 1
            self._inflight_bytes -= nbytes

    def charge_call(self, identity: str) -> None:
        """Take one call token from a known identity for a call refused before admission
        (a message that does not decode): such calls are throttled too.

        Raises:
            LimitError: the identity is over its rate limit.
        """
        rule = self._policy.rules.get(identity)
        if self._unrestricted or rule is None:
            return
        bucket = self._refill(identity, rule)
        if bucket.tokens < 1:
            raise LimitError(
                f"identity {shown(identity)} is over its rate limit "
                f"({bucket.rate:g} calls/s, burst {bucket.burst})"
            )
        bucket.tokens -= 1

    def reserve_check(self, identity: str, seconds: float) -> None:
        """Reserve ``seconds`` (the check's time budget) of the identity's CPU budget
        for one off-loop payload check, before it is queued; ``settle_check``
        refunds what it did not use. Reserving the worst case up front keeps
        concurrent checks of one identity within its budget.

        Raises:
            LimitError: the identity's check budget is spent.
        """
        if self._unrestricted:
            return
        bucket = self._refill(identity, None)
        if bucket.check_seconds <= 0:
            limits = self._limits
            raise LimitError(
                f"identity {shown(identity)} spent its payload-check budget "
                f"({limits.check_cpu_rate:g} CPU s/s, burst {limits.check_cpu_burst:g} s)"
            )
        bucket.check_seconds -= seconds

    def settle_check(self, identity: str, reserved: float, used: float) -> None:
        """Refund the part of a reservation that a check did not use."""
        bucket = self._buckets.get(identity)
        if bucket is not None and not self._unrestricted:
            bucket.check_seconds += max(0.0, reserved - used)

    def _refill(self, identity: str, rule: AccessRule | None) -> _Bucket:
        """The identity's bucket, refilled up to now (under ``rule``'s rates if given)."""
        limits = self._limits
        now = self._clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = self._buckets[identity] = _Bucket(
                tokens=0.0,
                stamp=now,
                bytes=float(limits.bytes_burst),
                check_seconds=limits.check_cpu_burst,
                rate=limits.rate,
                burst=limits.burst,
            )
            rule_burst = (rule.burst if rule is not None else None) or limits.burst
            bucket.tokens = float(rule_burst)
        if rule is not None:
            bucket.rate = rule.rate or limits.rate
            bucket.burst = rule.burst or limits.burst
        elapsed = now - bucket.stamp
        bucket.stamp = now
        bucket.tokens = min(float(bucket.burst), bucket.tokens + elapsed * bucket.rate)
        bucket.bytes = min(float(limits.bytes_burst), bucket.bytes + elapsed * limits.bytes_rate)
        bucket.check_seconds = min(
            limits.check_cpu_burst, bucket.check_seconds + elapsed * limits.check_cpu_rate
        )
        return bucket
