"""The README walkthrough, run for real: dev-init, serve, sign, rollback, rotate, verify."""

from __future__ import annotations

import json
import sqlite3
import stat

import pytest
from securesystemslib.signer import Signature, SSlibKey

from .conftest import DevSigner, run


def payload(kind: str, version: int) -> bytes:
    return run("dev-payload", kind, "--version", str(version)).stdout.encode()


def active_key(signer: DevSigner) -> dict:
    keys = json.loads(run("keys", "list", "--json", "--server", signer.address).stdout)
    (online,) = [k for k in keys if k["name"] == "online"]
    (active,) = [v for v in online["versions"] if v["state"] == "ACTIVE"]
    return active


def test_dev_init_layout(dev_signer: DevSigner) -> None:
    d = dev_signer.directory
    for name in ("hsm.pin", "hsm.so-pin"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
        assert (d / name).read_text().strip() not in dev_signer.config.read_text()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    key = active_key(dev_signer)
    assert key["public_key"]["keytype"] == "ed25519"
    assert key["version"] == 1


def test_walkthrough(dev_signer: DevSigner, tmp_path) -> None:
    server = ["--server", dev_signer.address]
    ts2 = tmp_path / "timestamp-2.json"
    ts2.write_bytes(payload("timestamp", 2))

    # Sign a timestamp: the signature verifies against the listed public key.
    sig = json.loads(run("sign", *server, "--key", "online", str(ts2)).stdout)
    key = active_key(dev_signer)
    assert sig["keyid"] == key["keyid"]
    SSlibKey.from_dict(key["keyid"], key["public_key"]).verify_signature(
        Signature(sig["keyid"], sig["sig"]), ts2.read_bytes()
    )

    # A rollback to version 1 is refused, naming the high-water version.
    rolled = run(
        "sign", *server, "--key", "online", "-", stdin=payload("timestamp", 1), check=False
    )
    assert rolled.returncode == 1
    assert "FAILED_PRECONDITION" in rolled.stderr and "version 2" in rolled.stderr
    assert rolled.stdout == ""

    # Rotate: the new version is PENDING with a public key for root, then activated.
    new = json.loads(run("keys", "rotate", *server, "online").stdout)
    assert new["state"] == "PENDING" and new["public_key"]["keyval"]["public"]
    run("keys", "activate", *server, "online", "2", "--expected-keyid", new["keyid"])
    sig3 = json.loads(
        run("sign", *server, "--key", "online", "-", stdin=payload("timestamp", 3)).stdout
    )
    assert sig3["keyid"] == new["keyid"]

    # The listing shows v1 RETIRED and v2 ACTIVE.
    table = run("keys", "list", *server).stdout
    assert "RETIRED" in table and "ACTIVE" in table

    # The audit log verifies and shows every decision, the refusal included.
    ok = run("audit", "verify", "--config", str(dev_signer.config))
    assert ok.stdout.startswith("OK:")
    tail = run("audit", "tail", "--config", str(dev_signer.config), "-n", "50").stdout
    assert "refused" in tail and "rotate-key" in tail and "create-key" in tail
    exported = [
        json.loads(line)
        for line in run("audit", "export", "--config", str(dev_signer.config)).stdout.splitlines()
    ]
    assert [r["seq"] for r in exported] == list(range(1, len(exported) + 1))
    assert dev_signer.stop() == 0


def test_server_from_environment(dev_signer: DevSigner) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    env["TUF_SIGNER_SERVER"] = dev_signer.address
    out = run("sign", "--key", "online", "-", stdin=payload("snapshot", 1), env=env)
    assert json.loads(out.stdout)["sig"]


def _sign_some(signer: DevSigner, n: int = 4) -> None:
    for v in range(1, n + 1):
        run(
            "sign",
            "--server",
            signer.address,
            "--key",
            "online",
            "-",
            stdin=payload("timestamp", v),
        )


TAMPER = {
    "edit-a-field": ("UPDATE audit_log SET role = 'snapshot' WHERE seq = 3", 3),
    "edit-the-outcome": ("UPDATE audit_log SET outcome = 'refused' WHERE seq = 2", 2),
    "delete-a-record": ("DELETE FROM audit_log WHERE seq = 3", 4),
    "reorder-records": (
        "UPDATE audit_log SET seq = CASE seq WHEN 2 THEN 3 WHEN 3 THEN 2 END WHERE seq IN (2, 3)",
        2,
    ),
    "truncate-the-tail": (
        "DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)",
        None,
    ),
}


@pytest.mark.parametrize(("sql", "seq"), list(TAMPER.values()), ids=list(TAMPER))
def test_tampering_is_detected(dev_signer: DevSigner, sql: str, seq: int | None) -> None:
    _sign_some(dev_signer)
    assert dev_signer.stop() == 0
    assert run("audit", "verify", "--config", str(dev_signer.config)).returncode == 0
    db = sqlite3.connect(dev_signer.directory / "audit.db")
    with db:
        if "seq = CASE" in sql:
            # Swap through a free seq to dodge the primary key.
            db.execute("UPDATE audit_log SET seq = -1 WHERE seq = 2")
            db.execute("UPDATE audit_log SET seq = 2 WHERE seq = 3")
            db.execute("UPDATE audit_log SET seq = 3 WHERE seq = -1")
        else:
            db.execute(sql)
    db.close()
    bad = run("audit", "verify", "--config", str(dev_signer.config), check=False)
    assert bad.returncode == 1
    assert bad.stderr.startswith("FAILED:")
    if seq is not None:
        assert f"record {seq}" in bad.stderr
