"""A repository worker shaped like RSTUF's, for tests/examples/test_rstuf_shaped.py.

Run as a fresh process whose environment holds only ``ONLINE_KEY_DIR`` and
``PATH``. It does what RSTUF's worker does with its online key, with its own
code (not RSTUF's), and never imports ``tuf_signer``:

- the online key's private-key URI sits in the key itself
  (``x-rstuf-online-key-uri``, as RSTUF keeps it in root);
- one signer per keyid, built with ``Signer.from_priv_key_uri`` inside an
  environment emptied but for ``ONLINE_KEY_DIR`` (RSTUF's ``isolated_env``);
- that one signer signs every online role, top-level ``targets`` included
  (RSTUF's ``TARGETS_ONLINE_KEY``, valid 365 days): each bin through
  python-tuf's ``Metadata.sign`` from a thread pool of 8, then snapshot, then
  timestamp.

Usage: ``python rstuf_shaped_worker.py JOB.json``; prints a JSON report on stdout.
JOB holds ``keyid``, ``public_key`` (a TUF key dict), ``uri``, ``bit_length``,
``root_seed`` (hex, the offline root key), ``targets`` (how many target files),
``out`` (the repository directory) and ``round``:

- ``bootstrap`` creates the repository;
- ``add`` is a later task in a new process: it reads the newest stored
  metadata, adds ``added`` targets to their bins, bumps those bins, then
  snapshot and timestamp. Each bin is stored as soon as it is signed (under its
  version, as consistent snapshots allow), so a round that fails after its
  bins is healed by the next one, which lists the stored bins in a new
  snapshot instead of signing their versions again with other content. With
  ``pause`` (a path) it stops after the bins until ``PAUSE.go`` exists (having
  created ``PAUSE.reached``); with ``time_limit`` (seconds, counted from then)
  it exits 3 when the rest takes longer, as a Celery task's time limit ends it;
- ``rotate``: root v2 lists ``new_keyid``/``new_public_key`` for the online
  roles (signed by the root key); the new key signs targets (bins delegated to
  it), every bin, snapshot and timestamp;
- ``attack``: through the same signer, a bin signed below its version, a
  snapshot listing a bin below the version last listed, a timestamp naming an
  older snapshot; reports each refusal (the server's status and reason).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey
from tuf.api.exceptions import UnsignedMetadataError
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
TARGETS_EXPIRY = timedelta(days=365)  # RSTUF's TARGETS_ONLINE_KEY default
ROOT_EXPIRY = timedelta(days=365)
THREADS = 8  # RSTUF signs bins from a ThreadPoolExecutor
SERIALIZER = JSONSerializer(compact=True)
ONLINE_ROLES = (Targets.type, Snapshot.type, Timestamp.type)


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
        self._lock = threading.Lock()
        self.built = 0
        self.env_when_built: list[str] = []

    def get(self, key: Key) -> Signer:
        with self._lock:
            if key.keyid not in self._signers:
                with isolated_env(self._ambient):
                    self._signers[key.keyid] = Signer.from_priv_key_uri(
                        key.unrecognized_fields[URI_FIELD], key
                    )
                    self.env_when_built = sorted(os.environ)
                self.built += 1
            return self._signers[key.keyid]


def online_key(keyid: str, public_key: dict[str, Any], uri: str) -> SSlibKey:
    """The online key as root lists it: the TUF key dict plus RSTUF's URI field."""
    return SSlibKey.from_dict(keyid, dict(public_key, **{URI_FIELD: uri}))


def bins_delegations(key: Key, bit_length: int) -> Delegations:
    """Top-level targets' delegation of every bin to ``key`` (PEP 458's succinct bins)."""
    return Delegations(
        keys={key.keyid: key},
        succinct_roles=SuccinctRoles([key.keyid], 1, bit_length, "bins"),
    )


def root_signer(seed: str) -> CryptoSigner:
    """The offline root key, the same in every round."""
    return CryptoSigner(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed)))


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
    """Write target files as ``targets/DIR/HASH.NAME`` and list them in their bins.

    Returns the bins whose listing changed (a target already listed changes none).
    """
    changed = set()
    for path, data in files.items():
        info = TargetFile.from_data(path, data, ["sha256"])
        role = succinct.get_role_for_target(path)
        if bins[role].signed.targets.get(path) != info:
            bins[role].signed.targets[path] = info
            changed.add(role)
        directory, _, name = path.rpartition("/")
        stored = out / "targets" / directory / f"{info.hashes['sha256']}.{name}"
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_bytes(data)
    return changed


def write(meta_dir: Path, name: str, md: Metadata[Any]) -> None:
    (meta_dir / name).write_bytes(md.to_bytes(SERIALIZER))


def sign_bins(
    store: SignerStore, key: Key, bins: dict[str, Metadata[Targets]], meta_dir: Path
) -> dict[str, Any]:
    """Sign bins through ``Metadata.sign`` from a thread pool, as RSTUF does; store each."""
    threads: set[str] = set()

    def sign_bin(item: tuple[str, Metadata[Targets]]) -> None:
        name, md = item
        threads.add(threading.current_thread().name)
        md.sign(store.get(key))
        write(meta_dir, f"{md.signed.version}.{name}.json", md)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        list(pool.map(sign_bin, bins.items()))
    return {"sign_threads": len(threads), "bins_seconds": round(time.perf_counter() - start, 3)}


def newest_versions(meta_dir: Path) -> dict[str, int]:
    """The highest stored version of each role (``N.ROLE.json``), from one directory scan."""
    pattern = re.compile(r"([0-9]+)\.(.+)\.json")
    versions: dict[str, int] = {}
    for path in meta_dir.iterdir():
        if m := pattern.fullmatch(path.name):
            role, version = m.group(2), int(m.group(1))
            versions[role] = max(version, versions.get(role, 0))
    return versions


class Repository:
    """The stored repository: newest root, targets, each bin, and what is published."""

    def __init__(self, out: Path, bit_length: int) -> None:
        self.out = out
        self.meta_dir = out / "metadata"
        stored = newest_versions(self.meta_dir)

        def load(role: str) -> Path:
            return self.meta_dir / f"{stored[role]}.{role}.json"

        self.root = Metadata[Root].from_file(str(load(Root.type)))
        self.targets = Metadata[Targets].from_file(str(load(Targets.type)))
        self.timestamp = Metadata[Timestamp].from_file(str(self.meta_dir / "timestamp.json"))
        version = self.timestamp.signed.snapshot_meta.version
        self.snapshot = Metadata[Snapshot].from_file(
            str(self.meta_dir / f"{version}.snapshot.json")
        )
        self.succinct = SuccinctRoles([], 1, bit_length, "bins")
        self.bins = {
            name: Metadata[Targets].from_file(str(load(name))) for name in self.succinct.get_roles()
        }

    def publish(self, store: SignerStore, key: Key) -> bool:
        """A new snapshot and timestamp when what is stored differs from what is listed."""
        meta = {"targets.json": MetaFile(self.targets.signed.version)}
        meta.update({f"{n}.json": MetaFile(md.signed.version) for n, md in self.bins.items()})
        if meta == self.snapshot.signed.meta:
            return False
        self.snapshot.signed.meta = meta
        self.snapshot.signed.version += 1
        self.snapshot.signed.expires = _expires(ONLINE_EXPIRY)
        self.snapshot.sign(store.get(key))
        self.timestamp.signed.version += 1
        self.timestamp.signed.expires = _expires(ONLINE_EXPIRY)
        self.timestamp.signed.snapshot_meta = MetaFile(self.snapshot.signed.version)
        self.timestamp.sign(store.get(key))
        write(self.meta_dir, f"{self.snapshot.signed.version}.snapshot.json", self.snapshot)
        write(self.meta_dir, "timestamp.json", self.timestamp)
        return True


def _pause(job: dict[str, Any]) -> None:
    """Stop until the test says go; then, with ``time_limit``, end the task when it overruns."""
    if job.get("pause"):
        Path(job["pause"] + ".reached").touch()
        while not Path(job["pause"] + ".go").exists():
            time.sleep(0.05)
    if job.get("time_limit"):

        def overrun() -> None:
            print(json.dumps({"failed": f"time limit {job['time_limit']} s"}), flush=True)
            os._exit(3)

        timer = threading.Timer(job["time_limit"], overrun)
        timer.daemon = True
        timer.start()


def add_round(job: dict[str, Any], store: SignerStore, online: Key) -> dict[str, Any]:
    """A later task: read what is stored, add targets, bump their bins, snapshot, timestamp."""
    repo = Repository(Path(job["out"]), job["bit_length"])
    store.get(online)  # built before the pool, as RSTUF's worker does
    files = target_files(job["added"], job["targets"])
    changed = sorted(store_targets(files, repo.bins, repo.succinct, repo.out))
    for name in changed:
        repo.bins[name].signed.version += 1
        repo.bins[name].signed.expires = _expires(ONLINE_EXPIRY)
    report = sign_bins(store, online, {n: repo.bins[n] for n in changed}, repo.meta_dir)
    _pause(job)
    published = repo.publish(store, online)
    return {
        "changed_bins": len(changed),
        "published": published,
        "snapshot_version": repo.snapshot.signed.version,
        "signers_built": store.built,
        "env_when_built": store.env_when_built,
        **report,
    }


def rotate_round(job: dict[str, Any], store: SignerStore, old: Key) -> dict[str, Any]:
    """Root v2 names the new online key, which signs targets, every bin, snapshot, timestamp."""
    repo = Repository(Path(job["out"]), job["bit_length"])
    new = online_key(job["new_keyid"], job["new_public_key"], job["uri"])
    root = repo.root.signed
    for role in ONLINE_ROLES:
        root.revoke_key(old.keyid, role)
        root.add_key(new, role)
    root.version += 1
    root.expires = _expires(ROOT_EXPIRY)
    repo.root.sign(root_signer(job["root_seed"]))
    write(repo.meta_dir, f"{root.version}.root.json", repo.root)

    # The worker has accepted root v2: from now on it pins the new keyid.
    repo.targets.signed.delegations = bins_delegations(new, job["bit_length"])
    repo.targets.signed.version += 1
    repo.targets.signed.expires = _expires(TARGETS_EXPIRY)
    repo.targets.sign(store.get(new))
    write(repo.meta_dir, f"{repo.targets.signed.version}.targets.json", repo.targets)
    for md in repo.bins.values():
        md.signed.version += 1
        md.signed.expires = _expires(ONLINE_EXPIRY)
    report = sign_bins(store, new, repo.bins, repo.meta_dir)
    repo.publish(store, new)
    return {
        "root_version": root.version,
        "snapshot_version": repo.snapshot.signed.version,
        "signers_built": store.built,
        "signatures": sorted({k for md in repo.bins.values() for k in md.signatures}),
        **report,
    }


def _refusal(md: Metadata[Any], signer: Signer) -> dict[str, str]:
    """Sign ``md``; the server's status and reason when it refuses (it must)."""
    try:
        md.sign(signer)
    except UnsignedMetadataError as e:
        cause = e.__cause__
        return {"code": getattr(cause, "code", ""), "reason": getattr(cause, "reason", str(cause))}
    return {"code": "SIGNED", "reason": ""}


def attack_round(job: dict[str, Any], store: SignerStore, key: Key) -> dict[str, Any]:
    """Rollbacks through the signer the repository uses; nothing is stored."""
    repo = Repository(Path(job["out"]), job["bit_length"])
    signer = store.get(key)
    name = max(repo.bins, key=lambda n: (repo.bins[n].signed.version, n))
    bin_md = repo.bins[name]
    listed = bin_md.signed.version
    # A bin below its version, with other content (RSTUF's table behind storage).
    bin_md.signed.version = listed - 1
    bin_md.signed.expires = _expires(ONLINE_EXPIRY) + timedelta(seconds=1)
    refused = {"bin_rollback": _refusal(bin_md, signer)}
    # A snapshot that lists that bin below what the last snapshot listed (RSTUF's
    # publish/periodic race: bins-9f 9 -> 8).
    snap = repo.snapshot
    snap.signed.version += 1
    snap.signed.meta[f"{name}.json"] = MetaFile(listed - 1)
    refused["snapshot_lists_bin_rollback"] = _refusal(snap, signer)
    # A timestamp naming an older snapshot.
    ts = repo.timestamp
    ts.signed.version += 1
    ts.signed.snapshot_meta = MetaFile(ts.signed.snapshot_meta.version - 1)
    refused["timestamp_snapshot_rollback"] = _refusal(ts, signer)
    return {"bin": name, "listed": listed, "signers_built": store.built, **refused}


def bootstrap(job: dict[str, Any], store: SignerStore, online: Key) -> dict[str, Any]:
    out = Path(job["out"])
    meta_dir = out / "metadata"
    meta_dir.mkdir(parents=True)
    offline = root_signer(job["root_seed"])

    root = Root(expires=_expires(ROOT_EXPIRY), consistent_snapshot=True)
    root.add_key(offline.public_key, Root.type)
    for role in ONLINE_ROLES:
        root.add_key(online, role)
    root_md = Metadata(root)
    root_md.sign(offline)

    succinct = SuccinctRoles([online.keyid], 1, job["bit_length"], "bins")
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
    targets_md = Metadata(Targets(expires=_expires(TARGETS_EXPIRY)))
    targets_md.signed.delegations = bins_delegations(online, job["bit_length"])
    targets_md.sign(store.get(online))  # online top-level targets, the same signer
    report = sign_bins(store, online, bins, meta_dir)

    meta = {"targets.json": MetaFile(targets_md.signed.version)}
    meta.update({f"{n}.json": MetaFile(md.signed.version) for n, md in bins.items()})
    snapshot_md = Metadata(Snapshot(version=1, expires=_expires(ONLINE_EXPIRY), meta=meta))
    snapshot_md.sign(store.get(online))
    timestamp_md = Metadata(
        Timestamp(version=1, expires=_expires(ONLINE_EXPIRY), snapshot_meta=MetaFile(1))
    )
    timestamp_md.sign(store.get(online))
    total_seconds = time.perf_counter() - start

    write(meta_dir, "1.root.json", root_md)
    write(meta_dir, "1.targets.json", targets_md)
    write(meta_dir, "1.snapshot.json", snapshot_md)
    write(meta_dir, "timestamp.json", timestamp_md)
    return {
        "signer_class": type(signer).__name__,
        "signers_built": store.built,
        "env_when_built": store.env_when_built,
        "bins": len(bins),
        "targets": len(files),
        **report,
        "sign_seconds": round(total_seconds, 3),
        "signatures": sorted({k for md in bins.values() for k in md.signatures}),
        "targets_signatures": sorted(targets_md.signatures),
    }


ROUNDS = {"bootstrap": bootstrap, "add": add_round, "rotate": rotate_round, "attack": attack_round}


def main(job_path: str) -> dict[str, Any]:
    before = sorted(m for m in sys.modules if m.startswith("tuf_signer"))
    job = json.loads(Path(job_path).read_text())
    online = online_key(job["keyid"], job["public_key"], job["uri"])
    report = ROUNDS[job["round"]](job, SignerStore(), online)
    return {"tuf_signer_modules_at_start": before, **report}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
