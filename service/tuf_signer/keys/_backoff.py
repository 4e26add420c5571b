"""Exponential backoff with jitter, one policy for every backend.

Used between PKCS#11 startup attempts (processes racing to open one token,
docs/design.md §4), between Cloud KMS retries of UNAVAILABLE / DEADLINE_EXCEEDED, and
(without jitter) while polling KMS for a key being generated.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delays that double from ``first`` up to ``maximum``, each scaled by a random factor.

    Jitter spreads out processes (or replicas) that failed together, so that
    they do not retry in lockstep.

    Attributes:
        first: delay after the first failed attempt, in seconds.
        maximum: largest delay before jitter, in seconds.
        jitter: each delay is multiplied by a factor drawn from
            ``[1 - jitter, 1 + jitter]``; 0 for exact delays.
        uniform: draws that factor, ``random.uniform(low, high)`` unless a
            test injects another source.
    """

    first: float = 0.05  # seconds
    maximum: float = 1.0  # seconds
    jitter: float = 0.5
    uniform: Callable[[float, float], float] = random.uniform  # not for security

    def delay(self, attempt: int) -> float:
        """The delay after failed attempt number ``attempt`` (counting from 1), in seconds."""
        delay = min(self.first * 2.0 ** (attempt - 1), self.maximum)
        if self.jitter:
            delay *= self.uniform(1 - self.jitter, 1 + self.jitter)
        return delay
