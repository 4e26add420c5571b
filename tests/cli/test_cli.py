"""The README walkthrough, run for real: dev-init, serve, sign, rollback, rotate, verify."""

from __future__ import annotations

import functools
import json
import sqlite3
import stat

import pytest
from securesystemslib.signer import Signature, SSlibKey

from .conftest import DevSigner, run


def payload(kind: str, version: int) -> bytes:
    return run("dev-payload", kind, "--version", str(version)).stdout.encode()


def active_key(signer: DevSigner) -> dict:
    keys = json.loads(signer.as_("admin", "keys", "list", "--json").stdout)
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
    backend = functools.partial(dev_signer.as_, "backend")
    admin = functools.partial(dev_signer.as_, "admin")
    ts2 = tmp_path / "timestamp-2.json"
    ts2.write_bytes(payload("timestamp", 2))

    # Sign a timestamp: the signature verifies against the listed public key.
    sig = json.loads(backend("sign", "--key", "online", str(ts2)).stdout)
    key = active_key(dev_signer)
    assert sig["keyid"] == key["keyid"]
    SSlibKey.from_dict(key["keyid"], key["public_key"]).verify_signature(
        Signature(sig["keyid"], sig["sig"]), ts2.read_bytes()
    )

    # A rollback to version 1 is refused, naming the high-water version.
    rolled = backend("sign", "--key", "online", "-", stdin=payload("timestamp", 1), check=False)
    assert rolled.returncode == 1
    assert "FAILED_PRECONDITION" in rolled.stderr and "version 2" in rolled.stderr
    assert rolled.stdout == ""

    # The backend identity may sign but not rotate; the admin may.
    denied = backend("keys", "rotate", "online", check=False)
    assert denied.returncode == 1
    assert "PERMISSION_DENIED" in denied.stderr
    new = json.loads(admin("keys", "rotate", "online").stdout)
    assert new["state"] == "PENDING" and new["public_key"]["keyval"]["public"]
    admin("keys", "activate", "online", "2", "--expected-keyid", new["keyid"])
    sig3 = json.loads(backend("sign", "--key", "online", "-", stdin=payload("timestamp", 3)).stdout)
    assert sig3["keyid"] == new["keyid"]

    # The listing shows v1 RETIRED and v2 ACTIVE.
    table = admin("keys", "list").stdout
    assert "RETIRED" in table and "ACTIVE" in table

    # The audit log verifies and shows every decision, the refusals included.
    ok = run("audit", "verify", "--config", str(dev_signer.config))
    assert ok.stdout.startswith("OK:")
    tail = run("audit", "tail", "--config", str(dev_signer.config), "-n", "50").stdout
    assert "refused" in tail and "rotate-key" in tail and "create-key" in tail
    assert "uri:spiffe://tuf-signer.dev/backend" in tail  # typed identities are on the record
    exported = [
        json.loads(line)
        for line in run("audit", "export", "--config", str(dev_signer.config)).stdout.splitlines()
    ]
    assert [r["seq"] for r in exported] == list(range(1, len(exported) + 1))
    assert dev_signer.stop() == 0


def test_client_options_on_the_command_line(dev_signer: DevSigner) -> None:
    tls = dev_signer.directory / "tls"
    common = ["--server", dev_signer.address, "--ca", str(tls / "ca.crt")]
    out = run(
        "sign",
        *common,
        "--cert", str(tls / "backend.crt"),
        "--tls-key", str(tls / "backend.key"),
        "--key", "online",
        "-",
        stdin=payload("snapshot", 1),
    )  # fmt: skip
    assert json.loads(out.stdout)["sig"]
    listed = run(
        "keys", "list", *common, "--cert", str(tls / "admin.crt"), "--key", str(tls / "admin.key")
    )
    assert "online" in listed.stdout


def test_plaintext_client_cannot_reach_the_dev_signer(dev_signer: DevSigner) -> None:
    out = run(
        "sign", "--server", dev_signer.address, "--key", "online", "-",
        stdin=payload("snapshot", 1), check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert "UNAVAILABLE" in out.stderr
    assert out.stdout == ""


def _sign_some(signer: DevSigner, n: int = 4) -> None:
    for v in range(1, n + 1):
        signer.as_("backend", "sign", "--key", "online", "-", stdin=payload("timestamp", v))


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


def test_keys_declare_their_hash_bins(dev_signer: DevSigner) -> None:
    """Issue 10, finding 1: --bins PREFIX:BIT_LENGTH on create, shown by keys list."""
    admin = functools.partial(dev_signer.as_, "admin")
    # dev-init's online key declares PEP 458's bins:14, with the exact pattern.
    keys = {k["name"]: k for k in json.loads(admin("keys", "list", "--json").stdout)}
    assert keys["online"]["bins"] == {"prefix": "bins", "bit_length": 14}
    assert "bins-[0-3][0-9a-f][0-9a-f][0-9a-f]" in {r["pattern"] for r in keys["online"]["roles"]}

    created = json.loads(
        admin(
            "keys", "create", "hb", "--role", "timestamp", "--role", "hb-[0-9a-f]",
            "--bins", "hb:4", "--activate",
        ).stdout
    )  # fmt: skip
    assert created["bins"] == {"prefix": "hb", "bit_length": 4}
    table = admin("keys", "list").stdout.splitlines()
    assert "BINS" in table[0]
    assert any(line.split()[0] == "online" and "bins:14" in line.split() for line in table)
    assert any(line.split()[0] == "hb" and "hb:4" in line.split() for line in table)

    # A glob without a declaration says how to declare one.
    glob = admin("keys", "create", "x", "--role", "bins-*", check=False)
    assert glob.returncode == 1
    assert "INVALID_ARGUMENT" in glob.stderr and "--bins PREFIX:BIT_LENGTH" in glob.stderr
    # A glob wider than the declared bins is refused, naming the exact pattern.
    wide = admin("keys", "create", "y", "--role", "bins-*", "--bins", "bins:14", check=False)
    assert "use 'bins-[0-3][0-9a-f][0-9a-f][0-9a-f]'" in wide.stderr
    # A malformed value names the flag (and nothing is sent).
    bad = admin("keys", "create", "z", "--role", "timestamp", "--bins", "bins14", check=False)
    assert bad.returncode == 2
    assert "argument --bins: bins 'bins14' is not PREFIX:BIT_LENGTH" in bad.stderr
