"""Results computed on a helper thread, handed back to the event loops that wait for them.

The PKCS#11 thread and the audit writer finish work for many callers at once.
Waking an event loop costs a system call and a context switch, so each batch
of results wakes each waiting loop once, not once per caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


def resolve_threadsafe(outcomes: Iterable[tuple[asyncio.Future[Any], Any]]) -> None:
    """From any thread: give each future its result, or its exception if one is given.

    Futures whose loop has closed are dropped (nobody waits for them); futures
    already done (their caller was cancelled) are left alone.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for future, outcome in outcomes:
        by_loop.setdefault(future.get_loop(), []).append((future, outcome))
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, group)
        except RuntimeError:  # that loop has closed
            log.debug("dropping %d results for a closed event loop", len(group))


def _resolve(group: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in group:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
