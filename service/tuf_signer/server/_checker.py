"""The payload check, kept off the event loop when it could stall other requests.

``policy.check_sign_request`` is pure CPU work. For a PEP 458 bin (~54 KB, up
to ~70 KB) the fast path takes ~130 µs and runs inline (the native
canonical-JSON check; ~300 µs on the pure-Python one). Anything larger than
``DEFAULT_INLINE_BYTES`` (a MB-sized snapshot)
and anything the fast path cannot accept (a control character or a big integer
sends it to the pure-Python exact check: seconds for 8 MiB) runs in a separate
checker process instead, because the check holds the GIL and a thread would
stall the loop just the same. Every job there has a time budget: past it the
process is killed and replaced, and the request is refused. The CPU seconds a
job used are charged to its caller's budget (``Guard.charge_check``), so one
identity cannot keep the checker busy for everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from tuf_signer import policy
from tuf_signer.errors import ResourceExhaustedError, TufSignerError
from tuf_signer.model import BinsDelegation, RoleRule
from tuf_signer.policy import SignedInfo
from tuf_signer.server._harden import harden_process

log = logging.getLogger(__name__)

CheckResult = tuple[str, SignedInfo, RoleRule]

_START_TIMEOUT = 60.0  # seconds for a checker process to start

# Payloads up to this size try the fast path inline: ~130 µs for a 54 KB bin, at
# most ~0.6 ms at this size when the native scan accepts. Above
# policy.REFERENCE_INLINE_BYTES (64 KiB) only the native scan runs inline, so a
# hostile shape it leaves to the pure-Python reference goes to a checker process
# (and so does every such payload when the extension is not built). Every PEP
# 458 bin fits: at 64 KiB, ~9% of them went to a checker process, each reserving
# check_timeout of its identity's budget, and a bulk re-sign was refused.
DEFAULT_INLINE_BYTES = 256 * 1024


@dataclass(frozen=True)
class CheckJob:
    """The arguments of one ``policy.check_sign_request`` (all picklable)."""

    payload: bytes
    role: str | None
    key_name: str
    rules: tuple[RoleRule, ...]
    now: datetime
    max_payload_bytes: int
    payload_sha256: str
    bins: BinsDelegation | None = None
    max_clock_skew: int = 0

    def run(self, *, exact: bool) -> CheckResult:
        """Apply the check here, in this process.

        Raises:
            NeedsExactCheck: ``exact`` is False and the fast path did not accept.
            TufSignerError: the refusal.
        """
        return policy.check_sign_request(
            self.payload,
            self.role,
            self.key_name,
            self.rules,
            self.now,
            self.max_payload_bytes,
            self.payload_sha256,
            exact=exact,
            bins=self.bins,
            max_clock_skew=self.max_clock_skew,
        )


def _serve(conn: Connection) -> None:  # pragma: no cover - runs in the checker process
    """The checker process: run jobs until the pipe closes."""
    # Spawned with the worker's environment, which may hold the PIN (pin_env):
    # no core dumps, and not dumpable, like the worker itself.
    harden_process()
    conn.send("ready")  # imports done: time a job from here on
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        start = time.process_time()
        try:
            result: Any = ("ok", job.run(exact=True))
        except TufSignerError as e:
            result = ("refused", type(e), e.reason, e.code)
        except Exception as e:  # a bug: say so without the payload
            result = ("refused", TufSignerError, f"internal error ({type(e).__name__})", None)
        conn.send((*result, time.process_time() - start))


def _slot_after(done: asyncio.Future[Any]) -> _Process | None:
    """The slot a finished round trip gives back (None if the round trip itself failed)."""
    if done.cancelled() or done.exception() is not None:
        return None
    slot: _Process | None = done.result()[1]
    return slot


class _Process:
    """One checker process and the parent's end of its pipe."""

    def __init__(self, ctx: Any) -> None:
        """Start the process and wait until it is ready.

        Raises:
            OSError: it could not start, or died before it was ready.
        """
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), name="tuf-check", daemon=True)
        try:
            self.proc.start()
            child.close()
            # Start-up (a fresh interpreter importing the policy) is not a job's time.
            if not self.conn.poll(_START_TIMEOUT) or self.conn.recv() != "ready":
                raise OSError("the payload checker process did not become ready")
        except Exception as e:
            child.close()
            if self.proc.pid is not None:
                self.stop(kill=True)
            else:
                self.conn.close()
            raise OSError(f"the payload checker process did not start ({type(e).__name__})") from e

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                self.proc.kill()
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.conn.close()


class PayloadChecker:
    """Runs payload checks inline when cheap, else in checker processes.

    Args:
        processes: checker processes (started on first use).
        inline_bytes: payloads up to this size try the fast path inline.
        timeout: seconds one off-loop check may take before it is refused
            (RESOURCE_EXHAUSTED) and its process replaced.
    """

    def __init__(
        self,
        processes: int = 1,
        inline_bytes: int = DEFAULT_INLINE_BYTES,
        timeout: float = 10.0,
    ) -> None:
        self._size = processes
        self._inline_bytes = inline_bytes
        self._timeout = timeout
        self._ctx = multiprocessing.get_context("spawn")  # no fork: PKCS#11 is threaded
        # Idle slots: a ready process, or None for one to (re)start on next use.
        self._idle: asyncio.Queue[_Process | None] | None = None
        self._lock = threading.Lock()  # guards _all (helper threads replace processes)
        self._starting = asyncio.Lock()
        self._all: list[_Process] = []
        self._threads = ThreadPoolExecutor(max_workers=processes, thread_name_prefix="tuf-check")
        self._closed = False

    def inline(self, job: CheckJob) -> CheckResult | None:
        """The verdict, when it can be had cheaply on the event loop; else None.

        Raises:
            TufSignerError: the refusal.
        """
        if len(job.payload) > job.max_payload_bytes:
            return job.run(exact=False)  # refused at once by its size check
        if len(job.payload) > self._inline_bytes:
            return None
        try:
            return job.run(exact=False)
        except policy.NeedsExactCheck:
            return None

    async def offload(self, job: CheckJob) -> tuple[CheckResult | TufSignerError, float]:
        """Run the exact check in a checker process.

        Returns:
            The verdict (the result, or the refusal as an error value) and the
            CPU seconds the check used.

        Raises:
            TufSignerError: the checker is shut down.
        """
        if self._closed:
            raise TufSignerError("the payload checker is shut down", code="UNAVAILABLE")
        try:
            idle = await self.start()
        except OSError as e:
            raise TufSignerError(
                f"the payload checker cannot start ({type(e).__name__})", code="UNAVAILABLE"
            ) from e
        slot = await idle.get()
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._threads, self._roundtrip, slot, job)
        # The slot goes back to the pool when the round trip ends, also when
        # this caller was cancelled meanwhile; a failed one comes back empty.
        done.add_done_callback(lambda f: idle.put_nowait(_slot_after(f)))
        outcome, _ = await asyncio.shield(done)
        return outcome

    @property
    def timeout(self) -> float:
        """Seconds one off-loop check may take."""
        return self._timeout

    async def start(self) -> asyncio.Queue[_Process | None]:
        """Start the checker processes (once), off the event loop; the idle pool.

        Raises:
            OSError: a checker process could not start.
        """
        async with self._starting:
            if self._idle is None:
                loop = asyncio.get_running_loop()
                idle: asyncio.Queue[_Process | None] = asyncio.Queue()
                for _ in range(self._size):
                    idle.put_nowait(await loop.run_in_executor(self._threads, self._spawn))
                self._idle = idle
        return self._idle

    def _spawn(self) -> _Process:
        proc = _Process(self._ctx)
        with self._lock:
            self._all.append(proc)
        return proc

    def _retire(self, proc: _Process) -> None:
        with self._lock:
            self._all = [p for p in self._all if p is not proc]
        proc.stop(kill=True)

    def _roundtrip(
        self, slot: _Process | None, job: CheckJob
    ) -> tuple[tuple[CheckResult | TufSignerError, float], _Process | None]:
        """On a helper thread: send the job, wait within the budget, read the verdict.

        Returns the verdict and the slot to give back: the process, or None
        when it had to go (it is started afresh on the slot's next use).
        """
        if slot is None:
            try:
                slot = self._spawn()
            except OSError as e:
                log.error("the payload checker cannot start: %s", e)
                error = TufSignerError(
                    "the payload checker cannot start; nothing was signed", code="UNAVAILABLE"
                )
                return (error, 0.0), None
        started = time.monotonic()
        try:
            slot.conn.send(job)
            if slot.conn.poll(self._timeout):
                reply = slot.conn.recv()
                return self._verdict(reply), slot
            reason = (
                f"checking the payload took longer than its budget of {self._timeout:g} s; "
                "nothing was signed"
            )
        except Exception as e:  # a dead process (EOFError, OSError) or a bug
            reason = f"the payload checker failed ({type(e).__name__}); nothing was signed"
        log.warning("stopping the payload checker process: %s", reason)
        self._retire(slot)
        return (ResourceExhaustedError(reason), time.monotonic() - started), None

    @staticmethod
    def _verdict(reply: Sequence[Any]) -> tuple[CheckResult | TufSignerError, float]:
        if reply[0] == "ok":
            return reply[1], float(reply[2])
        _, cls, reason, code, seconds = reply
        error = cls(reason) if code is None or code == cls.code else cls(reason, code=code)
        return error, float(seconds)

    def close(self) -> None:
        """Stop the checker processes. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            procs, self._all = self._all, []
        for proc in procs:
            proc.stop()
        self._threads.shutdown(wait=False)
