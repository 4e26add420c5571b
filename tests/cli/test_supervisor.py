"""Issue 10, finding 9: the multi-worker supervisor is hardened like its workers.

The supervisor holds the PIN variable it passes to the workers (``pin_env``).
It is started here the way an operator's shell might leave it, with an
unlimited core size, from a scratch working directory (the kernel's
``core_pattern`` here is a plain ``core`` in the working directory), and with
a group other than root's, so that the owner of its ``/proc`` files tells
whether it is dumpable (a non-dumpable process's ``/proc/PID`` belongs to
root:root, a dumpable one's to its own uid and gid).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import CLI, _env, children, credentials, free_port, run, wait_healthy

PIN_VAR = "TUF_SIGNER_TEST_HSM_PIN"
_GID = 65534  # nogroup: only to make the dumpable flag visible in /proc


@contextlib.contextmanager
def _supervisor(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """``serve`` with ``workers = 2`` and the PIN in ``pin_env``; yields (proc, pin, cwd)."""
    directory = tmp_path / "dev"
    address = f"127.0.0.1:{free_port()}"
    config = Path(run("dev-init", str(directory), "--listen", address).stdout.strip())
    pin = (directory / "hsm.pin").read_text().strip()
    text = config.read_text().replace("[server]\n", "[server]\nworkers = 2\n", 1)
    assert 'pin_file = "hsm.pin"' in text
    config.write_text(text.replace('pin_file = "hsm.pin"', f'pin_env = "{PIN_VAR}"'))
    (directory / "hsm.pin").unlink()  # the PIN is now only in the environment
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # As an operator's shell may leave it: core files of any size (then exec, same pid).
    unlimited = ["sh", "-c", 'ulimit -c unlimited && exec "$@"', "sh"]
    proc = subprocess.Popen(
        [*unlimited, *CLI, "serve", "--config", str(config)],
        cwd=cwd,
        env={**_env(), PIN_VAR: pin},
        stderr=subprocess.PIPE,
        group=_GID if os.geteuid() == 0 else None,
    )
    workers: list[int] = []
    try:
        wait_healthy(address, proc, credentials(directory, "backend"))
        workers = children(proc.pid)
        assert len(workers) == 2
        yield proc, pin, cwd
    finally:
        for pid in [proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _limits_core(pid: int) -> list[str]:
    limits = Path(f"/proc/{pid}/limits").read_text()
    (core,) = [line for line in limits.splitlines() if line.startswith("Max core file size")]
    return core.split()[4:6]


def test_f9_supervisor_is_hardened(tmp_path: Path) -> None:
    with _supervisor(tmp_path) as (proc, pin, _cwd):
        assert _limits_core(proc.pid) == ["0", "0"]
        for worker in children(proc.pid):
            assert _limits_core(worker) == ["0", "0"]
        environ = Path(f"/proc/{proc.pid}/environ")
        if os.geteuid() != 0:
            # Its own user may read a process's environ only while it is dumpable.
            with pytest.raises(PermissionError):
                environ.read_bytes()
            return
        status = Path(f"/proc/{proc.pid}/status")
        (gid,) = [line for line in status.read_text().splitlines() if line.startswith("Gid:")]
        assert gid.split()[1] == str(_GID)  # the process runs with that group...
        # ...but its /proc files belong to root: the kernel's sign of "not dumpable".
        assert status.stat().st_gid == 0, "the supervisor is dumpable"
        # The PIN is gone from the environment it started with (root can read it).
        initial = environ.read_bytes()
        assert PIN_VAR.encode() + b"=" in initial  # the name stays, the value is wiped
        assert pin.encode() not in initial


def test_f9_sigabrt_of_the_supervisor_leaves_no_core(tmp_path: Path) -> None:
    with _supervisor(tmp_path) as (proc, pin, cwd):
        proc.send_signal(signal.SIGABRT)
        assert proc.wait(timeout=30) == -signal.SIGABRT
        time.sleep(0.5)  # a core is written before the parent sees the exit; be generous
        cores = [p.name for p in cwd.iterdir()]
        leaked = [name for name in cores if pin.encode() in (cwd / name).read_bytes()]
        assert cores == [], f"core files {cores}; holding the PIN: {leaked}"
