"""``tuf-signer audit monitor`` end to end, as a cron job runs it.

A real signer (SoftHSM, SQLite, the audit key in the HSM) with a real witness
process (`tuf-signer witness serve`) signs a PEP 458 repository built by
examples/pep458_repository.py, which a real HTTP server serves. The monitor
runs as the real command, through the server (``--server``) and offline from
the store (``--config``). Then one bin is re-signed outside the service, by a
software copy of the key (registered as a second version of the key in the
store, as a stolen key would be listed) used directly with securesystemslib.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from examples.pep458_repository import OfflineKeys, Pep458Repository, make_target_files, serve
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization.json import JSONSerializer

from tests.conftest import free_port
from tests.witnesses import ORIGIN, WITNESS, WitnessProcess, audit_key, set_log
from tuf_signer.audit import AddVersion, Entry, SqliteAuditStore
from tuf_signer.client import Client, close_shared_clients, register, shared_client
from tuf_signer.errors import RemoteError
from tuf_signer.model import AuditEvent, BinsDelegation, KeyState, KeyVersion, Outcome
from tuf_signer.policy import bins_pattern
from tuf_signer.witness import create_witness

from ..client.conftest import ServerThread
from ..server.conftest import write_config
from .conftest import run

KEY = "repo"
BITS = 2  # four bins, "bins-0".."bins-3"
SOON = 20.0


@dataclass
class World:
    address: str
    config: Path
    repo: Path  # the directory served: metadata/ and targets/
    url: str  # its metadata URL
    log_vkey: str
    witness_vkey: str
    outside: CryptoSigner  # the copy of the key, outside the service
    witness: WitnessProcess

    def monitor(self, *args: str, mode: str = "server") -> Any:
        source = (
            ["--server", self.address, "--witness-vkey", self.witness_vkey]
            if mode == "server"
            else ["--config", str(self.config)]
        )
        return run("audit", "monitor", "--repository", self.url, *source, *args, check=False)

    def json(self, mode: str = "server") -> tuple[int, dict[str, Any]]:
        out = self.monitor("--vkey", self.log_vkey, "--json", mode=mode)
        return out.returncode, json.loads(out.stdout)


def _witnessed_everything(config: Path) -> None:
    end = time.monotonic() + SOON
    while True:
        store = SqliteAuditStore(config.parent / "audit.db")
        try:
            newest = store.latest_witnessed(ORIGIN)
            if newest is not None and newest.size >= store.tree_size():
                return
        finally:
            store.close()
        assert time.monotonic() < end, "the witness did not cosign every record"
        time.sleep(0.1)


def _register_outside_copy(config: Path, outside: CryptoSigner) -> None:
    """The key's second version: the software copy, recorded as the server records a rotation."""
    key = outside.public_key
    version = KeyVersion(
        key_name=KEY,
        version=2,
        state=KeyState.PENDING,
        keyid=key.keyid,
        public_key=key.to_dict(),
        handle="outside-the-hsm",
        created_at="2026-01-01T00:00:00.000000Z",
    )
    event = AuditEvent(
        time="2026-01-01T00:00:00.000000Z",
        identity="admin",
        operation="rotate-key",
        outcome=Outcome.GRANTED,
        status="OK",
        key_name=KEY,
        keyid=key.keyid,
        key_version=2,
    )
    store = SqliteAuditStore(config.parent / "audit.db")
    try:
        (committed,) = store.append([Entry(event, AddVersion(version))])
        assert committed.error is None
    finally:
        store.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, softhsm: Any) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("monitor")
    handle, log_vkey = asyncio.run(audit_key(softhsm))
    port = free_port()
    witness_config, witness_vkey = create_witness(
        tmp / "witness", WITNESS, f"127.0.0.1:{port}", [(ORIGIN, log_vkey)]
    )
    witness = WitnessProcess(witness_config, port, witness_vkey)
    config = write_config(tmp / "signer", softhsm)
    set_log(config, handle, witness, "checkpoint_interval_seconds = 0.2\n")
    witness.start()
    outside = CryptoSigner.generate_ed25519()
    server = ServerThread(config)
    try:
        address = server.start()
        with Client(address, timeout=60) as client:
            pattern = bins_pattern(BinsDelegation("bins", BITS))
            roles = [("timestamp", 86400), ("snapshot", 86400), (pattern, 86400)]
            client.create_key(KEY, roles, activate=True, bins=f"bins:{BITS}")
        server.stop()
        _register_outside_copy(config, outside)
        server = ServerThread(config)
        address = server.start()
        register()
        repo = Pep458Repository(
            tmp / "repo", shared_client(address), KEY, BITS, OfflineKeys.generate()
        )
        repo.build(make_target_files(8))
        _witnessed_everything(config)
        with serve(tmp / "repo") as url:
            yield World(
                address,
                config,
                tmp / "repo",
                f"{url}/metadata/",
                log_vkey,
                witness_vkey,
                outside,
                witness,
            )
    finally:
        close_shared_clients()
        server.stop()
        witness.stop()


# Files: 1.root.json, timestamp, snapshot, targets, 4 bins. Root and targets carry the
# offline keys' signatures (ignored); timestamp, snapshot and the bins the held key's.
COUNTS = {"files": 8, "signatures": 8, "held": 6, "other": 2, "roles_listed": 4}


@pytest.mark.parametrize("mode", ["server", "config"])
def test_a_repository_signed_through_the_service_passes(world: World, mode: str) -> None:
    code, report = world.json(mode)
    assert code == 0, report
    assert {k: report[k] for k in COUNTS} == COUNTS
    assert report["ok"] is True and report["proven"] == 6 and report["findings"] == []
    assert report["witnessed_size"] >= 8
    # For a person: one summary line and nothing else.
    out = world.monitor("--vkey", world.log_vkey, mode=mode)
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    assert line.startswith("OK: 8 files, 8 signatures, 6 by held keys: 6 logged and proven")


def test_a_sample_of_bins(world: World) -> None:
    out = world.monitor("--vkey", world.log_vkey, "--bins", "1", "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 0
    assert (report["roles_checked"], report["files"], report["proven"]) == (1, 5, 3)


@pytest.fixture
def resigned(world: World) -> Iterator[str]:
    """``1.bins-2.json`` with a new target, re-signed by the copy outside the service."""
    path = world.repo / "metadata" / "1.bins-2.json"
    original = path.read_bytes()
    md = Metadata[Targets].from_bytes(original)
    data = b"a trojan"
    md.signed.targets["evil/x.tar.gz"] = TargetFile.from_data("evil/x.tar.gz", data)
    md.signatures.clear()
    md.sign(world.outside)
    path.write_bytes(md.to_bytes(JSONSerializer(compact=True)))
    try:
        yield path.name
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize("mode", ["server", "config"])
def test_a_bin_re_signed_outside_the_service_is_reported(
    world: World, resigned: str, mode: str
) -> None:
    code, report = world.json(mode)
    assert code == 1
    assert report["ok"] is False and report["proven"] == 5 and report["held"] == 6
    (finding,) = report["findings"]
    assert finding["kind"] == "unlogged" and finding["file"] == resigned
    assert finding["keyid"] == world.outside.public_key.keyid and finding["seq"] is None
    out = world.monitor("--vkey", world.log_vkey, mode=mode)
    assert out.returncode == 1
    summary, line = out.stdout.splitlines()
    assert summary.startswith("FAILED: 1 findings: 8 files, 8 signatures, 6 by held keys: 5")
    assert line.startswith(f"unlogged: {resigned}: a signature by held key ")
    assert "made outside tuf-signer" in line


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hostile(world: World) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A server whose files the test sets (the real repository's, to start with)."""
    meta = world.repo / "metadata"
    files = {p.name: p.read_bytes() for p in meta.iterdir()}
    handler = type("Handler", (_Handler,), {"files": files})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/metadata", files
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _unreachable(files: dict[str, bytes]) -> str:
    return f"http://127.0.0.1:{free_port()}/metadata"


BAD = [
    ("unreachable", "1.root.json: cannot fetch"),
    ("not-http", "--repository: 'file:///etc' is not an http(s) URL"),
    ("garbage-timestamp", "timestamp.json: not TUF metadata"),
    ("huge-timestamp", "timestamp.json: larger than 16384 bytes"),
    ("no-timestamp", "timestamp.json: HTTP 404"),
    ("huge-snapshot", ".snapshot.json: larger than"),
    ("wrong-vkey", "the log's checkpoint does not verify"),
    ("witness-key-as-vkey", "the log's verifier key is not an Ed25519 (0x01) key"),
]


@pytest.mark.parametrize(("case", "message"), BAD, ids=[c for c, _ in BAD])
def test_bad_inputs_exit_2_naming_what(
    world: World, hostile: tuple[str, dict[str, bytes]], case: str, message: str
) -> None:
    url, files = hostile
    vkey = world.log_vkey
    snapshot = next(n for n in files if n.endswith(".snapshot.json"))
    if case == "unreachable":
        url = _unreachable(files)
    elif case == "not-http":
        url = "file:///etc"
    elif case == "garbage-timestamp":
        files["timestamp.json"] = b"<html>oops</html>"
    elif case == "huge-timestamp":
        files["timestamp.json"] = b" " * 20_000
    elif case == "no-timestamp":
        del files["timestamp.json"]
    elif case == "huge-snapshot":
        # The timestamp lists no length: python-tuf's 2,000,000-byte cap applies.
        files[snapshot] = b" " * 2_000_001
    elif case == "wrong-vkey":
        vkey = _other_log_vkey()
    elif case == "witness-key-as-vkey":
        vkey = world.witness_vkey
    out = run(
        "audit", "monitor", "--repository", url, "--server", world.address,
        "--witness-vkey", world.witness_vkey, "--vkey", vkey, "--json", "--timeout", "5",
        check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert json.loads(out.stdout) == {"ok": False, "error": json.loads(out.stdout)["error"]}
    assert message in json.loads(out.stdout)["error"]
    if case in ("unreachable", "garbage-timestamp", "huge-timestamp", "no-timestamp"):
        assert url in out.stderr  # the error names the URL


def _other_log_vkey() -> str:
    from tuf_signer.audit._note import ED25519, VerifierKey

    raw = CryptoSigner.generate_ed25519().public_key.keyval["public"]
    return VerifierKey(ORIGIN, ED25519, bytes.fromhex(raw)).text()


# --- last: these stop the witness --------------------------------------------------------------


def _newest_checkpoint_covers_everything(config: Path) -> int:
    end = time.monotonic() + SOON
    while True:
        store = SqliteAuditStore(config.parent / "audit.db")
        try:
            newest = store.latest_checkpoint(ORIGIN)
            size = store.tree_size()
            if newest is not None and newest.size >= size:
                return size
        finally:
            store.close()
        assert time.monotonic() < end, "the signer made no checkpoint of the new records"
        time.sleep(0.1)


def test_refusals_and_a_checkpoint_not_yet_cosigned_raise_no_false_alarm(world: World) -> None:
    """Review finding 10: the server's newest checkpoint may not be cosigned yet, and
    refusals of a digest come back with its records; the monitor asks for neither."""
    timestamp = Metadata.from_bytes((world.repo / "metadata" / "timestamp.json").read_bytes())
    digest = hashlib.sha256(timestamp.signed_bytes).hexdigest()
    world.witness.stop()
    try:
        with Client(world.address, timeout=60) as client:
            for _ in range(3):  # a client retrying a request the policy refuses
                with pytest.raises(RemoteError):
                    client.sign(KEY, timestamp.signed_bytes, "timestamp", "ab" * 32)
            everything = client.find_records(digest)
            granted = client.find_records(digest, granted_signs_only=True)
            with pytest.raises(RemoteError, match="witnessed_by asks for the newest") as bad:
                client.checkpoint(1, witnessed_by=1)
            assert bad.value.code == "INVALID_ARGUMENT"
            with pytest.raises(RemoteError, match="cosigned by 5 witnesses") as none:
                client.checkpoint(witnessed_by=5)
            assert none.value.code == "FAILED_PRECONDITION"
        assert [json.loads(r.leaf)["event"]["outcome"] for r in everything] == [
            "granted", "refused", "refused", "refused"
        ]  # fmt: skip
        assert [r.seq for r in granted] == [everything[0].seq]
        size = _newest_checkpoint_covers_everything(world.config)
        store = SqliteAuditStore(world.config.parent / "audit.db")
        try:
            witnessed = store.latest_witnessed(ORIGIN)
            assert witnessed is not None and witnessed.size < size  # the newest is not cosigned
        finally:
            store.close()
        code, report = world.json("server")
        assert code == 0, report
        assert (report["proven"], report["pending"]) == (6, 0)
        assert report["witnessed_size"] == witnessed.size
    finally:
        world.witness.start()
