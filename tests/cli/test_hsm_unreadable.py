"""A non-root ``tuf-signer serve`` whose SoftHSM token becomes unreadable, then readable.

Issue 12, finding 1, third case: "the token's files made unreadable to a
non-root server". The server runs as ``nobody`` (root would read the files
whatever their mode). Its token directory is set to mode 000 for
``FAULT_SECONDS`` while a client keeps signing, and then gets its mode back. The
test checks that:

- clients get only UNAVAILABLE during the fault, never INTERNAL;
- health is NOT_SERVING from the first failed sign;
- with no restart, a sign succeeds within ``RECOVERY_BOUND`` of the mode
  coming back, and health is SERVING again within ``HEALTH_BOUND`` after that;
- every refusal is in the audit log as UNAVAILABLE, and the log verifies.

This needs root, because the test runs the server as another user and changes
the mode of that user's files. Without root it is skipped.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import pwd
import shutil
import signal
import site
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from securesystemslib.signer import Signature

import tuf_signer
from tests.keys.test_pkcs11_recovery import RECOVERY_BOUND
from tuf_signer.client import Client, RemoteError, SignedResult, sslib_key
from tuf_signer.server._health import RETRY_SECONDS
from tuf_signer.testing.softhsm import token_directory

from .conftest import client_env, credentials, free_port, run

TOKEN = "tuf-signer"  # the token label `tuf-signer dev-init` gives its token
FAULT_SECONDS = 2.0  # how long the token directory stays mode 000
# Far longer than the test: the first failed sign, not a periodic probe, must
# be what notices the fault. While NOT_SERVING, the server probes every
# RETRY_SECONDS regardless of this setting.
HEALTH_INTERVAL = 600
# Health is SERVING again this long after the first successful sign: one probe
# retry, plus a second for the probe itself on a loaded machine.
HEALTH_BOUND = RETRY_SECONDS + 1.0
CALL_TIMEOUT = 10.0  # seconds, for each RPC the test makes
START_TIMEOUT = 30.0  # seconds for the server to become SERVING
STOP_TIMEOUT = 30.0  # seconds for SIGTERM to stop the server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# The server's payload checker is a process spawned from sys.executable. So the
# interpreter we choose must work as that user in two ways: it imports the
# service, and it can start itself again.
_PROBE = (
    "import subprocess, sys, grpc, pkcs11, tuf_signer.cli; "
    "subprocess.run([sys.executable, '-c', 'import tuf_signer.cli'], check=True)"
)


@dataclass
class NobodySigner:
    """``tuf-signer serve`` running as another user, on a dev-init directory it owns."""

    directory: Path
    config: Path
    address: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        """The end of the server's log, for failure messages."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM the server; after STOP_TIMEOUT, SIGKILL its process group. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session (start_new_session)
                self.proc.wait(timeout=STOP_TIMEOUT)
        return self.proc.returncode


@contextlib.contextmanager
def _shared_dir() -> Iterator[Path]:
    """A new directory under /tmp that every user can traverse (pytest's tmp_path cannot)."""
    base = Path(tempfile.mkdtemp(prefix="tuf-signer-unreadable-", dir="/tmp"))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid)
    for parent, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            os.chown(Path(parent, name), uid, gid, follow_symlinks=False)


def _python_for(user: pwd.struct_passwd, cwd: Path) -> tuple[str, dict[str, str]]:
    """An interpreter and environment that run the service as ``user``.

    The obvious choice is ``sys.executable``, but it may sit behind a directory
    that ``user`` cannot traverse (for example, a venv whose python is a
    symlink into /root/.pyenv). In that case a system interpreter of the same
    version is used, with this checkout and its site-packages on PYTHONPATH.
    """
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    service = Path(tuf_signer.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(service), *site.getsitepackages()])
    env["HOME"] = str(cwd)
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, shutil.which(name), shutil.which(name, path="/usr/bin")]
    failures = []
    for exe in dict.fromkeys(c for c in candidates if c):
        try:
            done = subprocess.run(
                [exe, "-c", _PROBE],
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
                env=env,
                cwd=cwd,
                capture_output=True,
                timeout=60,
                check=False,
            )
        except OSError as e:  # this user cannot execute it at all
            failures.append(f"{exe}: {e.strerror}")
            continue
        if done.returncode == 0:
            return exe, env
        failures.append(f"{exe}: {done.stderr.decode(errors='replace').strip()[-300:]}")
    pytest.skip(f"no Python interpreter can run the service as {user.pw_name!r}: {failures}")


@contextlib.contextmanager
def _signer_as(user: pwd.struct_passwd) -> Iterator[NobodySigner]:
    """``tuf-signer dev-init`` (as root), then ``tuf-signer serve`` as ``user``."""
    with _shared_dir() as base:
        directory = base / "dev"
        address = f"127.0.0.1:{free_port()}"
        config = Path(run("dev-init", str(directory), "--listen", address).stdout.strip())
        text = config.read_text()
        assert "[server]\n" in text
        config.write_text(
            text.replace("[server]\n", f"[server]\nhealth_interval = {HEALTH_INTERVAL}\n", 1)
        )
        _chown_tree(directory, user.pw_uid, user.pw_gid)
        python, env = _python_for(user, base)
        log = base / "server.log"
        with log.open("wb") as out:  # a file, not a pipe: a full pipe would block the server
            proc = subprocess.Popen(
                [python, "-m", "tuf_signer.cli", "serve", "--config", str(config)],
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
                env=env,
                cwd=base,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        signer = NobodySigner(directory, config, address, proc, log)
        try:
            yield signer
        finally:
            signer.stop()


@contextlib.contextmanager
def _unreadable(directory: Path) -> Iterator[None]:
    """Mode 000 on ``directory`` for the block; its mode back after it, whatever happens."""
    mode = stat.S_IMODE(directory.stat().st_mode)
    directory.chmod(0)
    try:
        yield
    finally:
        directory.chmod(mode)


def _sign(client: Client, payload: bytes) -> tuple[str, SignedResult | None]:
    """Sign ``payload`` with the key "online"; returns (status name, result or None)."""
    try:
        return "OK", client.sign("online", payload)
    except RemoteError as e:
        return e.code, None


@pytest.mark.slow
def test_token_unreadable_to_a_non_root_server_then_readable_again() -> None:
    if os.geteuid() != 0:
        pytest.skip(
            "needs root: the server runs as 'nobody', and root reads the token's files "
            "whatever their mode"
        )
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user to run the server as")

    with (
        _signer_as(user) as signer,
        grpc.secure_channel(signer.address, credentials(signer.directory, "admin")) as channel,
        Client(
            signer.address,
            ca=signer.directory / "tls" / "ca.crt",
            cert=signer.directory / "tls" / "backend.crt",
            key=signer.directory / "tls" / "backend.key",
            timeout=CALL_TIMEOUT,
        ) as client,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        backend = client_env(signer.directory, "backend")
        token = token_directory(signer.directory / "softhsm2.conf", TOKEN)

        def status() -> int:
            return int(health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT).status)

        def wait_for(what: str, done: Callable[[], bool], timeout: float) -> float:
            """Poll ``done`` until it holds; returns the seconds taken."""
            start = time.monotonic()
            while True:
                assert signer.proc.poll() is None, f"the server exited:\n{signer.tail()}"
                with contextlib.suppress(grpc.RpcError):
                    if done():
                        return time.monotonic() - start
                if time.monotonic() - start > timeout:
                    raise AssertionError(f"{what} not within {timeout} s:\n{signer.tail()}")
                time.sleep(0.05)

        def payload(version: int) -> bytes:
            text: str = run("dev-payload", "timestamp", "--version", str(version)).stdout
            return text.encode()

        wait_for("SERVING after start", lambda: status() == SERVING, START_TIMEOUT)

        # Before the fault: the CLI signs, as a user would.
        first = json.loads(
            run("sign", "--key", "online", "-", stdin=payload(1), env=backend).stdout
        )
        (online,) = client.public_keys("online")
        public = {v["keyid"]: sslib_key(v) for v in online["versions"] if v["public_key"]}
        assert first["keyid"] in public

        # The fault: the server can no longer read its token's files.
        during = payload(2)
        codes: collections.Counter[str] = collections.Counter()
        healths = []
        with _unreadable(token):
            fault_at = time.monotonic()
            while time.monotonic() - fault_at < FAULT_SECONDS:
                codes[_sign(client, during)[0]] += 1
                healths.append(status())
                time.sleep(0.1)
            cli = run("sign", "--key", "online", "-", stdin=during, env=backend, check=False)
        back_at = time.monotonic()

        assert set(codes) == {"UNAVAILABLE"}, codes
        # Health turned NOT_SERVING with the first failed sign, and stayed so.
        assert set(healths) == {NOT_SERVING}, healths
        assert cli.returncode == 1 and cli.stdout == ""
        assert "refused: UNAVAILABLE" in cli.stderr and "INTERNAL" not in cli.stderr
        assert f"token '{TOKEN}'" in cli.stderr

        # Recovery, without a restart: the same payload, retried until it is signed.
        after: list[str] = []
        while True:
            code, result = _sign(client, during)
            after.append(code)
            if result is not None:
                break
            assert time.monotonic() - back_at <= RECOVERY_BOUND, (
                f"no sign succeeded within {RECOVERY_BOUND} s of the mode coming back: "
                f"{collections.Counter(after)}\n{signer.tail()}"
            )
            time.sleep(0.05)
        signed_at = time.monotonic()
        assert set(after) <= {"OK", "UNAVAILABLE"}, after
        public[result.keyid].verify_signature(Signature(result.keyid, result.sig), during)
        healthy_in = wait_for("SERVING after recovery", lambda: status() == SERVING, HEALTH_BOUND)
        print(
            f"fault: {sum(codes.values())} signs {dict(codes)}; recovered "
            f"{signed_at - back_at:.2f} s after the mode came back ({len(after)} tries); "
            f"SERVING {healthy_in:.2f} s after that"
        )
        run("sign", "--key", "online", "-", stdin=payload(3), env=backend)
        assert signer.stop() == 0, signer.tail()

        # The record verifies, and it holds each refusal as UNAVAILABLE.
        verified = run("audit", "verify", "--config", str(signer.config))
        assert verified.stdout.startswith("OK:")
        exported = run("audit", "export", "--config", str(signer.config)).stdout.splitlines()
        signs = [r["event"] for r in map(json.loads, exported) if r["event"]["operation"] == "sign"]
        refused = [e for e in signs if e["outcome"] == "refused"]
        assert len(refused) == codes["UNAVAILABLE"] + after.count("UNAVAILABLE") + 1  # + the CLI's
        assert {e["status"] for e in refused} == {"UNAVAILABLE"}
        assert all(f"'{TOKEN}'" in e["reason"] for e in refused)
        assert [e["metadata_version"] for e in signs if e["outcome"] == "granted"] == [1, 2, 3]
        server_log = signer.log.read_text(errors="replace")
        assert "Traceback" not in server_log and "INTERNAL" not in server_log, signer.tail()
