"""A repository worker shaped like RSTUF's, for tests/examples/test_rstuf_shaped.py.

Run as a fresh process whose environment holds only ``ONLINE_KEY_DIR`` and
``PATH``. It does what RSTUF's worker does with its online key, with its own
code (not RSTUF's), and never imports ``tuf_signer``:

- the online key's private-key URI sits in the key itself
  (``x-rstuf-online-key-uri``, as RSTUF keeps it in root);
- one signer per keyid, built with ``Signer.from_priv_key_uri`` inside an
  environment emptied but for ``ONLINE_KEY_DIR`` (RSTUF's ``isolated_env``);
- that one signer signs every online role: each bin through python-tuf's
  ``Metadata.sign`` from a thread pool of 8, then snapshot, then timestamp.

Usage: ``python rstuf_shaped_worker.py JOB.json``; prints a JSON report on stdout.
JOB holds ``keyid``, ``public_key`` (a TUF key dict), ``uri``, ``bit_length``,
``targets`` (how many target files), ``out`` (the repository directory) and
``round``: ``bootstrap`` creates the repository; ``add`` is a later task in a
new process, which reads the published metadata, adds ``added`` targets to their
bins, bumps those bins, then snapshot and timestamp.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey
from tuf.api.metadata import (
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

URI_FIELD = "x-rstuf-online-key-uri"
ONLINE_EXPIRY = timedelta(hours=12)
OFFLINE_EXPIRY = timedelta(days=365)
THREADS = 8  # RSTUF signs bins from a ThreadPoolExecutor


@contextmanager
def isolated_env(env: dict[str, str]) -> Iterator[None]:
    """Replace the environment for the block, as RSTUF's signer store does."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class SignerStore:
    """One signer per keyid, built from the URI in the key, in an isolated environment."""

    def __init__(self) -> None:
        self._ambient = {"ONLINE_KEY_DIR": os.environ["ONLINE_KEY_DIR"]}
        self._signers: dict[str, Signer] = {}
        self.built = 0
        self.env_when_built: list[str] = []

    def get(self, key: Key) -> Signer:
        if key.keyid not in self._signers:
            with isolated_env(self._ambient):
                self._signers[key.keyid] = Signer.from_priv_key_uri(
                    key.unrecognized_fields[URI_FIELD], key
                )
                self.env_when_built = sorted(os.environ)
            self.built += 1
        return self._signers[key.keyid]


def _expires(validity: timedelta) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + validity


def target_files(count: int, start: int = 0) -> dict[str, bytes]:
    files = {}
    for i in range(start, start + count):
        name = f"project{i}-1.0.tar.gz"
        digest = hashlib.sha256(name.encode()).hexdigest()
        files[f"packages/{digest[:2]}/{digest[2:4]}/{name}"] = name.encode() * 3
    return files


def store_targets(
    files: dict[str, bytes], bins: dict[str, Metadata[Targets]], succinct: SuccinctRoles, out: Path
) -> set[str]:
    """Write target files as ``targets/DIR/HASH.NAME`` and list them in their bins."""
    changed = set()
    for path, data in files.items():
        info = TargetFile.from_data(path, data, ["sha256"])
        role = succinct.get_role_for_target(path)
        bins[role].signed.targets[path] = info
        changed.add(role)
        directory, _, name = path.rpartition("/")
        stored = out / "targets" / directory / f"{info.hashes['sha256']}.{name}"
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_bytes(data)
    return changed


def sign_bins(store: SignerStore, key: Key, bins: list[Metadata[Targets]]) -> dict[str, Any]:
    """Sign bins through ``Metadata.sign`` from a thread pool, as RSTUF does."""
    threads: set[str] = set()

    def sign_bin(md: Metadata[Targets]) -> None:
        threads.add(threading.current_thread().name)
        md.sign(store.get(key))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        list(pool.map(sign_bin, bins))
    return {"sign_threads": len(threads), "bins_seconds": round(time.perf_counter() - start, 3)}


def add_round(job: dict[str, Any], store: SignerStore, online: Key) -> dict[str, Any]:
    """A later task: read what is published, add targets, bump their bins, snapshot, timestamp."""
    out = Path(job["out"])
    meta_dir = out / "metadata"
    timestamp_md = Metadata[Timestamp].from_file(str(meta_dir / "timestamp.json"))
    snap_version = timestamp_md.signed.snapshot_meta.version
    snapshot_md = Metadata[Snapshot].from_file(str(meta_dir / f"{snap_version}.snapshot.json"))
    succinct = SuccinctRoles([online.keyid], 1, job["bit_length"], "bins")
    bins = {
        name: Metadata[Targets].from_file(
            str(meta_dir / f"{snapshot_md.signed.meta[f'{name}.json'].version}.{name}.json")
        )
        for name in succinct.get_roles()
    }
    store.get(online)  # built before the pool, as RSTUF's worker does
    changed = sorted(store_targets(target_files(job["added"], job["targets"]), bins, succinct, out))
    for name in changed:
        bins[name].signed.version += 1
        bins[name].signed.expires = _expires(ONLINE_EXPIRY)
    report = sign_bins(store, online, [bins[n] for n in changed])
    snapshot_md.signed.version += 1
    snapshot_md.signed.expires = _expires(ONLINE_EXPIRY)
    for name in changed:
        snapshot_md.signed.meta[f"{name}.json"] = MetaFile(bins[name].signed.version)
    snapshot_md.sign(store.get(online))
    timestamp_md.signed.version += 1
    timestamp_md.signed.expires = _expires(ONLINE_EXPIRY)
    timestamp_md.signed.snapshot_meta = MetaFile(snapshot_md.signed.version)
    timestamp_md.sign(store.get(online))
    serializer = JSONSerializer(compact=True)
    for name in changed:
        md = bins[name]
        (meta_dir / f"{md.signed.version}.{name}.json").write_bytes(md.to_bytes(serializer))
    name = f"{snapshot_md.signed.version}.snapshot.json"
    (meta_dir / name).write_bytes(snapshot_md.to_bytes(serializer))
    (meta_dir / "timestamp.json").write_bytes(timestamp_md.to_bytes(serializer))
    return {
        "changed_bins": len(changed),
        "snapshot_version": snapshot_md.signed.version,
        "signers_built": store.built,
        "env_when_built": store.env_when_built,
        **report,
    }


def main(job_path: str) -> dict[str, Any]:
    before = sorted(m for m in sys.modules if m.startswith("tuf_signer"))
    job = json.loads(Path(job_path).read_text())
    key_dict = dict(job["public_key"], **{URI_FIELD: job["uri"]})
    online = SSlibKey.from_dict(job["keyid"], key_dict)
    store = SignerStore()
    if job["round"] == "add":
        return {"tuf_signer_modules_at_start": before, **add_round(job, store, online)}
    out = Path(job["out"])
    meta_dir = out / "metadata"
    meta_dir.mkdir(parents=True)
    serializer = JSONSerializer(compact=True)
    root_signer, targets_signer = CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()

    root = Root(expires=_expires(OFFLINE_EXPIRY), consistent_snapshot=True)
    root.add_key(root_signer.public_key, Root.type)
    root.add_key(targets_signer.public_key, Targets.type)
    root.add_key(online, Snapshot.type)
    root.add_key(online, Timestamp.type)
    root_md = Metadata(root)
    root_md.sign(root_signer)

    succinct = SuccinctRoles([online.keyid], 1, job["bit_length"], "bins")
    targets = Targets(expires=_expires(OFFLINE_EXPIRY))
    targets.delegations = Delegations(keys={online.keyid: online}, succinct_roles=succinct)
    targets_md = Metadata(targets)
    targets_md.sign(targets_signer)

    bins = {
        name: Metadata(Targets(version=1, expires=_expires(ONLINE_EXPIRY)))
        for name in succinct.get_roles()
    }
    files = target_files(job["targets"])
    store_targets(files, bins, succinct, out)

    # Built once, before any signing, as RSTUF's worker does; then the environment
    # changes: the signer must have kept its settings.
    signer = store.get(online)
    os.environ["ONLINE_KEY_DIR"] = str(out / "elsewhere")

    start = time.perf_counter()
    report = sign_bins(store, online, list(bins.values()))

    meta = {"targets.json": MetaFile(targets.version)}
    meta.update({f"{n}.json": MetaFile(md.signed.version) for n, md in bins.items()})
    snapshot_md = Metadata(Snapshot(version=1, expires=_expires(ONLINE_EXPIRY), meta=meta))
    snapshot_md.sign(store.get(online))
    timestamp_md = Metadata(
        Timestamp(version=1, expires=_expires(ONLINE_EXPIRY), snapshot_meta=MetaFile(1))
    )
    timestamp_md.sign(store.get(online))
    total_seconds = time.perf_counter() - start

    def write(name: str, md: Metadata[Any]) -> None:
        (meta_dir / name).write_bytes(md.to_bytes(serializer))

    write("1.root.json", root_md)
    write("1.targets.json", targets_md)
    for name, md in bins.items():
        write(f"{md.signed.version}.{name}.json", md)
    write("1.snapshot.json", snapshot_md)
    write("timestamp.json", timestamp_md)
    return {
        "tuf_signer_modules_at_start": before,
        "signer_class": type(signer).__name__,
        "signers_built": store.built,
        "env_when_built": store.env_when_built,
        "bins": len(bins),
        "targets": len(files),
        **report,
        "sign_seconds": round(total_seconds, 3),
        "signatures": sorted({k for md in bins.values() for k in md.signatures}),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
