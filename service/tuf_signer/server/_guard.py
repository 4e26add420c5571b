"""Admission: authorisation (P2) and per-identity abuse limits, before any HSM work.

Each call is admitted under its caller's identity and operation: the access
policy must allow it, the identity must have a free concurrency slot, and its
token bucket must hold a token. A compromised backend can then spend at most
its own share of the HSM, while other identities keep working.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tuf_signer.config import LimitsConfig
from tuf_signer.errors import ResourceExhaustedError
from tuf_signer.policy import UNRESTRICTED, AccessPolicy, AccessRule, authorize


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    in_flight: int = 0


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

    def update(self, policy: AccessPolicy, limits: LimitsConfig) -> None:
        """Put a new, already validated policy and limits in force."""
        self._policy = policy
        self._limits = limits

    @contextmanager
    def admit(self, identity: str, operation: str, cost: int = 1) -> Iterator[AccessRule]:
        """Admit one call for its duration; yields the rule that allows it.

        ``cost`` is the number of rate tokens the call takes (one per item of
        a SignBatch); a call costlier than the burst may still go when the
        bucket is full.

        Raises:
            UnauthenticatedError: no identity.
            PermissionError_: the policy does not allow the call.
            ResourceExhaustedError: the identity is over its concurrency or rate limit.
        """
        if self._unrestricted:
            yield UNRESTRICTED
            return
        rule = authorize(self._policy, identity, operation)
        max_concurrent = rule.max_concurrent or self._limits.max_concurrent
        rate = rule.rate or self._limits.rate
        burst = rule.burst or self._limits.burst
        now = self._clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = self._buckets[identity] = _Bucket(tokens=float(burst), stamp=now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.in_flight >= max_concurrent:
            raise ResourceExhaustedError(
                f"identity {identity!r} already has {bucket.in_flight} calls in flight "
                f"(limit {max_concurrent})"
            )
        need = min(float(cost), float(burst))
        if bucket.tokens < need:
            raise ResourceExhaustedError(
                f"identity {identity!r} is over its rate limit ({rate:g} calls/s, burst {burst})"
            )
        bucket.tokens -= need
        bucket.in_flight += 1
        try:
            yield rule
        finally:
            bucket.in_flight -= 1
