"""Helper threads: their OS names, and handing their results back to event loops.

The PKCS#11 thread and the audit writer finish work for many callers at once.
Waking an event loop costs a system call and a context switch, so each batch
of results wakes each waiting loop once, not once per caller.

Each helper thread also names itself for the OS, so ``top -H``, ``ps -L`` and
``/proc/PID/task/TID/comm`` tell an operator (and ``bench/profile.py``) which
thread spends the CPU.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_NAME = 15  # <linux/prctl.h>; the kernel keeps 15 bytes


def name_os_thread(name: str) -> None:
    """Name the calling thread for the OS (Linux; elsewhere, and on failure, nothing)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode("ascii")[:15], 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
        log.debug("could not name thread %r", name)


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
