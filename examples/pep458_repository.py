"""A PEP 458 repository whose online roles are signed by tuf-signer, checked by python-tuf.

What it shows, with python-tuf's Metadata API:

1. **Build.** Root and targets are signed with offline keys (local
   ``CryptoSigner``s, standing in for the people who hold them). Targets
   delegates every target to succinct hash bins (TAP 15) named ``bins-00`` …
   (``bins-0000`` … ``bins-3fff`` at PEP 458's 16,384 bins). Timestamp,
   snapshot and every bin are signed by tuf-signer: the bins in one bulk
   ``sign_many``, timestamp and snapshot through the securesystemslib
   ``Signer`` plugin (``Metadata.sign(signer)``). Consistent snapshots are
   published under ``OUT/metadata`` and ``OUT/targets``.
2. **Verify.** The directory is served over HTTP and python-tuf's ngclient
   ``Updater`` refreshes and downloads targets, checking their hashes.
3. **Upload.** New targets go to their bins; each affected bin, then
   snapshot, then timestamp is re-signed, in that order (PEP 458 §"Producing
   consistent snapshots").
4. **Rotate the online key** without stranding clients (docs/design.md P6): RotateKey
   publishes a PENDING key; root and targets list old and new key (signed
   offline); ActivateKeyVersion; every online role is re-signed with the new
   key; root and targets drop the old key. A client that still trusts the
   first root updates across all of it.

Run it against a signer (``make run`` starts one with the key ``online``, which
declares PEP 458's 16,384 bins, ``bins:14``)::

    python examples/pep458_repository.py --server 127.0.0.1:50051 --out /tmp/pep458

The online key must declare the succinct hash bins it signs (``tuf-signer keys
create NAME … --bins bins:BIT_LENGTH``): the signer then signs only those bin
names, and only bins whose target paths hash into them.

It can be run again against the same signer: online roles continue from the
versions the signer last signed (GetRoleState), as a real repository must.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Signer, SSlibKey
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
from tuf.ngclient import Updater

from tuf_signer.client import (
    Client,
    RemoteError,
    SignerUri,
    SignRequest,
    TufSignerSigner,
    register,
    shared_client,
    sslib_key,
)
from tuf_signer.errors import TufSignerError

log = logging.getLogger("pep458")

BIN_PREFIX = "bins"  # bins are "bins-00"...: the key declares --bins bins:BIT_LENGTH
ONLINE_EXPIRY = timedelta(hours=12)  # PEP 458: 1 day at most; the signer enforces it
OFFLINE_EXPIRY = timedelta(days=365)  # PEP 458: root and targets, 1 year
_SERIALIZER = JSONSerializer(compact=True)


@dataclass(frozen=True)
class OfflineKeys:
    """Root and targets keys. In production they live with people, not here."""

    root: CryptoSigner
    targets: CryptoSigner

    @classmethod
    def generate(cls) -> OfflineKeys:
        return cls(root=CryptoSigner.generate_ed25519(), targets=CryptoSigner.generate_ed25519())


def make_target_files(count: int, start: int = 0) -> dict[str, bytes]:
    """``count`` small, deterministic distribution files, keyed by target path.

    Paths look like PyPI's (``packages/ab/cd/<project>-<version>.tar.gz``).
    """
    files = {}
    for i in range(start, start + count):
        name = f"project{i % 997:03d}-{i}.0.tar.gz"
        digest = hashlib.sha256(name.encode()).hexdigest()
        files[f"packages/{digest[:2]}/{digest[2:4]}/{name}"] = digest.encode() * 4
    return files


def _expires(validity: timedelta) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + validity


class Pep458Repository:
    """A PEP 458 repository on disk, online roles signed by tuf-signer.

    Args:
        out: directory to publish into (``metadata/`` and ``targets/``).
        client: the repository backend's tuf-signer client (Sign, GetRoleState).
            Use the plugin's ``shared_client`` so every signature travels
            over one channel.
        key: the online key's name on the signer.
        bit_length: hash-bin bits: 2**bit_length bins (PEP 458: 14).
        offline: the root and targets keys.
        admin: the operator's client for RotateKey and ActivateKeyVersion
            (default ``client``). With mutual TLS these are two identities:
            a repository backend should not be able to rotate keys.
        max_in_flight: concurrency of bulk bin signing.
    """

    def __init__(
        self,
        out: Path,
        client: Client,
        key: str,
        bit_length: int,
        offline: OfflineKeys,
        *,
        admin: Client | None = None,
        max_in_flight: int = 64,
    ) -> None:
        self.out = out
        self.client = client
        self.admin = admin or client
        self.key = key
        self.offline = offline
        self.max_in_flight = max_in_flight
        self.metadata_dir = out / "metadata"
        self.targets_dir = out / "targets"
        self.succinct = SuccinctRoles([], 1, bit_length, BIN_PREFIX)
        # The online key as the repository lists it, and the URI to sign with it.
        uri, self.online_key = TufSignerSigner.import_(key, client=client)
        self._uri = SignerUri.parse(uri)
        self._signers: dict[str, Signer] = {}
        self.root: Metadata[Root]
        self.targets: Metadata[Targets]
        self.bins: dict[str, Metadata[Targets]] = {}
        self.snapshot: Metadata[Snapshot]
        self.timestamp: Metadata[Timestamp]

    # --- signing ---------------------------------------------------------------------

    def signer(self, role: str) -> Signer:
        """The securesystemslib signer of an online role: a ``tufsigner://`` URI.

        Cheap: every signer of the process shares one client and channel.
        """
        if role not in self._signers:
            uri = SignerUri(self._uri.server, self._uri.key, role)
            self._signers[role] = Signer.from_priv_key_uri(str(uri), self.online_key)
        return self._signers[role]

    def sign_bins(self, names: Iterable[str]) -> None:
        """Sign many bins at once with ``sign_many`` (build, rotation, expiry sweep).

        Raises:
            RemoteError: the signer refused a bin (the first refusal, naming it).
        """
        names = list(names)
        keyid = self.online_key.keyid
        outcomes = self.client.sign_many(
            (SignRequest(self.key, self.bins[n].signed_bytes, n, keyid) for n in names),
            max_in_flight=self.max_in_flight,
        )
        refused = []
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, RemoteError):
                refused.append((name, outcome))
                continue
            signatures = self.bins[name].signatures
            signatures.clear()
            signatures[outcome.keyid] = outcome.signature()
        if refused:
            name, error = refused[0]
            raise RemoteError(
                f"{len(refused)} of {len(names)} bins refused; {name}: {error.reason}",
                code=error.code,
            ) from error

    def _sign_offline_root(self) -> None:
        self.root.signed.expires = _expires(OFFLINE_EXPIRY)
        self.root.sign(self.offline.root)

    def _sign_offline_targets(self) -> None:
        self.targets.signed.expires = _expires(OFFLINE_EXPIRY)
        self.targets.sign(self.offline.targets)

    def _bump_bin(self, name: str) -> None:
        self.bins[name].signed.version += 1
        self.bins[name].signed.expires = _expires(ONLINE_EXPIRY)

    def _snapshot_and_timestamp(self, bump: bool = True) -> None:
        """New snapshot (listing every targets file's version), then timestamp.

        Both go through the securesystemslib plugin: ``Metadata.sign(signer)``.
        """
        snap = self.snapshot.signed
        snap.version += bump
        snap.expires = _expires(ONLINE_EXPIRY)
        snap.meta = self._snapshot_meta()
        self.snapshot.sign(self.signer(Snapshot.type))
        ts = self.timestamp.signed
        ts.version += bump
        ts.expires = _expires(ONLINE_EXPIRY)
        ts.snapshot_meta = MetaFile(snap.version)
        self.timestamp.sign(self.signer(Timestamp.type))

    def _snapshot_meta(self) -> dict[str, MetaFile]:
        meta = {f"{Targets.type}.json": MetaFile(self.targets.signed.version)}
        meta.update({f"{n}.json": MetaFile(md.signed.version) for n, md in self.bins.items()})
        return meta

    # --- publishing ------------------------------------------------------------------

    def _write(self, name: str, md: Metadata[Any]) -> None:
        (self.metadata_dir / name).write_bytes(md.to_bytes(_SERIALIZER))

    def publish(self, root: bool = False, targets: bool = False, bins: Iterable[str] = ()) -> None:
        """Write what changed, then snapshot, and the timestamp last (consistent snapshots)."""
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        if root:
            self._write(f"{self.root.signed.version}.root.json", self.root)
        if targets:
            self._write(f"{self.targets.signed.version}.targets.json", self.targets)
        for name in bins:
            self._write(f"{self.bins[name].signed.version}.{name}.json", self.bins[name])
        self._write(f"{self.snapshot.signed.version}.snapshot.json", self.snapshot)
        self._write("timestamp.json", self.timestamp)

    def _store_targets(self, files: Mapping[str, bytes]) -> set[str]:
        """Write target files as ``DIR/HASH.NAME`` and list them in their bins."""
        changed = set()
        for path, data in files.items():
            info = TargetFile.from_data(path, data, ["sha256"])
            directory, _, name = path.rpartition("/")
            stored = self.targets_dir / directory / f"{info.hashes['sha256']}.{name}"
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_bytes(data)
            role = self.succinct.get_role_for_target(path)
            self.bins[role].signed.targets[path] = info
            changed.add(role)
        return changed

    # --- the steps -------------------------------------------------------------------

    def build(self, files: Mapping[str, bytes]) -> None:
        """Create, sign and publish every role, with ``files`` as the first targets.

        Raises:
            RemoteError: the signer refused a signature.
        """
        online = self.online_key
        root = Root(expires=_expires(OFFLINE_EXPIRY), consistent_snapshot=True)
        root.add_key(self.offline.root.public_key, Root.type)
        root.add_key(self.offline.targets.public_key, Targets.type)
        root.add_key(online, Snapshot.type)
        root.add_key(online, Timestamp.type)
        self.root = Metadata(root)
        self._sign_offline_root()

        # Online roles continue above whatever this signer signed before:
        # it refuses any version that is not above its high-water mark.
        last = {s["role"]: s["version"] for s in self.client.role_state(self.key)}
        self.succinct.keyids.append(online.keyid)
        targets = Targets(expires=_expires(OFFLINE_EXPIRY))
        targets.delegations = Delegations(keys={online.keyid: online}, succinct_roles=self.succinct)
        self.targets = Metadata(targets)
        self._sign_offline_targets()
        self.bins = {
            name: Metadata(Targets(version=last.get(name, 0) + 1, expires=_expires(ONLINE_EXPIRY)))
            for name in self.succinct.get_roles()
        }
        self._store_targets(files)
        self.sign_bins(self.bins)
        self.snapshot = Metadata(Snapshot(version=last.get(Snapshot.type, 0) + 1))
        self.timestamp = Metadata(Timestamp(version=last.get(Timestamp.type, 0) + 1))
        self._snapshot_and_timestamp(bump=False)
        self.publish(root=True, targets=True, bins=self.bins)

    def add_targets(self, files: Mapping[str, bytes]) -> set[str]:
        """Upload: each affected bin, then snapshot, then timestamp. Returns the bins.

        Raises:
            RemoteError: the signer refused a signature.
        """
        changed = self._store_targets(files)
        for name in sorted(changed):
            # One signer per bin, all on one channel: the per-upload path.
            self._bump_bin(name)
            self.bins[name].sign(self.signer(name))
        self._snapshot_and_timestamp()
        self.publish(bins=changed)
        return changed

    def rotate_online_key(self) -> SSlibKey:
        """Replace the online key everywhere without stranding a client. Returns the new key.

        Raises:
            RemoteError: the signer refused a step.
        """
        old = self.online_key
        # 1. A PENDING version: its public key exists before it can sign.
        pending = self.admin.rotate_key(self.key)
        new = sslib_key(pending)

        # 2. Announce it: root and targets list both keys (threshold 1), offline.
        #    Clients accept the old key's signatures and the new key's.
        for role in (Snapshot.type, Timestamp.type):
            self.root.signed.add_key(new, role)
        self.root.signed.version += 1
        self._sign_offline_root()
        self.targets.signed.add_key(new)
        self.targets.signed.version += 1
        self._sign_offline_targets()
        self._snapshot_and_timestamp()  # still signed by the old, ACTIVE key
        self.publish(root=True, targets=True)

        # 3. Activate, pinned to the keyid just published; the old version retires.
        self.admin.activate(self.key, pending["version"], expected_keyid=new.keyid)
        self.online_key = new
        self._signers.clear()  # their pins name the old key

        # 4. Re-sign every online role with the new key: the heavy, bulk step.
        for name in self.bins:
            self._bump_bin(name)
        self.sign_bins(self.bins)
        self._snapshot_and_timestamp()
        self.publish(bins=self.bins)

        # 5. Drop the old key from root and targets.
        for role in (Snapshot.type, Timestamp.type):
            self.root.signed.revoke_key(old.keyid, role)
        self.root.signed.version += 1
        self._sign_offline_root()
        self.targets.signed.revoke_key(old.keyid)
        self.targets.signed.version += 1
        self._sign_offline_targets()
        self._snapshot_and_timestamp()
        self.publish(root=True, targets=True)
        return new

    def first_root(self) -> bytes:
        """``1.root.json``: what a client ships as its trust anchor."""
        return (self.metadata_dir / "1.root.json").read_bytes()

    def check(self) -> None:
        """Verify every signature the way a client would (``verify_delegate``).

        Raises:
            tuf.api.exceptions.UnsignedMetadataError: a role lacks its threshold.
        """
        root = self.root.signed
        root.verify_delegate(Root.type, self.root.signed_bytes, self.root.signatures)
        for role, md in ((Targets.type, self.targets), (Snapshot.type, self.snapshot)):
            root.verify_delegate(role, md.signed_bytes, md.signatures)
        root.verify_delegate(Timestamp.type, self.timestamp.signed_bytes, self.timestamp.signatures)
        for name, md in self.bins.items():
            self.targets.signed.verify_delegate(name, md.signed_bytes, md.signatures)


# --- the client side -------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on a free loopback port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, name="http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@dataclass(frozen=True)
class ClientView:
    """What an ngclient ``Updater`` trusts after a refresh."""

    root_version: int
    timestamp_version: int
    snapshot_version: int
    downloaded: tuple[str, ...]


def fetch_with_ngclient(
    base_url: str,
    client_dir: Path,
    expected: Mapping[str, bytes],
    bootstrap: bytes | None,
) -> ClientView:
    """Refresh with python-tuf's ngclient and download ``expected``'s targets.

    Args:
        base_url: where ``metadata/`` and ``targets/`` are served.
        client_dir: the client's state; reuse it to act as a returning client.
        expected: target path -> the bytes it must download.
        bootstrap: trusted root bytes, or None to trust ``client_dir``'s cached root.

    Raises:
        tuf.api.exceptions.RepositoryError: metadata failed verification.
        tuf.api.exceptions.DownloadError: a download failed.
        ValueError: a target is missing or its content differs.
    """
    metadata_dir = client_dir / "metadata"
    download_dir = client_dir / "downloads"
    metadata_dir.mkdir(parents=True, exist_ok=True)
    download_dir.mkdir(parents=True, exist_ok=True)
    updater = Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=f"{base_url}/metadata/",
        target_dir=str(download_dir),
        target_base_url=f"{base_url}/targets/",
        bootstrap=bootstrap,
    )
    updater.refresh()
    for path, data in expected.items():
        info = updater.get_targetinfo(path)
        if info is None:
            raise ValueError(f"{path}: not found through the repository's metadata")
        # download_target checks length and hashes against the signed bin.
        local = Path(updater.download_target(info))
        if local.read_bytes() != data or info.hashes["sha256"] != hashlib.sha256(data).hexdigest():
            raise ValueError(f"{path}: downloaded content differs from what was published")

    def version(role: str) -> int:
        md = Metadata.from_bytes((metadata_dir / f"{role}.json").read_bytes())
        return md.signed.version

    return ClientView(
        root_version=version(Root.type),
        timestamp_version=version(Timestamp.type),
        snapshot_version=version(Snapshot.type),
        downloaded=tuple(expected),
    )


# --- the walkthrough ------------------------------------------------------------------


@dataclass(frozen=True)
class RunReport:
    """What ``run`` did, and how long each step took (seconds)."""

    bins: int
    targets: int
    timings: dict[str, float]
    old_key: str
    new_key: str
    views: dict[str, ClientView]


def _sample(files: Mapping[str, bytes], n: int) -> dict[str, bytes]:
    paths = sorted(files)
    step = max(1, len(paths) // n)
    return {p: files[p] for p in paths[::step][:n]}


def run(
    client: Client,
    key: str,
    bit_length: int,
    out: Path,
    *,
    n_targets: int,
    n_added: int = 16,
    n_downloads: int = 8,
    admin: Client | None = None,
    max_in_flight: int = 64,
) -> RunReport:
    """Build, verify, upload, rotate, verify again with the first root.

    Raises:
        RemoteError: the signer refused a signature.
        tuf.api.exceptions.RepositoryError: a client rejected the repository.
        ValueError: a client downloaded the wrong thing.
    """
    register()  # securesystemslib 1.x: plugins register explicitly
    timings: dict[str, float] = {}
    views: dict[str, ClientView] = {}

    @contextmanager
    def step(name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - start
        log.info("%-28s %8.2f s", name, timings[name])

    repo = Pep458Repository(
        out,
        client,
        key,
        bit_length,
        OfflineKeys.generate(),
        admin=admin,
        max_in_flight=max_in_flight,
    )
    old_key = repo.online_key.keyid
    files = make_target_files(n_targets)
    with step(f"build: {2**bit_length} bins, {n_targets} targets"):
        repo.build(files)
    trusted_root = repo.first_root()
    clients = out / "clients"
    with serve(out) as url:
        with step("ngclient: first refresh"):
            views["first"] = fetch_with_ngclient(
                url, clients / "returning", _sample(files, n_downloads), trusted_root
            )
        added = make_target_files(n_added, start=n_targets)
        with step(f"upload {n_added} targets"):
            repo.add_targets(added)
        with step("ngclient: after upload"):
            views["upload"] = fetch_with_ngclient(url, clients / "returning", added, None)
        with step("rotate online key"):
            new_key = repo.rotate_online_key().keyid
        repo.check()
        with step("ngclient: new, first root"):
            # A client that ships only the first root still follows the rotation.
            views["fresh"] = fetch_with_ngclient(
                url, clients / "fresh", _sample(files | added, n_downloads), trusted_root
            )
        with step("ngclient: returning client"):
            # One that refreshed before the rotation, with its cached metadata.
            views["returning"] = fetch_with_ngclient(
                url, clients / "returning", _sample(added, n_downloads), None
            )
    return RunReport(
        bins=2**bit_length,
        targets=n_targets + n_added,
        timings=timings,
        old_key=old_key,
        new_key=new_key,
        views=views,
    )


def declared_bit_length(client: Client, key: str) -> int:
    """The bit length of the hash bins ``key`` declares with prefix ``bins``.

    Raises:
        RemoteError: the signer does not know the key.
        SystemExit: the key declares no bins, or bins of another prefix.
    """
    (info,) = client.public_keys(key)
    bins = info["bins"]
    if bins is None or bins["prefix"] != BIN_PREFIX:
        raise SystemExit(
            f"key {key!r} declares no {BIN_PREFIX!r} hash bins: create it with "
            f"tuf-signer keys create {key} … --bins {BIN_PREFIX}:BIT_LENGTH"
        )
    return bins["bit_length"]


def main(argv: list[str] | None = None) -> int:
    """Command line: run the walkthrough against a running signer."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--server", help="HOST:PORT (default $TUF_SIGNER_SERVER, else 127.0.0.1:50051)"
    )
    parser.add_argument("--key", default="online", help="online key name (default online)")
    parser.add_argument(
        "--bins", type=int, help="hash bins, a power of 2 (default: as many as the key declares)"
    )
    parser.add_argument("--targets", type=int, help="initial targets (default 2 per bin)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="bulk signing concurrency")
    parser.add_argument("--out", type=Path, help="output directory (default: a temporary one)")
    parser.add_argument(
        "--admin-cert",
        help="client certificate of the operator identity that may rotate keys "
        "(default: the repository's own identity, $TUF_SIGNER_CERT)",
    )
    parser.add_argument("--admin-tls-key", help="private key of --admin-cert")
    args = parser.parse_args(argv)
    if args.bins is not None and (
        args.bins < 2 or args.bins & (args.bins - 1) or args.bins > 2**32
    ):
        parser.error("--bins must be a power of 2 between 2 and 2**32")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # python-tuf logs "No signature for keyid" at INFO while two keys overlap.
    logging.getLogger("tuf").setLevel(logging.WARNING)
    out = args.out or Path(tempfile.mkdtemp(prefix="pep458-"))
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} is not empty")
    admin: Client | None = None
    start = time.perf_counter()
    try:
        # TLS (CA, the repository's certificate and key) comes from $TUF_SIGNER_CA,
        # $TUF_SIGNER_CERT and $TUF_SIGNER_KEY, as for the plugin's signers.
        client = shared_client(args.server)  # the plugin's signers use this channel too
        if args.admin_cert or args.admin_tls_key:
            admin = Client(args.server, cert=args.admin_cert, key=args.admin_tls_key)
        bit_length = declared_bit_length(client, args.key)
        if args.bins is not None and args.bins != 2**bit_length:
            print(
                f"--bins {args.bins}: key {args.key!r} declares {2**bit_length} bins",
                file=sys.stderr,
            )
            return 2
        report = run(
            client,
            args.key,
            bit_length,
            out,
            n_targets=args.targets if args.targets is not None else 2 * 2**bit_length,
            admin=admin,
            max_in_flight=args.max_in_flight,
        )
    except RemoteError as e:
        print(f"refused: {e.code}: {e.reason}", file=sys.stderr)
        return 1
    except TufSignerError as e:
        print(f"error: {e.reason}", file=sys.stderr)
        return 1
    finally:
        if admin is not None:
            admin.close()
        if args.out is None:
            shutil.rmtree(out)
    total = time.perf_counter() - start
    print(
        f"OK: {report.bins} bins, {report.targets} targets, online key "
        f"{report.old_key[:12]}... -> {report.new_key[:12]}..., clients at root "
        f"v{report.views['fresh'].root_version}; {total:.1f} s in all"
        + (f"; repository in {out}" if args.out else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
