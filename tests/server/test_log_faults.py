"""The transparency log against hostile or failing witnesses and a store restored under it.

Findings of the issue 13 review, each a row here. The log runs over a real
SQLite store and a real audit key in SoftHSM; witnesses are real HTTP servers:
`tuf-signer witness serve`, or a small server in a thread that answers what the
row needs (a 403 on its monitoring endpoint, an unsigned 422, an extra
cosignature line under its name).
"""

from __future__ import annotations

import base64
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import free_port
from tests.witnesses import ORIGIN, WITNESS, WitnessProcess
from tuf_signer.audit import SqliteAuditStore
from tuf_signer.audit._checkpoint import open_checkpoint
from tuf_signer.audit._note import COSIGNATURE_V1, VerifierKey, cosign_text, parse_note
from tuf_signer.config import LogConfig, WitnessConfig
from tuf_signer.errors import LogUnavailableError
from tuf_signer.model import AuditEvent, Outcome
from tuf_signer.server._auditkey import CheckpointSigner, create_audit_key
from tuf_signer.server._log import TransparencyLog
from tuf_signer.witness import create_witness

T = "2026-12-01T00:00:00.000000Z"


def _note(n: int) -> Any:
    from tuf_signer.audit import Entry

    return Entry(
        AuditEvent(
            time=T,
            identity="test",
            operation="note",
            outcome=Outcome.GRANTED,
            status="OK",
            detail={"n": n},
        )
    )


class Store:
    """A real SQLite store that the test appends to, backs up and restores."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = SqliteAuditStore(path)
        self.n = 0

    def append(self, count: int) -> None:
        for _ in range(count):
            self.n += 1
            self.store.append([_note(self.n)])

    def backup(self, to: Path) -> None:
        with sqlite3.connect(self.path) as src, sqlite3.connect(to) as dst:
            src.backup(dst)

    def restore(self, frm: Path) -> None:
        """Put an older copy in place under the open store (SQLite's backup API)."""
        with sqlite3.connect(frm) as src, sqlite3.connect(self.path) as dst:
            src.backup(dst)


@pytest.fixture
async def signer(softhsm: Any) -> AsyncIterator[CheckpointSigner]:
    backend = softhsm.backend("softhsm")
    await backend.start()
    try:
        handle, key = await create_audit_key(backend, ORIGIN)
        yield CheckpointSigner(backend, handle, key)
    finally:
        await backend.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "audit.db")
    yield s
    s.store.close()


def _log(
    store: Store, signer: CheckpointSigner, witnesses: list[tuple[str, str]], **kw: Any
) -> TransparencyLog:
    config = LogConfig(
        origin=ORIGIN,
        key_backend="softhsm",
        key_handle="unused",
        witnesses=tuple(
            WitnessConfig(url=url, vkey=vkey, name=vkey.split("+", 1)[0]) for url, vkey in witnesses
        ),
        witness_quorum=1 if witnesses else 0,
        witness_timeout=2.0,
        **kw,
    )
    return TransparencyLog(store.store, signer, config)


@pytest.fixture
def witness(tmp_path: Path, signer: CheckpointSigner) -> Iterator[WitnessProcess]:
    port = free_port()
    config, vkey = create_witness(
        tmp_path / "witness", WITNESS, f"127.0.0.1:{port}", [(ORIGIN, signer.key.text())]
    )
    w = WitnessProcess(config, port, vkey)
    w.start()
    try:
        yield w
    finally:
        w.stop()


def _checkpoints(store: Store) -> list[int]:
    with sqlite3.connect(store.path) as db:
        return [r[0] for r in db.execute("SELECT size FROM audit_checkpoints ORDER BY size")]


async def test_a_store_restored_under_a_running_signer_halts_it(
    store: Store, signer: CheckpointSigner, witness: WitnessProcess, tmp_path: Path
) -> None:
    """Before: the gate read the old copy's own cosignature rows and stayed open."""
    log = _log(store, signer, [(witness.url, witness.vkey)], max_unwitnessed_records=1000)
    store.append(3)
    await log.start()
    store.backup(tmp_path / "old.db")
    store.append(5)
    await log.tick()
    assert log.sizes == (8, 8)
    store.restore(tmp_path / "old.db")
    store.n = 3
    store.append(1)  # the old copy grows on
    await log.tick()
    assert log.halted is not None and "behind witness" in log.halted.reason
    with pytest.raises(LogUnavailableError, match="the audit store is behind witness"):
        log.check()
    # Each refusal raises a new exception: one stored object would keep every
    # refused Sign's frames (and payloads) in its ever-growing traceback.
    refusals = []
    for _ in range(3):
        with pytest.raises(LogUnavailableError) as refused:
            log.check()
        refusals.append(refused.value)
    assert len({id(e) for e in refusals}) == 3
    # Nothing more is signed for the restored store: no split view under the log's key.
    signed = _checkpoints(store)
    store.append(6)
    await log.tick()
    assert _checkpoints(store) == signed and max(signed) < 8
    log.close()


async def test_a_halted_log_signs_no_checkpoint_at_start(
    store: Store, signer: CheckpointSigner, witness: WitnessProcess, tmp_path: Path
) -> None:
    """Before: the halted signer still signed checkpoints of the store it found behind."""
    store.append(2)
    store.backup(tmp_path / "old.db")
    first = _log(store, signer, [(witness.url, witness.vkey)])
    store.append(3)
    await first.start()
    first.close()
    store.restore(tmp_path / "old.db")
    store.n = 2
    store.append(1)
    before = _checkpoints(store)
    again = _log(store, signer, [(witness.url, witness.vkey)])
    await again.start()
    assert again.halted is not None
    assert _checkpoints(store) == before
    again.close()


class FakeWitness:
    """An HTTP server that answers as ``answer(path, body)`` says: (status, content type, body)."""

    def __init__(self, answer: Callable[[str, bytes], tuple[int, str, bytes]]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, body: bytes) -> None:
                status, kind, data = answer(self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply(b"")

            def do_POST(self) -> None:
                self._reply(self.rfile.read(int(self.headers["Content-Length"])))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.private = Ed25519PrivateKey.generate()
        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key = VerifierKey("fake.test/witness", COSIGNATURE_V1, raw)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        outer.requests = 0

    def cosign(self, body: bytes) -> str:
        """Its valid cosignature line of the checkpoint in an add-checkpoint body."""
        checkpoint = body.split(b"\n\n", 1)[1]
        text = parse_note(checkpoint).text
        return cosign_text(text, self.key, 1_700_000_000, self.private.sign).line()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[Callable[[Callable[..., tuple[int, str, bytes]]], FakeWitness]]:
    made: list[FakeWitness] = []

    def make(answer: Callable[..., tuple[int, str, bytes]]) -> FakeWitness:
        made.append(FakeWitness(lambda path, body: answer(made[-1], path, body)))
        return made[-1]

    yield make
    for f in made:
        f.close()


async def test_a_witness_refusing_its_monitoring_endpoint_neither_stops_the_start_nor_the_gate(
    store: Store, signer: CheckpointSigner, fake: Any
) -> None:
    """Before: a 403 on GET failed the start; later it froze the gate open."""
    w = fake(lambda _f, _path, _body: (403, "text/plain", b"go away"))
    log = _log(store, signer, [(w.url, w.key.text())], max_unwitnessed_records=3)
    store.append(1)
    await log.start()  # does not raise
    assert log.halted is None
    store.append(3)
    await log.tick()
    with pytest.raises(LogUnavailableError, match="records behind"):
        log.check()
    log.close()


async def test_an_unsigned_422_does_not_halt_signing(
    store: Store, signer: CheckpointSigner, fake: Any
) -> None:
    """Before: any 422 halted signing for good as a "fork"."""

    def answer(f: FakeWitness, path: str, body: bytes) -> tuple[int, str, bytes]:
        if path.endswith("/checkpoint"):
            return 404, "text/plain", b""
        if body.startswith(b"old 0\n"):
            return 409, "text/x.tlog.size", b"1\n"
        return 422, "text/plain", b"inconsistent"

    w = fake(answer)
    log = _log(store, signer, [(w.url, w.key.text())])
    store.append(3)
    await log.start()
    await log.tick()
    assert log.halted is None
    log.check()
    log.close()


async def test_only_a_cosignature_that_verifies_is_kept(
    store: Store, signer: CheckpointSigner, fake: Any
) -> None:
    """Before: a second line under the witness's name replaced the valid one."""

    def answer(f: FakeWitness, path: str, body: bytes) -> tuple[int, str, bytes]:
        if path.endswith("/checkpoint"):
            return 404, "text/plain", b""
        valid = f.cosign(body).rstrip("\n")
        name, blob = valid.rsplit(" ", 1)
        raw = base64.b64decode(blob)
        # The same key ID with a signature that fails, and another key of that name
        # (tlog-cosignature lets a witness sign with two key types).
        forged = f"{name} {base64.b64encode(raw[:12] + bytes(64)).decode()}"
        other = f"{name} {base64.b64encode(b'ABCD' + raw[4:]).decode()}"
        return 200, "text/plain", f"{valid}\n{forged}\n{other}\n".encode()

    w = fake(answer)
    log = _log(store, signer, [(w.url, w.key.text())])
    store.append(2)
    await log.start()
    stored = store.store.latest_witnessed(ORIGIN)
    assert stored is not None
    open_checkpoint(stored.note, origin=ORIGIN, log_key=signer.key, cosigners=[w.key], quorum=1)
    assert log.sizes == (2, 2)
    log.close()


async def test_after_a_restart_nothing_counts_as_witnessed_until_a_witness_answers(
    store: Store, signer: CheckpointSigner, witness: WitnessProcess
) -> None:
    """Before: the store's own cosignature rows opened the gate with the witness away."""
    first = _log(store, signer, [(witness.url, witness.vkey)], max_unwitnessed_records=3)
    store.append(4)
    await first.start()
    assert first.sizes == (4, 4)
    first.close()
    witness.stop()
    again = _log(store, signer, [(witness.url, witness.vkey)], max_unwitnessed_records=3)
    await again.start()
    with pytest.raises(LogUnavailableError, match="4 records behind"):
        again.check()
    witness.start()
    await again.tick()
    again.check()
    again.close()
