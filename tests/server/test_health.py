"""Health tells the truth about Sign (issue 12, finding 3), on a real server.

A full disk, a read-only store and a held PostgreSQL lock fail every Sign;
health must say NOT_SERVING, and SERVING again within a bound once the fault
is gone, without a restart. A Sign that fails UNAVAILABLE turns health
NOT_SERVING at once, not at the next probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tuf_signer.audit import SqliteAuditStore, verify_store
from tuf_signer.audit._postgres import _LOCK_SPACE

from .conftest import Clock, Harness, start_harness, stop_harness, write_config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Health's retry while NOT_SERVING is 1 s; a probe takes milliseconds here.
RECOVERY_BOUND = 3.0
DSN_ENV = "TUF_SIGNER_TEST_AUDIT_DSN"


def _config(directory: Path, softhsm: Any, health_interval: float, audit: str = "") -> Path:
    path = write_config(directory, softhsm)
    text = path.read_text().replace(
        "drain_seconds = 5\n", f"drain_seconds = 5\nhealth_interval = {health_interval}\n"
    )
    if audit:
        text = text.replace('[audit]\npath = "audit.db"', f"[audit]\n{audit}")
    path.write_text(text)
    return path


async def _status(h: Harness) -> int:
    answer = await health_pb2_grpc.HealthStub(h.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(answer.status)


async def _wait_for(h: Harness, status: int, within: float) -> float:
    """Seconds until health answers ``status``; fails after ``within``."""
    started = time.monotonic()
    while (await _status(h)) != status:
        if time.monotonic() - started > within:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            raise AssertionError(f"health did not turn {name} within {within} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _sign_fails_unavailable(h: Harness, version: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await h.sign("k", h.payloads.timestamp(version))
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE, failed.value.details()


async def _fault_then_recovery(
    h: Harness, fault: contextlib.AbstractContextManager[None], noticed_within: float
) -> None:
    """Sign, then under ``fault``: health turns NOT_SERVING by a probe alone (no
    Sign runs until it has) and every Sign fails; after it, SERVING within
    RECOVERY_BOUND and Signs work again, in the same server."""
    await h.create_key("k")
    await h.sign("k", h.payloads.timestamp(1))
    assert await _status(h) == SERVING
    with fault:
        await _wait_for(h, NOT_SERVING, noticed_within)
        await _sign_fails_unavailable(h, 2)
        assert await _status(h) == NOT_SERVING
    recovered = await _wait_for(h, SERVING, RECOVERY_BOUND)
    assert recovered < RECOVERY_BOUND
    await h.sign("k", h.payloads.timestamp(3))


# --- a full disk ---------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(directory: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted on ``directory`` (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    directory.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


@contextlib.contextmanager
def _full(directory: Path) -> Iterator[None]:
    """Fill the filesystem of ``directory`` to the last byte; free it afterwards."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 512, 1):  # until ENOSPC, to the last byte
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    try:
        yield
    finally:
        filler.unlink()


async def test_full_disk_turns_health_not_serving_and_back(
    tmp_path: Path, softhsm: Any, clock: Clock
) -> None:
    with _tmpfs(tmp_path / "disk") as disk:
        db = disk / "audit.db"
        path = _config(tmp_path / "signer", softhsm, 0.5, audit=f'path = "{db}"')
        h = await start_harness(path, clock)
        try:
            await _fault_then_recovery(h, _full(disk), noticed_within=3)
        finally:
            await stop_harness(h)
        # The probes left the chain whole and added nothing to it: create-key
        # and two signs (the Sign on the full disk could not be recorded, and
        # got nothing).
        with SqliteAuditStore(db) as store:
            assert verify_store(store).records == 3


# --- a read-only store -------------------------------------------------------------------


@contextlib.contextmanager
def _immutable(*paths: Path) -> Iterator[None]:
    """Make ``paths`` unwritable, even through open descriptors and for root.

    A file mode does not stop writes through a descriptor already open (nor
    root); the immutable flag does, on filesystems that enforce it (ext4).
    """
    if os.geteuid() != 0:
        pytest.skip("making an open file read-only needs root (chattr +i)")
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a file read-only")
    done = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


async def test_read_only_store_turns_health_not_serving_and_back(
    tmp_path: Path, softhsm: Any, clock: Clock
) -> None:
    path = _config(tmp_path / "signer", softhsm, 0.5)
    h = await start_harness(path, clock)
    db = h.config.audit.path
    # The database and its WAL, not the -shm: SQLite maps that file, and a
    # mapped page of an immutable file would cost the process a SIGBUS.
    fault = _immutable(db, db.with_name(db.name + "-wal"))
    try:
        await _fault_then_recovery(h, fault, noticed_within=3)
    finally:
        await stop_harness(h)


# --- a held PostgreSQL lock ----------------------------------------------------------------


@contextlib.contextmanager
def _lock_held(dsn: str) -> Iterator[None]:
    """Another session takes the store's advisory lock in a transaction and keeps it."""
    import psycopg

    with psycopg.connect(dsn) as conn:  # not autocommit: the transaction stays open
        conn.execute(
            f"SELECT pg_advisory_xact_lock({_LOCK_SPACE}, 'audit_log'::regclass::oid::int4)"
        )
        try:
            yield
        finally:
            conn.rollback()


@pytest.mark.slow
async def test_held_postgres_lock_turns_health_not_serving_and_back(
    tmp_path: Path, softhsm: Any, clock: Clock, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    audit = f'store = "postgres"\ndsn_env = "{DSN_ENV}"'
    path = _config(tmp_path / "signer", softhsm, 0.5, audit=audit)
    h = await start_harness(path, clock)
    try:
        # The probe waits 5 s for the lock, as a Sign does, then fails.
        await _fault_then_recovery(h, _lock_held(postgres_dsn), noticed_within=8)
    finally:
        await stop_harness(h)


# --- a failing Sign: at once, not at the next probe -----------------------------------


@contextlib.contextmanager
def _moved_away(db: Path) -> Iterator[None]:
    """The database file renamed while open: the store refuses to commit (no root needed)."""
    away = db.with_name("moved-away.db")
    db.rename(away)
    try:
        yield
    finally:
        away.rename(db)


async def test_failing_sign_turns_health_not_serving_before_the_next_probe(
    tmp_path: Path, softhsm: Any, clock: Clock
) -> None:
    # No periodic probe runs during the test: only the failing Sign can say it.
    path = _config(tmp_path / "signer", softhsm, 300)
    h = await start_harness(path, clock)
    try:
        await h.create_key("k")
        await h.sign("k", h.payloads.timestamp(1))
        with _moved_away(h.config.audit.path):
            await _sign_fails_unavailable(h, 2)
            assert await _status(h) == NOT_SERVING
        recovered = await _wait_for(h, SERVING, RECOVERY_BOUND)
        assert recovered < RECOVERY_BOUND
        await h.sign("k", h.payloads.timestamp(3))
    finally:
        await stop_harness(h)


# --- a hung store: the call's deadline is a fault too ---------------------------------------


async def test_sign_past_the_deadline_on_a_hung_store_turns_health_not_serving(
    tmp_path: Path, softhsm: Any, clock: Clock, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    audit = f'store = "postgres"\ndsn_env = "{DSN_ENV}"'
    # No periodic probe during the test (300 s); the store waits 5 s for its
    # lock, longer than the call may run (1.5 s): the Sign hits the deadline.
    path = _config(tmp_path / "signer", softhsm, 300, audit=audit)
    path.write_text(
        path.read_text().replace(
            "drain_seconds = 5\n", "drain_seconds = 5\ncall_deadline_seconds = 1.5\n"
        )
    )
    h = await start_harness(path, clock)
    try:
        await h.create_key("k")
        await h.sign("k", h.payloads.timestamp(1))
        with _lock_held(postgres_dsn):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await h.sign("k", h.payloads.timestamp(2))
            assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert await _status(h) == NOT_SERVING
        # The probe waits for the lock the Sign left waiting, then passes.
        await _wait_for(h, SERVING, RECOVERY_BOUND + 8)
        await h.sign("k", h.payloads.timestamp(3))
    finally:
        await stop_harness(h)
