"""Pacing a token's recovery, remembering keys found missing and PINs refused.

``TokenConn`` (``_session``) decides *what* to do when a token fails; these
small records decide *when*: how soon to try recovering again while the
token is down (``Recovery``), how soon a module may be re-initialised again
(``Reinits``: that logs every token on it out), for how long a key that was
still missing after a refresh of the object view is believed missing
(``MissingKeys``), and which PINs a token refused (``RefusedPins``: never
offered again, since real HSMs lock the user PIN after a few failed logins).
All run on the PKCS#11 thread.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from typing import Final

from tuf_signer.keys._backoff import Backoff

__all__ = [
    "MISSING_HOLD",
    "RECOVERY_BACKOFF",
    "REINIT_INTERVAL",
    "MissingKeys",
    "Recovery",
    "RefusedPins",
    "Reinits",
]

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

# A module is re-initialised (C_Finalize, C_Initialize) at most once per this
# many seconds, whatever asks for it (a token that is away, any number of
# missing keys, on any token): each one closes every session on the module,
# so every healthy token on it logs in again.
REINIT_INTERVAL: Final = 1.0


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

    def failed(self, reason: str, *, quiet: bool = False) -> None:
        """Count a failed attempt and schedule the next one (``quiet``: log at debug)."""
        now = self._clock()
        self._failures += 1
        # The first failure may be a blip (a session the token dropped, a PIN
        # source that hiccuped): the next call tries again at once. From the
        # second on, attempts are paced. (A refused PIN is never offered again:
        # ``RefusedPins``.)
        delay = RECOVERY_BACKOFF.delay(self._failures - 1) if self._failures > 1 else 0.0
        self._next_attempt = now + delay
        if self._down_since is None:
            self._down_since = now
        self.reason = reason
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
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


class Reinits:
    """When each module (by real path) was last re-initialised: one per ``REINIT_INTERVAL``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}

    def wait(self, module: str) -> float:
        """0 if ``module`` may be re-initialised now (counted as done now); else seconds to wait."""
        now = self._clock()
        last = self._last.get(module)
        if last is not None and now - last < REINIT_INTERVAL:
            return last + REINIT_INTERVAL - now
        self._last[module] = now
        return 0.0


class RefusedPins:
    """PINs a token refused, kept only as digests keyed by a random in-memory key."""

    _LIMIT = 16

    def __init__(self) -> None:
        self._key = os.urandom(32)
        self._macs: set[bytes] = set()

    def _mac(self, pin: str) -> bytes:
        return hmac.new(self._key, pin.encode("utf-8"), hashlib.sha256).digest()

    def __contains__(self, pin: str) -> bool:
        mac = self._mac(pin)
        return any(hmac.compare_digest(mac, m) for m in self._macs)

    def add(self, pin: str) -> None:
        if len(self._macs) >= self._LIMIT:
            self._macs.clear()
        self._macs.add(self._mac(pin))

    def clear(self) -> None:
        self._macs.clear()
