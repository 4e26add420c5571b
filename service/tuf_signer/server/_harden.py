"""Process hardening for the signer: no core dumps, not dumpable (as notary-signer does).

A core dump or a ptrace attach would expose the HSM PIN and TLS private key
held in this process's memory.
"""

from __future__ import annotations

import ctypes
import logging
import resource
import sys

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
