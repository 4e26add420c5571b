"""Helper-thread plumbing: OS thread names and results handed back to event loops."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

from tuf_signer._handoff import name_os_thread, resolve_threadsafe


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl names are Linux's")
def test_name_os_thread_names_the_calling_thread_only() -> None:
    seen: list[str] = []

    def run() -> None:
        name_os_thread("tuf-test-thread-name-too-long")
        seen.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == ["tuf-test-thread"]  # the kernel keeps 15 bytes
    assert Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip() != (
        "tuf-test-thread"
    )


async def test_resolve_threadsafe_settles_results_errors_and_skips_cancelled() -> None:
    loop = asyncio.get_running_loop()
    ok, failed, cancelled = loop.create_future(), loop.create_future(), loop.create_future()
    cancelled.cancel()
    error = ValueError("boom")
    thread = threading.Thread(
        target=resolve_threadsafe, args=([(ok, 7), (failed, error), (cancelled, 8)],)
    )
    thread.start()
    thread.join()
    assert await ok == 7
    with pytest.raises(ValueError, match="boom"):
        await failed
    assert cancelled.cancelled()


def test_resolve_threadsafe_drops_results_for_a_closed_loop() -> None:
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    loop.close()
    resolve_threadsafe([(future, 1)])  # no RuntimeError escapes: nobody waits
    assert not future.done()
