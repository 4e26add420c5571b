"""Runbook "Move the store from SQLite to PostgreSQL" (docs/runbooks.md), performed.

A dev signer on SQLite signs and rotates and checkpoints its log; it is stopped,
``tuf-signer audit migrate`` copies the store into PostgreSQL, and the signer
starts again on PostgreSQL: the role marks still refuse a rollback, the rotated
key signs, and the copied log verifies with the same head and tree root.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tuf_signer.cli import _migrate

from .conftest import DevSigner, payload, restart, run

DSN_ENV = "TUF_SIGNER_TEST_MIGRATE_DSN"


def _postgres_config(signer: DevSigner) -> Path:
    """The dev config with ``[audit]`` on PostgreSQL (runbook step 2)."""
    text = signer.config.read_text()
    sqlite = 'store = "sqlite"\npath = "audit.db"\n'
    assert sqlite in text
    config = signer.config.with_name("tuf-signer-pg.toml")
    config.write_text(text.replace(sqlite, f'store = "postgres"\ndsn_env = "{DSN_ENV}"\n'))
    return config


def _checkpoint_count(config: Path, env: dict[str, str]) -> str:
    return run("audit", "checkpoint", "--config", str(config), env=env).stdout


@pytest.mark.slow
def test_migrate_a_signing_store_to_postgres(
    dev_signer: DevSigner, postgres_dsn: str, signers: list[DevSigner]
) -> None:
    sign = ("sign", "--key", "online", "-")
    dev_signer.as_("backend", *sign, stdin=payload("snapshot", 5))
    dev_signer.as_("backend", *sign, stdin=payload("timestamp", 5))
    rotated = json.loads(dev_signer.as_("admin", "keys", "rotate", "online").stdout)
    dev_signer.as_("admin", "keys", "activate", "online", "2", "--expected-keyid", rotated["keyid"])
    refused = dev_signer.as_("backend", *sign, stdin=payload("timestamp", 4), check=False)
    assert "rollback" in refused.stderr
    time.sleep(1.5)  # audit.checkpoint_interval_seconds = 1: the log signs a checkpoint
    assert dev_signer.stop() == 0
    before = run("audit", "verify", "--config", str(dev_signer.config)).stdout
    assert before.startswith("OK: ")
    checkpoint = run("audit", "checkpoint", "--config", str(dev_signer.config)).stdout
    assert checkpoint.startswith("tuf-signer.dev/audit\n")

    # Step 2-3: a config on PostgreSQL, then the copy.
    pg_config = _postgres_config(dev_signer)
    env = {**dev_signer.env("admin"), DSN_ENV: postgres_dsn}
    out = run(
        "audit", "migrate", "--from", str(dev_signer.config), "--to", str(pg_config), "--json",
        env=env,
    ).stdout  # fmt: skip
    result = json.loads(out)
    assert result["copied"]["keys"] == 1
    assert result["copied"]["key_versions"] == 2
    assert result["copied"]["role_state"] == 2
    assert result["copied"]["audit_checkpoints"] >= 1
    # The copy has the source's head and tree root, as `audit verify` computes them.
    assert f"head seq {result['head_seq']} hash {result['head_hash']}" in before
    assert f"tree root {result['root_hash']}" in before
    assert run("audit", "checkpoint", "--config", str(pg_config), env=env).stdout == checkpoint

    # A second run into the now full store is refused, and changes nothing.
    again = run(
        "audit", "migrate", "--from", str(dev_signer.config), "--to", str(pg_config), env=env,
        check=False,
    )  # fmt: skip
    assert again.returncode == 1
    assert "error: --to: the target store is not empty (audit_log holds" in again.stderr

    # Step 4: serve on PostgreSQL. The marks came along: a rollback is still refused.
    signer = restart(dev_signer, pg_config, env={DSN_ENV: postgres_dsn})
    signers.append(signer)
    backend = {**signer.env("backend"), DSN_ENV: postgres_dsn}
    refused = run(*sign, stdin=payload("timestamp", 4), env=backend, check=False)
    assert refused.returncode == 1
    assert "rollback: version 4 is not above version 5" in refused.stderr
    run(*sign, stdin=payload("snapshot", 6), env=backend)
    signed = json.loads(run(*sign, stdin=payload("timestamp", 6), env=backend).stdout)
    assert signed["keyid"] == rotated["keyid"]  # version 2, activated before the move
    assert signer.stop() == 0
    after = run("audit", "verify", "--config", str(pg_config), env=env).stdout
    assert after.startswith(f"OK: {result['records'] + 3} records")  # a refusal, two grants


def test_migrate_refuses_a_copy_that_differs(
    dev_signer: DevSigner, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check after the copy is real: a copy that lost rows is caught and named."""
    from tuf_signer.audit import open_audit_store
    from tuf_signer.config import load_audit_config
    from tuf_signer.errors import AuditChainError

    dev_signer.as_("backend", "sign", "--key", "online", "-", stdin=payload("snapshot", 2))
    assert dev_signer.stop() == 0
    pg_config = _postgres_config(dev_signer)
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    copy_table = _migrate._copy_table

    def lossy(src, dst, table, target):  # drops the last role state
        if table != "role_state":
            return copy_table(src, dst, table, target)
        src.execute("SELECT * FROM role_state")
        rows = src.fetchall()[:-1]
        columns = [d[0] for d in src.description]
        marks = ", ".join("%s" for _ in columns)
        dst.executemany(f"INSERT INTO role_state ({', '.join(columns)}) VALUES ({marks})", rows)
        return len(rows)

    monkeypatch.setattr(_migrate, "_copy_table", lossy)
    source = open_audit_store(load_audit_config(dev_signer.config), create=False)
    target = open_audit_store(load_audit_config(pg_config), create=True)
    try:
        with pytest.raises(AuditChainError, match="the copy of role_state differs"):
            _migrate.migrate(source, target)
    finally:
        source.close()
        target.close()


def test_migrate_refuses_another_origin(dev_signer: DevSigner, tmp_path: Path) -> None:
    assert dev_signer.stop() == 0
    other = dev_signer.config.with_name("other.toml")
    text = dev_signer.config.read_text()
    other.write_text(
        text.replace('path = "audit.db"', 'path = "other.db"').replace(
            'origin = "tuf-signer.dev/audit"', 'origin = "example.org/audit/2"'
        )
    )
    out = run("audit", "migrate", "--from", str(dev_signer.config), "--to", str(other), check=False)
    assert out.returncode == 1
    assert "audit.origin 'example.org/audit/2' differs" in out.stderr
    assert not other.with_name("other.db").exists()


def test_migrate_between_sqlite_files_and_not_onto_itself(dev_signer: DevSigner) -> None:
    """The copy is store-neutral: SQLite to SQLite works too, and a store is not its own target."""
    dev_signer.as_("backend", "sign", "--key", "online", "-", stdin=payload("snapshot", 7))
    assert dev_signer.stop() == 0
    same = run(
        "audit", "migrate", "--from", str(dev_signer.config), "--to", str(dev_signer.config),
        check=False,
    )  # fmt: skip
    assert same.returncode == 1
    assert "names the same store as --from" in same.stderr
    copy = dev_signer.config.with_name("copy.toml")
    copy.write_text(dev_signer.config.read_text().replace('path = "audit.db"', 'path = "copy.db"'))
    out = run("audit", "migrate", "--from", str(dev_signer.config), "--to", str(copy)).stdout
    assert out.startswith("OK: copied ")
    verify = [
        run("audit", "verify", "--config", str(c)).stdout.split(";")[0]
        for c in (dev_signer.config, copy)
    ]
    assert verify[0] == verify[1]
    assert "role_state" in out and "from sqlite " in out
