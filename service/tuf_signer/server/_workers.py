"""Several server processes on one port, so PKCS#11 and Python use every core.

python-pkcs11 confines each PKCS#11 context to one thread (docs/design.md §4), and
one Python process runs one core's worth of gRPC. So ``server.workers = N``
runs N full servers: each its own process with its own PKCS#11 session, all
listening on the same port (gRPC sets SO_REUSEPORT, and the kernel spreads
connections across them). The supervisor claims the port first
(``_address``: one tuf-signer per port, whatever the host), so no other service
shares it with them, and each worker gets
SIGTERM from the kernel when the supervisor dies. They share the audit store,
and a metrics directory (``PROMETHEUS_MULTIPROC_DIR``, made here, fresh for each
run, removed at exit) where each writes its metric values, so that any worker's
ops listener (``[ops] listen``, also claimed here and shared with SO_REUSEPORT)
shows the sum of all (``_metrics``); a dead worker's live gauges are dropped. Rollback and
equivocation protection hold across them because the role-state
compare-and-set and the audit append happen in one store transaction, which
the database serialises (P3); each worker's caches are only lower bounds.

This module is the supervisor: it holds no key material and opens no PKCS#11
module, no store and no listener (it imports the server package, gRPC and
python-pkcs11 with it, but initialises neither), forwards SIGTERM, SIGINT and
SIGHUP to the workers, and restarts a
worker that dies unexpectedly (a bounded number of times). It does hold the
secrets the workers read from environment variables (``pin_env``,
``audit.dsn_env``), so it is hardened like a worker before it spawns anything
(no core dumps, not dumpable) and keeps those variables out of its own
environment, passing them only in each worker's ``env`` (see
``take_secret_env`` for what that can and cannot hide).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tuf_signer.server._address import claim_address
from tuf_signer.server._harden import harden_process, take_secret_env
from tuf_signer.server._metrics import MULTIPROC_ENV, mark_dead

if TYPE_CHECKING:
    from tuf_signer.config import Config

log = logging.getLogger(__name__)

WORKER_ENV = "TUF_SIGNER_WORKER"
_RESTARTS_PER_MINUTE = 5
_POLL = 0.2  # seconds
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def secret_env_names(config: Config) -> list[str]:
    """The environment variables holding secrets the workers read (PINs, the DSN)."""
    names = [
        pin.env
        for backend in config.backends.values()
        if (pin := getattr(backend, "pin", None)) is not None and pin.env is not None
    ]
    if config.audit.dsn_env is not None:
        names.append(config.audit.dsn_env)
    return names


def _spawn(
    config: Path,
    index: int,
    listen: str | None,
    secrets: Mapping[str, str],
    metrics: Path,
    extra_args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "tuf_signer.cli", *extra_args, "serve", "--config", str(config)]
    if listen:
        argv += ["--listen", listen]
    env = {**os.environ, **secrets, WORKER_ENV: str(index), MULTIPROC_ENV: str(metrics)}
    return subprocess.Popen(argv, env=env, preexec_fn=functools.partial(_die_with, os.getpid()))


def _die_with(supervisor: int) -> None:
    """In the new worker, before exec: get SIGTERM when the supervisor dies.

    A ``kill -9`` of the supervisor must not leave its workers serving
    unsupervised beside a newly started service (finding 5 of issue 12). The
    kernel's parent-death signal survives exec; SIGTERM makes the worker drain
    (``server.drain_seconds``) and exit. If the supervisor died before this ran,
    the worker has been re-parented already: it exits at once. (The supervisor
    runs no threads, so running Python between fork and exec is safe here.)
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            os._exit(1)
    if os.getppid() != supervisor:
        os._exit(1)


def supervise(
    config: Path,
    workers: int,
    listen: str | None,
    drain_seconds: float,
    secret_env: Iterable[str] = (),
    address: str | None = None,
    ops_address: str | None = None,
    worker_args: Sequence[str] = (),
) -> int:
    """Run ``workers`` server processes until SIGTERM/SIGINT; returns the exit status.

    Args:
        secret_env: variables holding secrets (``secret_env_names``): taken out
            of this process's environment and given to the workers only.
        address: the address the workers will listen on: claimed here, for the
            supervisor's whole life (``claim_address``), so that no other
            service shares it with them.
        ops_address: the workers' ops listener (``[ops] listen``), claimed likewise.
        worker_args: ``tuf-signer`` options each worker gets before ``serve``
            (e.g. ``--log-format json``).

    Returns:
        0 when every worker drained and exited cleanly; 1 otherwise (a worker
        failed at start, or kept dying).

    Raises:
        ConfigError: ``address`` is in use (nothing was started).
    """
    # Before anything is spawned or read: a core dump of the supervisor would
    # hold the PIN variables it passes on (finding 9 of issue 10).
    harden_process()
    claim = claim_address(address) if address is not None else None
    try:
        ops_claim = claim_address(ops_address, "ops.listen") if ops_address else None
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    # Fresh for each run: values a previous run left must not add to this one's.
    metrics = Path(tempfile.mkdtemp(prefix="tuf-signer-metrics-"))
    try:
        return _supervise(
            config, workers, listen, drain_seconds, secret_env, metrics, tuple(worker_args)
        )
    finally:
        shutil.rmtree(metrics, ignore_errors=True)
        for held in (claim, ops_claim):
            if held is not None:
                held.release()


def _supervise(
    config: Path,
    workers: int,
    listen: str | None,
    drain_seconds: float,
    secret_env: Iterable[str],
    metrics: Path,
    worker_args: tuple[str, ...],
) -> int:
    secrets = take_secret_env(secret_env)
    spawn = functools.partial(
        _spawn, config, listen=listen, secrets=secrets, metrics=metrics, extra_args=worker_args
    )
    stopping = False
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    procs = {i: spawn(i) for i in range(workers)}
    log.info("supervising %d workers: pids %s", workers, [p.pid for p in procs.values()])
    restarts: list[float] = []
    status = 0
    while procs:
        while received:
            signum = received.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                stopping = True
                deadline = time.monotonic() + drain_seconds + 5
            log.info("forwarding %s to the workers", signal.Signals(signum).name)
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signum)
        for i, p in list(procs.items()):
            code = p.poll()
            if code is None:
                continue
            del procs[i]
            mark_dead(p.pid, metrics)  # its live gauges no longer count
            if stopping:
                status = status or (1 if code else 0)
                continue
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > _RESTARTS_PER_MINUTE:
                log.error("worker %d exited with %d; too many restarts, stopping all", i, code)
                stopping, status = True, 1
                deadline = now + drain_seconds + 5
                for other in procs.values():
                    other.send_signal(signal.SIGTERM)
                continue
            log.error("worker %d exited with %d; restarting it", i, code)
            procs[i] = spawn(i)
        if stopping and procs and time.monotonic() > deadline:
            for p in procs.values():
                p.kill()
            status = 1
        time.sleep(_POLL)
    return status


def worker_index() -> int | None:
    """This process's worker number, or None when it is not a supervised worker."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None
