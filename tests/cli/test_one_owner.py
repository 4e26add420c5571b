"""Issue 12, findings 5 and 6: one owner per address; no worker outlives its supervisor.

Before: a second ``serve`` on a used address started silently and shared the
port through SO_REUSEPORT (a signer with another store granted versions the
first store had long passed), and ``kill -9`` of the supervisor left its
workers serving, unsupervised.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import CLI, DevSigner, _env, children, credentials, free_port, run, wait_healthy


def _dev_init(directory: Path, address: str, workers: int = 1) -> Path:
    config = Path(run("dev-init", str(directory), "--listen", address).stdout.strip())
    if workers > 1:
        text = config.read_text().replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
        config.write_text(text)
    return config


def _serve(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "serve", "--config", str(config)], stderr=subprocess.PIPE, env=_env()
    )


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper has stopped serving)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.parametrize("workers", [1, 2], ids=["single", "supervisor"])
def test_a_second_serve_on_a_used_address_exits_naming_it(
    dev_signer: DevSigner, tmp_path: Path, workers: int
) -> None:
    config = _dev_init(tmp_path / "second", dev_signer.address, workers)

    second = run("serve", "--config", str(config), check=False)

    assert second.returncode == 1
    assert (
        f"server.listen: {dev_signer.address} is already served by another tuf-signer"
        in second.stderr
    )
    assert "--listen HOST:PORT" in second.stderr  # what to do
    # The first signer still owns the address, alone.
    wait_healthy(dev_signer.address, dev_signer.proc, credentials(dev_signer.directory, "admin"))


def test_serve_on_an_address_another_program_holds_exits_naming_it(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = _dev_init(tmp_path / "dev", address)
    with socket.socket() as other:  # as a gRPC server would: SO_REUSEPORT on
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", int(address.rpartition(":")[2])))
        other.listen()

        second = run("serve", "--config", str(config), check=False)

    assert second.returncode == 1
    assert f"server.listen: {address} is in use by another program" in second.stderr


@contextlib.contextmanager
def _supervised(config: Path, address: str, directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``serve`` with several workers, killed (supervisor and workers) however the test ends."""
    proc = _serve(config)
    workers: list[int] = []
    try:
        wait_healthy(address, proc, credentials(directory, "admin"))
        workers = children(proc.pid)
        yield proc
    finally:
        for pid in [proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_kill_9_of_the_supervisor_leaves_no_worker_serving(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    directory = tmp_path / "dev"
    config = _dev_init(directory, address, workers=2)
    with _supervised(config, address, directory) as supervisor:
        workers = children(supervisor.pid)
        assert len(workers) == 2

        supervisor.kill()
        supervisor.wait(timeout=10)

        # Each worker gets SIGTERM from the kernel and drains (nothing in flight).
        deadline = time.monotonic() + 15
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [w for w in workers if _alive(w)] == []

    # The claim died with the supervisor: a new service may take the address.
    with _supervised(config, address, directory) as fresh:
        assert len(children(fresh.pid)) == 2
