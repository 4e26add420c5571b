"""Runbook "Back up and restore the store and the SoftHSM token" (docs/runbooks.md), performed.

A dev signer with its witness running: a backup is taken (the store with
SQLite's online backup, the token directory while the signer is stopped), the
signer signs on, the witness cosigns, and then the backup is restored. The
restored store is older than what the witness cosigned, so the signer refuses
to sign (its role marks went back with the store: signing now could sign a
rollback). Restoring the newest copy lets it sign again with the same key.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli.conftest import CLI, _env, credentials, wait_healthy
from tests.conftest import free_port

from .conftest import DevSigner, payload, run


def backup(directory: Path, to: Path) -> None:
    """Runbook "Back up", steps 1-2: the store online, the token with the signer stopped."""
    to.mkdir()
    # SQLite's online backup API (`sqlite3 audit.db ".backup FILE"`): a consistent copy
    # even while the signer writes; a plain `cp` of a WAL database is not.
    with sqlite3.connect(directory / "audit.db") as src, sqlite3.connect(to / "audit.db") as dst:
        src.backup(dst)
    src.close()
    dst.close()
    shutil.copytree(directory / "tokens", to / "tokens")


def restore(directory: Path, copy: Path) -> None:
    """Runbook "Restore", step 2: with the signer stopped, put the copy in place."""
    for name in ("audit.db", "audit.db-wal", "audit.db-shm"):
        (directory / name).unlink(missing_ok=True)
    shutil.copy2(copy / "audit.db", directory / "audit.db")
    (directory / "audit.db").chmod(0o600)
    shutil.rmtree(directory / "tokens")
    shutil.copytree(copy / "tokens", directory / "tokens")


def _serve(directory: Path, config: Path, address: str) -> DevSigner:
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    return DevSigner(directory, config, address, proc)


def _wait_cosigned(config: Path, size: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        note = run("audit", "checkpoint", "--config", str(config), check=False).stdout
        lines = note.split("\n")
        if len(lines) > 2 and lines[1] == str(size) and "— tuf-signer.dev/witness " in note:
            return
        time.sleep(0.2)
    raise AssertionError(f"the witness did not cosign a checkpoint of size {size}")


@pytest.mark.slow
def test_backup_and_restore_with_a_witness(tmp_path: Path) -> None:
    directory = tmp_path / "dev"
    address, witness_at = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = Path(
        run(
            "dev-init", str(directory), "--listen", address, "--witness-listen", witness_at
        ).stdout.strip()
    )
    witness = subprocess.Popen(
        [*CLI, "witness", "serve", "--config", str(directory / "witness.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    signers: list[DevSigner] = []

    def start() -> DevSigner:
        signer = _serve(directory, config, address)
        signers.append(signer)
        return signer

    try:
        signer = start()
        wait_healthy(address, signer.proc, credentials(directory, "admin"))
        sign = ("sign", "--key", "online", "-")
        first = json.loads(signer.as_("backend", *sign, stdin=payload("snapshot", 1)).stdout)
        assert signer.stop() == 0
        backup(directory, tmp_path / "backup-1")  # the nightly backup

        signer = start()
        wait_healthy(address, signer.proc, credentials(directory, "admin"))
        signer.as_("backend", *sign, stdin=payload("snapshot", 2))
        signer.as_("backend", *sign, stdin=payload("timestamp", 2))
        tail = run("audit", "tail", "-n", "1", "--json", "--config", str(config)).stdout
        head = json.loads(tail)["seq"]
        _wait_cosigned(config, head)
        assert signer.stop() == 0
        backup(directory, tmp_path / "backup-2")  # the newest copy

        # The disaster: the host is rebuilt from the nightly backup.
        restore(directory, tmp_path / "backup-1")
        signer = start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = signer.as_("backend", *sign, stdin=payload("snapshot", 2), check=False)
            if "behind witness" in out.stderr:
                break
            time.sleep(0.2)
        # Without the halt, snapshot 2 would be signed a second time (or, with another
        # payload, an equivocation): the restored marks no longer know it was signed.
        assert out.returncode == 1
        assert "UNAVAILABLE" in out.stderr
        assert "behind witness" in out.stderr
        assert signer.stop() == 0

        # Recovery: the newest copy, which holds every record the witness cosigned.
        restore(directory, tmp_path / "backup-2")
        signer = start()
        wait_healthy(address, signer.proc, credentials(directory, "admin"))
        refused = signer.as_("backend", *sign, stdin=payload("snapshot", 1), check=False)
        assert "rollback" in refused.stderr  # the marks are back
        signed = json.loads(signer.as_("backend", *sign, stdin=payload("snapshot", 3)).stdout)
        assert signed["keyid"] == first["keyid"]  # the restored token holds the same key
        assert signer.stop() == 0
        assert run("audit", "verify", "--config", str(config)).stdout.startswith("OK: ")
    finally:
        for signer in signers:
            signer.stop()
        witness.terminate()
        witness.wait(timeout=30)
