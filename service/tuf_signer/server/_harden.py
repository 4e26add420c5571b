"""Process hardening for the signer: no core dumps, not dumpable (as notary-signer does).

A core dump or a ptrace attach would expose the HSM PIN and TLS private key
held in this process's memory. Both the workers and the multi-worker
supervisor (which holds the PIN variables it passes on) are hardened.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import sys
from collections.abc import Iterable

log = logging.getLogger(__name__)

_PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def harden_process() -> None:
    """Set RLIMIT_CORE to 0 and, on Linux, clear the dumpable flag.

    A non-dumpable process writes no core file and cannot be ptrace-attached
    by other processes of the same user, and its /proc entries become
    root-owned.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not sys.platform.startswith("linux"):
        log.warning("cannot clear the dumpable flag on %s; core dumps are still off", sys.platform)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_DUMPABLE, 0) failed: errno %d", ctypes.get_errno())


def take_secret_env(names: Iterable[str]) -> dict[str, str]:
    """Remove the variables ``names`` from this process's environment; returns their values.

    The multi-worker supervisor passes a PIN held in a variable (``pin_env``)
    to its workers in their ``env`` only. Removing it here keeps it out of
    ``os.environ`` (so out of any other child) and, on Linux, the value in the
    environment block the process started with is overwritten with NUL bytes
    first, so ``/proc/PID/environ`` stops showing it.

    What this cannot do: the value stays in this process's memory (it is
    needed to restart a worker), which is why ``harden_process`` runs first;
    it was in ``/proc/PID/environ`` from exec until this call; and whoever
    started this process (a shell, systemd's ``Environment=``) still holds it.
    A ``pin_file`` (mode 0600) avoids environment variables altogether.
    """
    taken: dict[str, str] = {}
    for name in dict.fromkeys(names):
        if name not in os.environ:
            continue
        if sys.platform.startswith("linux"):
            _wipe_initial_value(name)
        taken[name] = os.environ.pop(name)  # also unsetenv(3)
    return taken


def _wipe_initial_value(name: str) -> None:
    # getenv(3) points into the "NAME=value" string of environ(7); for a
    # variable never set since exec, that string is the block the kernel shows
    # as /proc/PID/environ. Overwriting the value in place erases it there.
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_void_p
    libc.getenv.argtypes = [ctypes.c_char_p]
    libc.strlen.restype = ctypes.c_size_t
    libc.strlen.argtypes = [ctypes.c_void_p]
    address = libc.getenv(os.fsencode(name))
    if address:
        ctypes.memset(address, 0, libc.strlen(address))
