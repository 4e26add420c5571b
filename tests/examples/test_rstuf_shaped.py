"""A repository shaped like RSTUF signs through tuf-signer with no change (issue 14).

A real signer (``tuf-signer dev-init`` then ``serve``: mutual TLS, SoftHSM,
SQLite, ``[policy] activate_on_pinned_sign = true``) and fresh worker processes
(``rstuf_shaped_worker.py``) whose environment holds only ``ONLINE_KEY_DIR`` and
``PATH``: a worker never imports ``tuf_signer``, finds the ``tufsigner:`` scheme
through the installed ``.pth`` hook and its server and TLS files in
``$ONLINE_KEY_DIR/tuf-signer-client.toml`` (written by dev-init), builds one
signer per keyid, and signs every online role with it: top-level targets, every
bin from 8 threads, snapshot and timestamp. python-tuf's ngclient verifies the
repository after every round:

1. bootstrap; 2. targets added, their bins bumped; 3. a round whose signer
stops after the bins fails, and its retry after a restart heals; 4. a rotation
(PENDING version in root v2 first) with no refused Sign; 5. a bin rollback and
two snapshot rollbacks through the same signer are refused.

``make test`` runs it with 16 bins. PEP 458 scale (the dev key ``online``,
16,384 bins) takes longer:

    TUF_SIGNER_RSTUF_BITS=14 .venv/bin/pytest tests/examples/test_rstuf_shaped.py -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from examples.pep458_repository import fetch_with_ngclient, serve

from tuf_signer.cli._devinit import DEV_KEY
from tuf_signer.client import Client
from tuf_signer.model import BinsDelegation
from tuf_signer.policy import bins_pattern, delegations_digest

from ..cli.conftest import DevSigner, credentials, run, wait_healthy
from ..cli.conftest import serve as serve_signer
from ..conftest import free_port
from .rstuf_shaped_worker import bins_delegations, online_key

WORKER = Path(__file__).with_name("rstuf_shaped_worker.py")
BITS = int(os.environ.get("TUF_SIGNER_RSTUF_BITS", "4"))
SMALL_KEY = "rstuf"
YEAR = 365 * 86400  # RSTUF signs top-level targets online, valid 365 days by default


@pytest.fixture
def rstuf_signer(tmp_path: Path) -> Iterator[DevSigner]:
    """dev-init's signer; its backend may also use the key ``rstuf`` and sign ``targets``."""
    directory = tmp_path / "dev"
    address = f"127.0.0.1:{free_port()}"
    witness = f"127.0.0.1:{free_port()}"
    config = Path(
        run("dev-init", str(directory), "--listen", address, "--witness-listen", witness)
        .stdout.strip()
        .splitlines()[-1]
    )
    text = config.read_text()
    rules = f'keys = ["{DEV_KEY}"]\nroles = ["timestamp", "snapshot", "bins-*"]'
    assert text.count(rules) == 1, "dev-init's backend rule changed: update this fixture"
    assert "[policy]" not in text, "dev-init writes [policy] now: update this fixture"
    text = text.replace(
        rules,
        f'keys = ["{DEV_KEY}", "{SMALL_KEY}"]\n'
        'roles = ["timestamp", "snapshot", "bins-*", "targets"]',
    )
    config.write_text(text + "\n[policy]\nactivate_on_pinned_sign = true\n")
    signer = DevSigner(directory, config, address, serve_signer(config))
    try:
        wait_healthy(address, signer.proc, credentials(directory, "admin"))
        yield signer
    finally:
        signer.stop()


def _worker_command(s: DevSigner, job: Path, fields: dict[str, object]) -> dict[str, object]:
    job.write_text(json.dumps(fields))
    return {
        "args": [sys.executable, str(WORKER), str(job)],
        "env": {"ONLINE_KEY_DIR": str(s.directory), "PATH": os.environ.get("PATH", "")},
        "cwd": job.parent,
    }


def run_worker(s: DevSigner, job: Path, **fields: object) -> dict[str, Any]:
    """One worker task in a fresh process: environment ``ONLINE_KEY_DIR`` and ``PATH`` only."""
    worker = subprocess.run(
        **_worker_command(s, job, fields),  # type: ignore[call-overload]
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert worker.returncode == 0, worker.stderr
    return json.loads(worker.stdout)  # type: ignore[no-any-return]


def _admin(s: DevSigner) -> Client:
    tls = s.directory / "tls"
    return Client(
        s.address, ca=tls / "ca.crt", cert=tls / "admin.crt", key=tls / "admin.key", timeout=60
    )


def _states(s: DevSigner, key: str) -> dict[str, int]:
    with _admin(s) as admin:
        return {st["role"]: st["version"] for st in admin.role_state(key)}


def _records_after(s: DevSigner, seq: int) -> list[dict[str, Any]]:
    with _admin(s) as admin:
        page = admin.audit_records(start_seq=seq + 1, limit=1000)
    return [r["event"] for r in page["records"]]


def _head(s: DevSigner) -> int:
    with _admin(s) as admin:
        return admin.audit_records(start_seq=1, limit=1)["head_seq"]


@pytest.mark.slow
def test_an_rstuf_shaped_worker_signs_through_the_plugin_unchanged(
    rstuf_signer: DevSigner, tmp_path: Path
) -> None:
    s = rstuf_signer
    settings = (s.directory / "tuf-signer-client.toml").read_text()
    assert 'ca = "tls/ca.crt"' in settings and 'cert = "tls/backend.crt"' in settings
    key = DEV_KEY if BITS == 14 else SMALL_KEY  # dev-init's key declares PEP 458's bins:14
    pattern = bins_pattern(BinsDelegation("bins", BITS))
    with _admin(s) as admin:
        if key == SMALL_KEY:
            rules = [("timestamp", 86400), ("snapshot", 86400), (pattern, 86400)]
            admin.create_key(key, rules, activate=True, bins=f"bins:{BITS}")
    # The online key may sign top-level targets, valid a year: the admin edits its rules.
    s.as_(
        "admin", "keys", "set-rules", key,
        "--role", "timestamp:86400", "--role", "snapshot:86400",
        "--role", f"{pattern}:86400", "--role", f"targets:{YEAR}",
        "--reason", "RSTUF signs top-level targets online (TARGETS_ONLINE_KEY)",
    )  # fmt: skip
    with _admin(s) as admin:
        (info,) = admin.public_keys(key)
    (active,) = [v for v in info["versions"] if v["state"] == "ACTIVE"]
    out = tmp_path / "repo"
    job = {
        "keyid": active["keyid"],
        "public_key": active["public_key"],
        # No HOST:PORT and no role: the settings file names the server,
        # and the server tells each bin by its target paths.
        "uri": f"tufsigner:///{key}",
        "bit_length": BITS,
        "root_seed": os.urandom(32).hex(),
        "targets": 3 * 2**BITS,
        "added": 5,
        "out": str(out),
    }
    start = time.perf_counter()
    report = run_worker(s, tmp_path / "bootstrap.json", **job, round="bootstrap")
    wall = time.perf_counter() - start
    print(f"\nRSTUF-shaped worker, {2**BITS} bins: {wall:.1f} s wall; {report}")

    assert report["tuf_signer_modules_at_start"] == []
    assert report["env_when_built"] == ["ONLINE_KEY_DIR"]
    assert report["signer_class"] == "TufSignerSigner"
    assert report["signers_built"] == 1  # one signer, every role, top-level targets included
    assert report["bins"] == 2**BITS
    assert report["sign_threads"] == min(8, 2**BITS)
    assert report["signatures"] == report["targets_signatures"] == [active["keyid"]]

    # The signer's record: targets, every bin, snapshot and timestamp at version 1.
    states = _states(s, key)
    bins = {r for r in states if r.startswith("bins-") and "*" not in r}
    assert states["targets"] == states["snapshot"] == states["timestamp"] == 1
    # Empty bins are attributed to their payload, not to a bin (policy/_coherence).
    assert len(bins) <= 2**BITS and all(states[b] == 1 for b in bins)

    # A client that trusts only the first root verifies everything and downloads.
    first = published(out)
    assert len(first) == 3 * 2**BITS
    sample = dict(sorted(first.items())[:64])
    client = tmp_path / "client"
    with serve(out) as url:
        view = fetch_with_ngclient(
            url, client, sample, (out / "metadata" / "1.root.json").read_bytes()
        )
        assert (view.root_version, view.timestamp_version, view.snapshot_version) == (1, 1, 1)
        assert len(view.downloaded) == len(sample) == min(64, 3 * 2**BITS)

        # A later task, in a new process: targets added, their bins bumped, snapshot, timestamp.
        later = run_worker(s, tmp_path / "add.json", **job, round="add")
        assert later["tuf_signer_modules_at_start"] == []
        assert later["signers_built"] == 1 and later["env_when_built"] == ["ONLINE_KEY_DIR"]
        assert later["snapshot_version"] == 2 and 1 <= later["changed_bins"] <= 5
        added = {p: d for p, d in published(out).items() if p not in first}
        assert len(added) == 5
        view = fetch_with_ngclient(url, client, added, None)  # a returning client
        assert (view.timestamp_version, view.snapshot_version) == (2, 2)
        states = _states(s, key)
        assert states["snapshot"] == states["timestamp"] == 2
        assert (
            sum(v == 2 for r, v in states.items() if r.startswith("bins-")) == later["changed_bins"]
        )

        # A failed round: the signer stops after the bins, the snapshot's Sign fails
        # (the plugin retries UNAVAILABLE until the task's time limit ends it). The
        # signer restarts, the task is retried and heals: the stored bins are listed,
        # nothing is signed twice with other content.
        before = dict(states)
        pause = tmp_path / "pause"
        fields = dict(job, round="add", targets=job["targets"] + 5, pause=str(pause), time_limit=3)
        failing = subprocess.Popen(
            **_worker_command(s, tmp_path / "failing.json", fields),  # type: ignore[call-overload]
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not Path(f"{pause}.reached").exists():
            assert failing.poll() is None and time.monotonic() < deadline, failing.stderr
            time.sleep(0.05)
        assert s.stop() == 0
        Path(f"{pause}.go").touch()
        stdout, stderr = failing.communicate(timeout=60)
        assert failing.returncode == 3, stderr
        assert json.loads(stdout.splitlines()[-1]) == {"failed": "time limit 3 s"}
        s.proc = serve_signer(s.config)
        wait_healthy(s.address, s.proc, credentials(s.directory, "admin"))
        states = _states(s, key)
        bumped = {r for r, v in states.items() if r.startswith("bins-") and v > before.get(r, 0)}
        assert bumped and (states["snapshot"], states["timestamp"]) == (2, 2)  # the round failed
        retried = run_worker(s, tmp_path / "retry.json", **fields | {"pause": "", "time_limit": 0})
        assert retried["changed_bins"] == 0 and retried["published"] is True
        assert retried["snapshot_version"] == 3
        healed = {p: d for p, d in published(out).items() if p not in first and p not in added}
        assert len(healed) == 5
        view = fetch_with_ngclient(url, client, healed, None)
        assert (view.timestamp_version, view.snapshot_version) == (3, 3)
        assert _states(s, key) == states | {"snapshot": 3, "timestamp": 3}

        # Rotation with no refused Sign: the PENDING version first, root v2 lists it,
        # the first Sign pinned to its keyid activates it (activate_on_pinned_sign).
        with _admin(s) as admin:
            pending = admin.rotate_key(key)
        assert pending["state"] == "PENDING"
        head = _head(s)
        # Until the worker accepted root v2 it pins the old keyid: still signs.
        run_worker(
            s, tmp_path / "add2.json", **job | {"round": "add", "targets": job["targets"] + 10}
        )
        # The bins move to the new key: the changed delegations of targets, approved first.
        assert pending["public_key"] is not None
        new_key = online_key(pending["keyid"], pending["public_key"], job["uri"])
        digest = delegations_digest({"delegations": bins_delegations(new_key, BITS).to_dict()})
        s.as_(
            "admin", "keys", "approve-delegations", key, "targets", digest,
            "--reason", "rotation: the bins move to the new online key",
        )  # fmt: skip
        rotated = run_worker(
            s,
            tmp_path / "rotate.json",
            **job,
            round="rotate",
            new_keyid=pending["keyid"],
            new_public_key=pending["public_key"],
        )
        assert rotated["root_version"] == 2 and rotated["signatures"] == [pending["keyid"]]
        events = _records_after(s, head)
        signs = [e for e in events if e["operation"] == "sign"]
        assert signs and {e["outcome"] for e in events} == {"granted"}, events
        activation = [e for e in events if e["operation"] == "activate-key-version"]
        assert len(activation) == 1 and "activate_on_pinned_sign" in activation[0]["detail"]["by"]
        with _admin(s) as admin:
            (info,) = admin.public_keys(key)
        assert [v["state"] for v in info["versions"]] == ["RETIRED", "ACTIVE"]
        view = fetch_with_ngclient(url, client, {}, None)  # the returning client follows root v2
        assert view.root_version == 2 and view.snapshot_version == rotated["snapshot_version"]

        # Rollbacks through the same signer: refused, with status and reason; nothing moves.
        states = _states(s, key)
        head = _head(s)
        attack = run_worker(
            s, tmp_path / "attack.json", **job | new_key_fields(pending), round="attack"
        )
        assert attack["signers_built"] == 1
        listed = attack["listed"]
        bin_rollback = attack["bin_rollback"]
        assert bin_rollback["code"] == "FAILED_PRECONDITION"
        assert bin_rollback["reason"].startswith(f"rollback: version {listed - 1} is not above")
        assert repr(attack["bin"]) in bin_rollback["reason"]
        snapshot_rollback = attack["snapshot_lists_bin_rollback"]
        assert snapshot_rollback["code"] == "FAILED_PRECONDITION"
        assert (
            f"lists {attack['bin']!r} at version {listed - 1}, below version {listed}"
            in snapshot_rollback["reason"]
        )
        ts_rollback = attack["timestamp_snapshot_rollback"]
        snap = rotated["snapshot_version"]
        assert ts_rollback["code"] == "FAILED_PRECONDITION"
        assert f"names snapshot version {snap - 1}, below version {snap}" in ts_rollback["reason"]
        assert _states(s, key) == states
        refusals = [e for e in _records_after(s, head) if e["operation"] == "sign"]
        assert [e["outcome"] for e in refusals] == ["refused"] * 3, refusals
        view = fetch_with_ngclient(url, client, {}, None)
        assert view.snapshot_version == rotated["snapshot_version"]


def new_key_fields(version: Mapping[str, Any]) -> dict[str, Any]:
    """A job's key fields for a key version (``keyid``, ``public_key``)."""
    return {"keyid": version["keyid"], "public_key": version["public_key"]}


def published(out: Path) -> dict[str, bytes]:
    """Target path -> content of every target file the worker stored (``DIR/HASH.NAME``)."""
    files = {}
    for path in (out / "targets").rglob("*.tar.gz"):
        rel = path.relative_to(out / "targets")
        files[str(rel.parent / rel.name.split(".", 1)[1])] = path.read_bytes()
    return files
