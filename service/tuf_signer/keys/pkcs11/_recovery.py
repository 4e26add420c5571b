"""Pacing a token's recovery, and remembering keys found missing.

``TokenConn`` (``_session``) decides *what* to do when a token fails; these
two small records decide *when*: how soon to try recovering again while the
token is down (``Recovery``), and for how long a key that was still missing
after a refresh of the object view is believed missing (``MissingKeys``).
Both run on the PKCS#11 thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from tuf_signer.keys._backoff import Backoff

__all__ = ["MISSING_HOLD", "RECOVERY_BACKOFF", "MissingKeys", "Recovery"]

log = logging.getLogger(__name__)

# Pacing of recovery attempts while a token is away (after the first retry,
# which is immediate): at most 0.75 s apart (0.5 s plus jitter), so a token
# that is back is in use again within about one second, and a dead one costs
# at most a few attempts a second.
RECOVERY_BACKOFF: Final = Backoff(first=0.05, maximum=0.5)

# A key still missing after a refresh of the object view is believed missing
# for this long (seconds): a store that names a deleted key must not make
# every request re-initialise the module.
MISSING_HOLD: Final = 1.0
_MISSING_LIMIT = 1024  # remembered misses, at most


class Recovery:
    """Whether a token is down, since when and why, and when to try again.

    Args:
        label: the token's label, for the log.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(self, label: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._label = label
        self._clock = clock
        self._failures = 0  # failed attempts in a row
        self._next_attempt = 0.0
        self._down_since: float | None = None
        self.reason = ""  # why the last attempt failed

    def due(self) -> bool:
        """Whether a recovery attempt may run now (the backoff has run out)."""
        return self._clock() >= self._next_attempt

    def failed(self, reason: str) -> None:
        """Count a failed attempt and schedule the next one."""
        now = self._clock()
        self._failures += 1
        # The first failure may be a blip (a session the token dropped, a PIN
        # source that hiccuped): the next call tries again at once. From the
        # second on, attempts are paced, which also keeps a wrong PIN from
        # spending the token's login tries at the rate of the traffic.
        delay = RECOVERY_BACKOFF.delay(self._failures - 1) if self._failures > 1 else 0.0
        self._next_attempt = now + delay
        if self._down_since is None:
            self._down_since = now
        self.reason = reason
        log.warning(
            "PKCS#11 token %r unavailable: %s; attempt %d failed, next in %.2fs",
            self._label,
            reason,
            self._failures,
            delay,
        )

    def succeeded(self, how: str) -> None:
        """The token is usable again: log how long it was down, and reset."""
        if self._down_since is not None:
            log.warning(
                "PKCS#11 token %r is back after %.2fs (%s)",
                self._label,
                self._clock() - self._down_since,
                how,
            )
        else:
            log.info("PKCS#11 token %r: %s", self._label, how)
        self._failures, self._next_attempt, self._down_since = 0, 0.0, None


class MissingKeys:
    """CKA_IDs found missing after a refresh, believed missing for ``MISSING_HOLD`` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[bytes, float] = {}

    def __contains__(self, key_id: bytes) -> bool:
        until = self._until.get(key_id)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._until[key_id]
        return False

    def add(self, key_id: bytes) -> None:
        if len(self._until) >= _MISSING_LIMIT:
            self._until.clear()
        self._until[key_id] = self._clock() + MISSING_HOLD
