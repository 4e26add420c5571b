"""A real server on the PostgreSQL audit store, then the offline audit commands on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from tuf_signer.audit import open_audit_store
from tuf_signer.config import load_config

from .conftest import Clock, start_harness, stop_harness, write_config

DSN_ENV = "TUF_SIGNER_TEST_AUDIT_DSN"


def _audit(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuf_signer.cli", "audit", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )


async def test_sign_on_postgres_then_audit_verify(
    tmp_path: Path, softhsm: Any, clock: Clock, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "signer", softhsm)
    path.write_text(
        path.read_text().replace(
            '[audit]\npath = "audit.db"', f'[audit]\nstore = "postgres"\ndsn_env = "{DSN_ENV}"'
        )
    )
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    h = await start_harness(path, clock)
    try:
        await h.create_key("k")
        first = await h.sign("k", h.payloads.timestamp(1))
        second = await h.sign("k", h.payloads.timestamp(2))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await h.sign("k", h.payloads.timestamp(1, expires=h.payloads.expires(60)))
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await stop_harness(h)
    assert not (path.parent / "audit.db").exists()  # the record went to PostgreSQL

    with open_audit_store(load_config(path).audit, create=False) as store:
        records = list(store.records())
    signs = [r.event for r in records if r.event.operation == "sign"]
    assert [(e.metadata_version, e.outcome.value) for e in signs] == [
        (1, "granted"),
        (2, "granted"),
        (1, "refused"),
    ]
    assert [e.signature for e in signs[:2]] == [first.signature.sig, second.signature.sig]

    verify = _audit(path, "verify")
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith(f"OK: {len(records)} records, head seq {len(records)} ")
    export = _audit(path, "export")
    assert export.returncode == 0, export.stderr
    assert [json.loads(line)["hash"] for line in export.stdout.splitlines()] == [
        r.hash for r in records
    ]


def test_audit_verify_refuses_a_schema_without_a_record(
    tmp_path: Path, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A typo in the search_path must not "verify" an empty, freshly created record.
    path = tmp_path / "tuf-signer.toml"
    path.write_text(
        f'[audit]\nstore = "postgres"\ndsn_env = "{DSN_ENV}"\n\n'
        '[backends.h]\ntype = "pkcs11"\nmodule = "m"\ntoken_label = "t"\npin_env = "P"\n'
    )
    monkeypatch.setenv(DSN_ENV, postgres_dsn)
    verify = _audit(path, "verify")
    assert verify.returncode == 1
    assert "error: no tuf-signer audit tables" in verify.stderr
