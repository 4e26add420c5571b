"""The one OS thread that owns PKCS#11 in this process, and the hand-off to it.

python-pkcs11 0.10.1 calls ``C_Initialize(NULL)``, which tells the module that
the application will not call it from several threads at once (PKCS#11 v2.40
§5.4, CKF_OS_LOCKING_OK unset). SoftHSM then switches its internal locking
off, and two threads in PKCS#11 at once crash the process, even on separate
sessions. So every PKCS#11 call in this process (every ``Pkcs11Backend``,
every token, the library load itself) runs on one dedicated thread;
coroutines hand work to it with ``run``. State touched only on that thread
(loaded libraries, open token sessions, key caches) needs no locks.
"""

from __future__ import annotations

import asyncio
import os
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tuf_signer._handoff import name_os_thread
from tuf_signer.errors import BackendError

__all__ = ["confined", "drop_frames", "executor", "require_pkcs11_thread", "run"]

_T = TypeVar("_T")

_EXECUTOR: ThreadPoolExecutor | None = None
_THREAD_ID: int | None = None
_CREATION = threading.Lock()


def _mark_pkcs11_thread() -> None:
    global _THREAD_ID
    _THREAD_ID = threading.get_ident()
    name_os_thread("tuf-pkcs11")


def executor() -> ThreadPoolExecutor:
    """Return the process-wide single PKCS#11 worker, creating it on first use."""
    global _EXECUTOR
    with _CREATION:
        if _EXECUTOR is None:
            _EXECUTOR = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="pkcs11", initializer=_mark_pkcs11_thread
            )
        return _EXECUTOR


def _after_fork_in_child() -> None:
    # The worker thread does not survive fork(); without this, every call in
    # the child would wait forever for it.
    global _EXECUTOR, _THREAD_ID, _CREATION
    _EXECUTOR, _THREAD_ID = None, None
    _CREATION = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def require_pkcs11_thread() -> None:
    """Refuse to touch PKCS#11 state from any other thread (it would crash SoftHSM).

    Raises:
        BackendError: called from another thread.
    """
    if _THREAD_ID is None or threading.get_ident() != _THREAD_ID:
        raise BackendError("internal error: PKCS#11 used outside the PKCS#11 thread")


async def run(fn: Callable[[], _T]) -> _T:
    """Run ``fn`` on the PKCS#11 thread and await its result.

    Cancelling the awaiting task does not stop ``fn`` once it has started.
    """
    return await asyncio.get_running_loop().run_in_executor(executor(), confined, fn)


def confined(fn: Callable[[], _T]) -> _T:
    """Call ``fn``; on error, free what its frames hold before the error leaves the thread.

    An exception's traceback keeps its frames' locals alive. Some python-pkcs11
    objects make PKCS#11 calls when freed (an unfinished search calls
    C_FindObjectsFinal in ``__del__``), so they must die here, not on the
    event loop's thread when the error is dropped there.
    """
    try:
        return fn()
    except BaseException as e:
        drop_frames(e)
        raise


def drop_frames(error: BaseException) -> None:
    """Free what an error's frames hold while still on the PKCS#11 thread (see ``confined``)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        pending += (e.__cause__, e.__context__)
