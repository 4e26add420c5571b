"""A repository shaped like RSTUF signs through tuf-signer with no change (issue 14).

A real signer (``tuf-signer dev-init`` then ``serve``: mutual TLS, SoftHSM,
SQLite) and a fresh worker process (``rstuf_shaped_worker.py``) whose
environment holds only ``ONLINE_KEY_DIR`` and ``PATH``: it never imports
``tuf_signer``, finds the ``tufsigner:`` scheme through the installed ``.pth``
hook and its server and TLS files in ``$ONLINE_KEY_DIR/tuf-signer-client.toml``
(written by dev-init), builds one signer for the online keyid, and signs every
bin from 8 threads, then snapshot and timestamp. python-tuf's ngclient then
verifies the repository and downloads targets.

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
from collections.abc import Iterator
from pathlib import Path

import pytest
from examples.pep458_repository import fetch_with_ngclient, serve

from tuf_signer.cli._devinit import DEV_KEY
from tuf_signer.client import Client
from tuf_signer.model import BinsDelegation
from tuf_signer.policy import bins_pattern

from ..cli.conftest import DevSigner, credentials, run, wait_healthy
from ..cli.conftest import serve as serve_signer
from ..conftest import free_port

WORKER = Path(__file__).with_name("rstuf_shaped_worker.py")
BITS = int(os.environ.get("TUF_SIGNER_RSTUF_BITS", "4"))
SMALL_KEY = "rstuf"


@pytest.fixture
def rstuf_signer(tmp_path: Path) -> Iterator[DevSigner]:
    """dev-init's signer, whose backend may also use the key ``rstuf`` (a small bins key)."""
    directory = tmp_path / "dev"
    address = f"127.0.0.1:{free_port()}"
    witness = f"127.0.0.1:{free_port()}"
    config = Path(
        run("dev-init", str(directory), "--listen", address, "--witness-listen", witness)
        .stdout.strip()
        .splitlines()[-1]
    )
    text = config.read_text()
    rule = f'keys = ["{DEV_KEY}"]'
    assert text.count(rule) == 1, "dev-init's backend rule changed: update this fixture"
    config.write_text(text.replace(rule, f'keys = ["{DEV_KEY}", "{SMALL_KEY}"]'))
    signer = DevSigner(directory, config, address, serve_signer(config))
    try:
        wait_healthy(address, signer.proc, credentials(directory, "admin"))
        yield signer
    finally:
        signer.stop()


def run_worker(s: DevSigner, job: Path, **fields: object) -> dict[str, object]:
    """One worker task in a fresh process: environment ``ONLINE_KEY_DIR`` and ``PATH`` only."""
    job.write_text(json.dumps(fields))
    worker = subprocess.run(
        [sys.executable, str(WORKER), str(job)],
        env={"ONLINE_KEY_DIR": str(s.directory), "PATH": os.environ.get("PATH", "")},
        cwd=job.parent,
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


@pytest.mark.slow
def test_an_rstuf_shaped_worker_signs_through_the_plugin_unchanged(
    rstuf_signer: DevSigner, tmp_path: Path
) -> None:
    s = rstuf_signer
    settings = (s.directory / "tuf-signer-client.toml").read_text()
    assert 'ca = "tls/ca.crt"' in settings and 'cert = "tls/backend.crt"' in settings
    with _admin(s) as admin:
        if BITS == 14:
            key = DEV_KEY  # dev-init's key declares PEP 458's bins:14
        else:
            key = SMALL_KEY
            pattern = bins_pattern(BinsDelegation("bins", BITS))
            admin.create_key(
                key,
                [("timestamp", 86400), ("snapshot", 86400), (pattern, 86400)],
                activate=True,
                bins=f"bins:{BITS}",
            )
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
        assert report["signers_built"] == 1  # one signer, every role
        assert report["bins"] == 2**BITS
        assert report["sign_threads"] == min(8, 2**BITS)
        assert report["signatures"] == [active["keyid"]]

        # The signer's record: every bin at version 1, and snapshot and timestamp.
        states = {st["role"]: st["version"] for st in admin.role_state(key)}
        bins = {r for r in states if r.startswith("bins-") and "*" not in r}
        assert states["snapshot"] == states["timestamp"] == 1
        # Empty bins are attributed to their payload, not to a bin (policy/_coherence).
        assert len(bins) <= 2**BITS and all(states[b] == 1 for b in bins)

    # A client that trusts only the first root verifies everything and downloads.
    first = published(out)
    assert len(first) == 3 * 2**BITS
    sample = dict(sorted(first.items())[:64])
    with serve(out) as url:
        view = fetch_with_ngclient(
            url, tmp_path / "client", sample, (out / "metadata" / "1.root.json").read_bytes()
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
        view = fetch_with_ngclient(url, tmp_path / "client", added, None)  # a returning client
        assert (view.timestamp_version, view.snapshot_version) == (2, 2)
    with _admin(s) as admin:
        states = {st["role"]: st["version"] for st in admin.role_state(key)}
    assert states["snapshot"] == states["timestamp"] == 2
    assert sum(v == 2 for r, v in states.items() if r.startswith("bins-")) == later["changed_bins"]


def published(out: Path) -> dict[str, bytes]:
    """Target path -> content of every target file the worker stored (``DIR/HASH.NAME``)."""
    files = {}
    for path in (out / "targets").rglob("*.tar.gz"):
        rel = path.relative_to(out / "targets")
        files[str(rel.parent / rel.name.split(".", 1)[1])] = path.read_bytes()
    return files
