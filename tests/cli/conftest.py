"""Run the real ``tuf-signer`` command in subprocesses, as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port

CLI = [sys.executable, "-m", "tuf_signer.cli"]


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (a supervisor's workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def run(*args: str, stdin: bytes | None = None, check: bool = True, env: dict | None = None):
    """Run ``tuf-signer ARGS``; returns the CompletedProcess (text decoded)."""
    proc = subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, timeout=120, env=env or _env()
    )
    out = subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tuf-signer {' '.join(args)} failed:\n{out.stderr}")
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Each subprocess finds its token through the config, not through the test session.
    env.pop("SOFTHSM2_CONF", None)
    return env


def client_env(directory: Path, client: str) -> dict[str, str]:
    """The environment ``set -a; . DIR/CLIENT.env`` gives (backend or admin)."""
    env = _env()
    for line in (directory / f"{client}.env").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    return env


def credentials(directory: Path, client: str) -> grpc.ChannelCredentials:
    tls = directory / "tls"
    return grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.crt").read_bytes(),
        private_key=(tls / f"{client}.key").read_bytes(),
        certificate_chain=(tls / f"{client}.crt").read_bytes(),
    )


def wait_healthy(
    address: str,
    proc: subprocess.Popen,
    creds: grpc.ChannelCredentials | None = None,
    timeout: float = 30,
) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    channel = grpc.secure_channel(address, creds) if creds else grpc.insecure_channel(address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stderr.read().decode()}")
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as e:
                last = e
                time.sleep(0.1)
    raise AssertionError(f"server did not become healthy: {last!r}")


@dataclass
class DevSigner:
    directory: Path
    config: Path
    address: str
    proc: subprocess.Popen

    def env(self, client: str) -> dict[str, str]:
        """The CLI environment of the ``backend`` or ``admin`` client."""
        return client_env(self.directory, client)

    def as_(self, client: str, *args: str, **kw):
        """Run ``tuf-signer ARGS`` as that client."""
        return run(*args, env=self.env(client), **kw)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        return self.proc.returncode


@pytest.fixture
def dev_signer(tmp_path: Path) -> Iterator[DevSigner]:
    """``tuf-signer dev-init DIR`` then ``tuf-signer serve`` on a free loopback port."""
    directory = tmp_path / "dev"
    address = f"127.0.0.1:{free_port()}"
    witness = f"127.0.0.1:{free_port()}"
    config = Path(
        run(
            "dev-init", str(directory), "--listen", address, "--witness-listen", witness
        ).stdout.strip()
    )
    signer = DevSigner(directory, config, address, serve(config))
    try:
        wait_healthy(address, signer.proc, credentials(directory, "admin"))
        yield signer
    finally:
        signer.stop()


def serve(config: Path) -> subprocess.Popen:
    """``tuf-signer serve --config CONFIG`` as a child process."""
    return subprocess.Popen(
        [*CLI, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
