"""README "The audit log in five more minutes", run for real (issue 13).

dev-init's witness, a real `tuf-signer serve`, then: sign, prove, verify offline
against a kept checkpoint and the witness, restore an old copy of the store,
see verification fail and the restarted signer refuse the rollback it would allow.
"""

from __future__ import annotations

import functools
import json
import shutil
import socket
import subprocess
import time
import tomllib
from pathlib import Path

from tuf_signer.audit import SqliteAuditStore, record_leaf
from tuf_signer.audit._checkpoint import parse_tlog_proof, verify_tlog_proof
from tuf_signer.audit._merkle import leaf_hash
from tuf_signer.audit._note import parse_verifier_key
from tuf_signer.audit._proofs import merkle_inclusion

from .conftest import CLI, DevSigner, _env, credentials, run, serve, wait_healthy
from .test_cli import payload

SOON = 20.0


def _witness(dev: DevSigner) -> subprocess.Popen:
    config = dev.directory / "witness.toml"
    listen = tomllib.loads(config.read_text())["witness"]["listen"]
    host, port = listen.rsplit(":", 1)
    proc = subprocess.Popen(
        [*CLI, "witness", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    end = time.monotonic() + SOON
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < end, "the witness did not start"
            time.sleep(0.05)


def _until_covered(admin: functools.partial, seq: int) -> str:
    """The newest checkpoint once it covers record ``seq`` and the witness cosigned it."""
    end = time.monotonic() + SOON
    while True:
        note = admin("audit", "checkpoint").stdout
        size = int(note.splitlines()[1])
        if size >= seq and note.count("\u2014 ") >= 2:
            return note
        assert time.monotonic() < end, f"no cosigned checkpoint covers record {seq}"
        time.sleep(0.2)


def test_audit_walkthrough(dev_signer: DevSigner, tmp_path: Path) -> None:
    witness = _witness(dev_signer)
    try:
        backend = functools.partial(dev_signer.as_, "backend")
        admin = functools.partial(dev_signer.as_, "admin")
        config = str(dev_signer.config)
        # 6. Sign, and fetch the proof that the signature is in the log.
        signed = json.loads(
            backend(
                "sign", "--key", "online", "--verbose", "-", stdin=payload("timestamp", 4)
            ).stdout
        )
        seq = signed["audit_seq"]
        # A checkpoint on demand covers the new record at once.
        fresh = admin("audit", "checkpoint", "--fresh").stdout
        assert int(fresh.splitlines()[1]) == seq
        _until_covered(admin, seq)
        proof = admin("audit", "prove", "--seq", str(seq)).stdout.encode()
        vkey = admin("audit", "verifier-key").stdout.strip()
        store = SqliteAuditStore(dev_signer.directory / "audit.db")
        try:
            leaf = record_leaf(next(iter(store.records(seq))))
        finally:
            store.close()
        witness_vkey = run(
            "witness", "verifier-key", "--config", str(dev_signer.directory / "witness.toml")
        )
        verify_tlog_proof(
            parse_tlog_proof(proof),
            leaf_hash=leaf_hash(leaf),
            origin="tuf-signer.dev/audit",
            log_key=parse_verifier_key(vkey),
            verify_inclusion=merkle_inclusion,
            cosigners=[parse_verifier_key(witness_vkey.stdout.strip())],
            quorum=1,
        )
        (tmp_path / "log.vkey").write_text(vkey + "\n")
        kept = tmp_path / "kept.note"
        kept.write_text(admin("audit", "checkpoint").stdout)
        # 7. Verify offline against the kept checkpoint and the witness's own.
        ok = run(
            "audit", "verify", "--config", config, "--vkey-file", str(tmp_path / "log.vkey"),
            "--checkpoint", str(kept), "--from-witnesses",
        )  # fmt: skip
        assert ok.stdout.startswith("OK:") and "kept.note" in ok.stdout
        # 8. Restore an old copy of the store.
        assert dev_signer.stop() == 0
        old = tmp_path / "old-audit.db"
        shutil.copy(dev_signer.directory / "audit.db", old)
        dev_signer.proc = serve(dev_signer.config)
        wait_healthy(
            dev_signer.address, dev_signer.proc, credentials(dev_signer.directory, "admin")
        )
        later = json.loads(
            backend(
                "sign", "--key", "online", "--verbose", "-", stdin=payload("timestamp", 5)
            ).stdout
        )
        kept.write_text(_until_covered(admin, later["audit_seq"]))
        assert dev_signer.stop() == 0
        shutil.copy(old, dev_signer.directory / "audit.db")
        failed = run(
            "audit", "verify", "--config", config, "--vkey-file", str(tmp_path / "log.vkey"),
            "--checkpoint", str(kept), check=False,
        )  # fmt: skip
        assert failed.returncode == 1
        assert f"the store holds {seq} records but checkpoint" in failed.stderr
        assert "older copy" in failed.stderr
        dev_signer.proc = serve(dev_signer.config)
        end = time.monotonic() + SOON
        while True:  # health is NOT_SERVING: wait for the listener, not for SERVING
            refused = backend(
                "sign", "--key", "online", "-", stdin=payload("timestamp", 5), check=False
            )
            if "the audit store is behind witness" in refused.stderr:
                break
            assert time.monotonic() < end, refused.stderr
            time.sleep(0.2)
        assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr
        assert refused.stdout == ""
    finally:
        witness.terminate()
        witness.wait(10)
