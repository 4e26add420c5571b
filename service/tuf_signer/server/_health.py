"""Health that tells the truth about Sign (issue 12, finding 3).

SERVING means: the last probe passed, and no call has failed for want of the
HSM or the store since it started. Two things move it:

- **A fault a caller meets.** A ``StoreError`` or ``BackendUnavailableError``
  that ends a call (the interceptor's ``on_fault``) turns health NOT_SERVING at
  once: the time to notice a fault that traffic meets is one failing call, not
  a probe interval.
- **A probe.** Every backend's ``check`` and a store write on a Sign's lock path
  (``AuditStore.probe``): a full disk, a read-only file or a lock held by
  another session fail it as they fail a Sign. Probes run every
  ``health_interval`` while SERVING, and every ``retry`` (1 s) while not, so a
  recovery is noticed within about a second, without a restart.

Only passing probes turn health SERVING, and a probe that was running when a
call failed does not count: it may have passed before the fault.

Setting health never waits on a client. grpc-health's own servicer writes
each Watch answer while holding the lock that ``set`` needs, so one Watch
client that keeps its HTTP/2 window at 0 would hang every ``set``, and with it
every failing call that reports its fault. ``HealthServicer`` here sets a
status at once, without a lock, and a Watch writes with nothing held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tuf_signer.errors import TufSignerError
from tuf_signer.server import _metrics
from tuf_signer.server._recording import loggable_cause

log = logging.getLogger(__name__)

# Seconds between probes while NOT_SERVING: how soon a recovery is noticed.
RETRY_SECONDS = 1.0
# Seconds a whole probe may take (backend checks and the store's write, whose
# own wait for the writers' lock is bounded by the store): longer is a failure.
PROBE_TIMEOUT = 10.0

Probe = Callable[[], Awaitable[None]]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """The gRPC health service (``grpc.health.v1``) whose ``set_status`` never waits.

    Unlike ``grpc_health.v1.health.aio.HealthServicer``, no lock is held while
    a Watch writes: a Watch stalled by its client (a zero flow-control window)
    stalls only itself, never ``set_status``, ``Check`` or the other Watches.
    """

    def __init__(self) -> None:
        self._status: dict[str, int] = {"": _SERVING}
        # Set and replaced on every change: each Watch waits on the one it saw.
        self._changed = asyncio.Event()
        self._shutting_down = False

    def set_status(self, service: str, serving: bool) -> None:
        """Answer SERVING or NOT_SERVING for ``service`` from now on (ignored once draining)."""
        if not self._shutting_down:
            self._put(service, _SERVING if serving else _NOT_SERVING)

    def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for every service, for good: the server is draining."""
        self._shutting_down = True
        for service in tuple(self._status):
            self._put(service, _NOT_SERVING)

    def _put(self, service: str, status: int) -> None:
        self._status[service] = status
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        last: int | None = None
        while True:
            changed = self._changed  # before reading: a change after it wakes us
            status = self._status.get(request.service, _UNKNOWN)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            await changed.wait()


class Health:
    """Sets the gRPC health status of ``names`` from probes and from failing calls.

    Args:
        servicer: the health service the server answers with.
        names: the service names to set ("" is the server as a whole).
        probe: checks every backend and the store; raises ``TufSignerError``.
        interval: seconds between probes while SERVING (``health_interval``).
        retry: seconds between probes while NOT_SERVING.
        probe_timeout: seconds after which an unanswered probe is a failure.
    """

    def __init__(
        self,
        servicer: HealthServicer,
        names: Sequence[str],
        probe: Probe,
        interval: float,
        retry: float = RETRY_SECONDS,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self._servicer = servicer
        self._names = tuple(names)
        self._probe = probe
        self._interval = interval
        self._retry = retry
        self._probe_timeout = probe_timeout
        self._serving = True
        self._faults = 0  # calls that failed on a fault, ever
        self._woken = asyncio.Event()
        self._running: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        """What health answers now."""
        return self._serving

    async def fault(self, error: TufSignerError) -> None:
        """A call failed because the store or a backend did: NOT_SERVING now.

        It returns at once (nothing here waits on a client or a lock), so the
        failing call answers within its deadline. The probes then run every
        ``retry`` seconds until one passes.
        """
        self._faults += 1
        self._woken.set()
        self._set(False, error.reason)

    async def run(self) -> None:
        """Probe forever: every ``interval`` while SERVING, every ``retry`` while not."""
        while True:
            if self._serving:
                self._woken.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), self._interval)
            if not self._serving:
                # After a fault, not at once: a probe that passes while calls
                # still fail would only make health flap.
                await asyncio.sleep(self._retry)
            await self.probe_once()

    async def probe_once(self) -> None:
        """Run one probe and set health from it."""
        faults = self._faults
        # A probe stuck past its timeout (a hung connection) keeps running in
        # its thread; it is awaited again rather than joined by another.
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._probe())
        try:
            await asyncio.wait_for(asyncio.shield(self._running), self._probe_timeout)
        except TufSignerError as e:
            self._set(False, e.reason)
        except TimeoutError:
            self._set(False, f"the health probe did not answer within {self._probe_timeout:g} s")
        except Exception as e:  # a bug must not stop the probes and freeze health
            log.error("the health probe failed unexpectedly: %s", loggable_cause(e))
            self._set(False, "the health probe failed unexpectedly (see the log)")
        else:
            if self._faults == faults:
                self._set(True, "")

    def start(self) -> None:
        """Answer SERVING for every name (the server has just started)."""
        self._set(True, "", force=True)

    def _set(self, serving: bool, reason: str, force: bool = False) -> None:
        if serving == self._serving and not force:
            return
        if serving and not force:
            log.info("health: SERVING again, the probe passed")
        elif not serving:
            log.error("health: NOT_SERVING: %s", reason)
        self._serving = serving
        _metrics.set_serving(serving)
        for name in self._names:
            self._servicer.set_status(name, serving)

    async def close(self) -> None:
        """Let a probe still running finish quietly (its thread cannot be stopped)."""
        if self._running is not None and not self._running.done():
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError, TufSignerError):
                await self._running
