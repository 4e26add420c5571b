"""Retrying a Sign that failed for a passing reason, within a time budget.

A Sign is safe to repeat: the server answers an identical payload with the
same signature and records no second grant (docs/design.md P3), so a retry
after a lost answer cannot make two signatures for one version. Retried:

- ``UNAVAILABLE``: the server restarted, its HSM/KMS or store is failing,
  its witnesses are behind; nothing was signed;
- ``DEADLINE_EXCEEDED``: no answer in time (the first try may have signed;
  the retry then gets that signature back);
- ``ABORTED``: the server asks for the request again (a replay raced a write).

Every other status is the server's verdict on the payload and is raised at
once. Waits grow from ``initial_backoff`` by ``multiplier`` up to
``max_backoff`` (each drawn between half and all of that, so that a
repository's signing threads do not retry in step), and no try starts or
runs past ``budget`` seconds after the first began.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tuf_signer.client._errors import remote_error
from tuf_signer.errors import RemoteError, RequestError

T = TypeVar("T")

RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"})


@dataclass(frozen=True)
class RetryPolicy:
    """How long a Sign keeps trying. The defaults ride out a server restart.

    Attributes:
        budget: seconds from the first try after which no try starts or runs on.
        attempt_timeout: seconds, the deadline of one try (capped by what is
            left of ``budget`` and by the client's own ``timeout``).
        initial_backoff: seconds, the longest wait before the second try.
        max_backoff: seconds, the longest wait between two tries.
        multiplier: growth of the wait from one try to the next.

    Raises:
        RequestError: a negative or zero time, or a multiplier below 1.
    """

    budget: float = 30.0  # seconds
    attempt_timeout: float = 10.0  # seconds
    initial_backoff: float = 0.1  # seconds
    max_backoff: float = 2.0  # seconds
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        for name in ("budget", "attempt_timeout", "initial_backoff", "max_backoff"):
            if not getattr(self, name) > 0:
                raise RequestError(f"retry {name} must be above 0 seconds")
        if not self.multiplier >= 1:
            raise RequestError("retry multiplier must be at least 1")

    def call(
        self,
        attempt: Callable[[float, int], T],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """Run ``attempt(timeout, number)`` until it returns, fails for good, or time is up.

        Args:
            attempt: one try; gets its deadline in seconds and its number (1, 2, ...).
            clock: monotonic seconds (injected by tests).
            sleep: waits (injected by tests).

        Raises:
            RemoteError: a status that is not retried, at once; or, when the
                budget is spent, the first retried one, its reason saying how
                many tries were made over how long.
        """
        start = clock()
        backoff = self.initial_backoff
        number = 1
        first: RemoteError | None = None
        while True:
            left = self.budget - (clock() - start)
            try:
                return attempt(min(self.attempt_timeout, left), number)
            except RemoteError as e:
                if e.code not in RETRYABLE:
                    raise
                first = first or e
                wait = backoff * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not secrets
                elapsed = clock() - start
                if elapsed + wait >= self.budget:
                    # The first failure says why (a retry that waits for a reconnecting
                    # channel ends DEADLINE_EXCEEDED however it began); the last is noted.
                    last = "" if e.code == first.code else f"; the last ended {e.code}"
                    raise remote_error(
                        first.code,
                        f"{first.reason} (gave up after {number} tries in {elapsed:.1f} s{last}; "
                        f"retry budget {self.budget:g} s)",
                    ) from e
            sleep(wait)
            backoff = min(backoff * self.multiplier, self.max_backoff)
            number += 1


DEFAULT_RETRY = RetryPolicy()
