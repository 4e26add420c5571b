"""``tuf-signer audit checkpoint|verifier-key|prove|consistency``, run for real.

Offline (``--config``: the store, and the HSM for ``verifier-key``) and through
a running server (``--server``), each prints exactly its artefact; the two ways
print the same bytes, and Go's ``sumdb`` verifies them. The audit key is a real
SoftHSM key (``create_audit_key``) and signs the checkpoints; the server (in this
process, on its own thread) is given that key's log on ``AuditLog``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, Timestamp

from tests.audit._logkeys import build_go_proof, serve_log
from tuf_signer.audit import SqliteAuditStore, merkle_inclusion, parse_consistency
from tuf_signer.audit._checkpoint import (
    Checkpoint,
    open_checkpoint,
    parse_tlog_proof,
    verify_tlog_proof,
)
from tuf_signer.audit._merkle import leaf_hash, verify_consistency
from tuf_signer.audit._note import VerifierKey
from tuf_signer.cli import _auditlog
from tuf_signer.client import CheckpointInfo, Client, ConsistencyInfo
from tuf_signer.config import load_config
from tuf_signer.errors import TufSignerError
from tuf_signer.server._auditkey import CheckpointSigner, create_audit_key

from ..client.conftest import ONLINE_BINS, ONLINE_ROLES, ServerThread
from ..server.conftest import write_config
from .conftest import run

ORIGIN = "tuf-signer.test/cli-audit"
SIZES = (2, 4)  # checkpoints; record 5 comes after them


@dataclass(frozen=True)
class Log:
    offline: Path  # a config with the log set (audit.origin, audit.key)
    plain: Path  # the same store and token, the log not set (the server's)
    server: str
    key: VerifierKey
    notes: dict[int, bytes]


async def _audit_key(softhsm: Any) -> tuple[str, VerifierKey]:
    backend = softhsm.backend("softhsm")
    await backend.start()
    try:
        return await create_audit_key(backend, ORIGIN)
    finally:
        await backend.close()


async def _sign_checkpoints(
    softhsm: Any, handle: str, key: VerifierKey, db: Path
) -> dict[int, bytes]:
    backend = softhsm.backend("softhsm")
    await backend.start()
    notes = {}
    try:
        signer = CheckpointSigner(backend, handle, key)
        with SqliteAuditStore(db) as store:
            for size in SIZES:
                note = await signer.sign(Checkpoint(ORIGIN, size, store.tree_hash(size)))
                notes[size] = note.format()
                store.add_checkpoint(ORIGIN, size, notes[size], "2025-01-01T00:00:00Z")
    finally:
        await backend.close()
    return notes


def _timestamp(version: int) -> bytes:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    return Metadata(Timestamp(version=version, expires=expires)).signed_bytes


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory, softhsm: Any) -> Iterator[Log]:
    """Records 1..5 (a key, four timestamps), checkpoints of 2 and 4, a server serving them."""
    directory = tmp_path_factory.mktemp("cli-audit")
    plain = write_config(directory, softhsm)
    handle, key = asyncio.run(_audit_key(softhsm))
    offline = directory / "offline.toml"
    offline.write_text(
        plain.read_text().replace(
            'path = "audit.db"\n',
            f'path = "audit.db"\norigin = "{ORIGIN}"\n'
            f'key = {{ backend = "softhsm", handle = "{handle}" }}\n',
        )
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        serve_log(monkeypatch, key)
        thread = ServerThread(plain)
        address = thread.start()
    try:
        with Client(address, timeout=60) as client:
            client.create_key("online", ONLINE_ROLES, activate=True, bins=ONLINE_BINS)
            for version in (1, 2, 3):
                client.sign("online", _timestamp(version))
            notes = asyncio.run(
                _sign_checkpoints(softhsm, handle, key, load_config(plain).audit.path)
            )
            client.sign("online", _timestamp(4))  # record 5: no checkpoint covers it
        yield Log(offline, plain, address, key, notes)
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def go_proof(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict[str, Any]]]:
    return build_go_proof(tmp_path_factory)


def _offline(log: Log, *args: str, **kw: Any) -> Any:
    return run("audit", *args, "--config", str(log.offline), **kw)


def _remote(log: Log, *args: str, **kw: Any) -> Any:
    return run("audit", *args, "--server", log.server, **kw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- each command prints exactly its artefact, the same both ways ------------------------------

COMMANDS = {
    "checkpoint": ("checkpoint",),
    "checkpoint-2": ("checkpoint", "--size", "2"),
    "verifier-key": ("verifier-key",),
    "prove": ("prove", "--seq", "3"),
    "prove-in-2": ("prove", "--seq", "2", "--size", "2"),
    "consistency": ("consistency", "--from", "2"),
    "consistency-1-2": ("consistency", "--from", "1", "--to", "2"),
    "consistency-same": ("consistency", "--from", "4", "--to", "4"),
}


@pytest.mark.parametrize("args", COMMANDS.values(), ids=COMMANDS.keys())
def test_offline_and_through_the_server_print_the_same(log: Log, args: tuple[str, ...]) -> None:
    offline, remote = _offline(log, *args), _remote(log, *args)
    assert offline.stdout and offline.stdout == remote.stdout
    # Offline verifier-key logs the HSM login on stderr; nothing else is said.
    assert remote.stderr == "" and " ERROR " not in offline.stderr


def test_checkpoint_prints_the_note_exactly(log: Log) -> None:
    assert _offline(log, "checkpoint").stdout.encode() == log.notes[4]
    assert _offline(log, "checkpoint", "--size", "2").stdout.encode() == log.notes[2]
    assert _offline(log, "checkpoint", "--size", "0").stdout.encode() == log.notes[4]
    signed = open_checkpoint(log.notes[4], origin=ORIGIN, log_key=log.key)
    assert signed.checkpoint.size == 4


def test_verifier_key_is_the_hsm_keys(log: Log) -> None:
    # Offline, it comes from the HSM: the same key that signed the checkpoints.
    assert _offline(log, "verifier-key").stdout == log.key.text() + "\n"


def test_prove_prints_a_tlog_proof_that_verifies(
    log: Log, go_proof: Callable[..., list[dict[str, Any]]]
) -> None:
    leaves = [
        line.encode()
        for line in run("audit", "export", "--config", str(log.plain)).stdout.split("\n")
    ]
    text = _offline(log, "prove", "--seq", "3").stdout.encode()
    proof = parse_tlog_proof(text)
    assert proof.format() == text and proof.checkpoint == log.notes[4]
    verify_tlog_proof(
        proof,
        leaf_hash=leaf_hash(leaves[2]),
        origin=ORIGIN,
        log_key=log.key,
        verify_inclusion=merkle_inclusion,
    )
    (answer,) = go_proof(
        {"op": "inclusion", "proof": _b64(text), "leaf": _b64(leaves[2]), "vkey": log.key.text()}
    )
    assert (answer.get("error"), answer["index"], answer["size"]) == (None, 2, 4)


def test_consistency_prints_hashes_an_empty_line_and_the_note(
    log: Log, go_proof: Callable[..., list[dict[str, Any]]]
) -> None:
    text = _offline(log, "consistency", "--from", "2").stdout.encode()
    hashes, note = parse_consistency(text)
    assert note == log.notes[4]
    assert text == b"".join(base64.b64encode(h) + b"\n" for h in hashes) + b"\n" + note
    old = open_checkpoint(log.notes[2], origin=ORIGIN, log_key=log.key).checkpoint
    new = open_checkpoint(note, origin=ORIGIN, log_key=log.key).checkpoint
    verify_consistency(2, 4, hashes, old.root_hash, new.root_hash)
    (answer,) = go_proof(
        {
            "op": "consistency",
            "proof": _b64(text),
            "old": _b64(log.notes[2]),
            "vkey": log.key.text(),
        }
    )
    assert (answer.get("error"), answer["old_size"], answer["size"]) == (None, 2, 4)
    same = _offline(log, "consistency", "--from", "4", "--to", "4").stdout.encode()
    assert same == b"\n" + log.notes[4]


# --- errors: a reason on stderr, exit 1, nothing on stdout ----------------------------------------

RETRY = "retry after audit.checkpoint_interval_seconds"
ERRORS = {
    "not-yet-covered": (
        ("prove", "--seq", "5"),
        f"record 5 is not covered by a checkpoint yet (the newest covers 4); {RETRY}",
        "FAILED_PRECONDITION",
    ),
    "seq-0": (
        ("prove", "--seq", "0"), "seq must be between 1 and 2**63-1, got 0", "INVALID_ARGUMENT"
    ),
    "beyond-the-log": (("prove", "--seq", "999"), "record 999 is beyond the log's", "OUT_OF_RANGE"),
    "not-a-checkpoint": (
        ("checkpoint", "--size", "3"), "no checkpoint of tree size 3 is stored", "NOT_FOUND"
    ),
    "from-above-to": (
        ("consistency", "--from", "4", "--to", "2"), "from size 4 is above to size 2",
        "INVALID_ARGUMENT",
    ),
    "from-0": (("consistency", "--from", "0"), "from size must be between 1", "INVALID_ARGUMENT"),
}  # fmt: skip


@pytest.mark.parametrize(("args", "reason", "status"), ERRORS.values(), ids=ERRORS.keys())
def test_errors_say_why(log: Log, args: tuple[str, ...], reason: str, status: str) -> None:
    offline = _offline(log, *args, check=False)
    assert (offline.returncode, offline.stdout) == (1, "")
    assert offline.stderr.startswith(f"error: {reason}"), offline.stderr
    remote = _remote(log, *args, check=False)
    assert (remote.returncode, remote.stdout) == (1, "")
    assert remote.stderr.startswith(f"refused: {status}: {reason}"), remote.stderr


def test_config_or_server_not_both(log: Log) -> None:
    out = run(
        "audit", "checkpoint", "--config", str(log.offline), "--server", log.server, check=False
    )
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == "error: give --config (read the store offline) or --server, not both\n"


@pytest.mark.parametrize("command", ["checkpoint", "verifier-key", "prove", "consistency"])
def test_offline_needs_the_log_in_the_config(log: Log, command: str) -> None:
    extra = {"prove": ("--seq", "1"), "consistency": ("--from", "1")}.get(command, ())
    out = run("audit", command, *extra, "--config", str(log.plain), check=False)
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == (
        f"error: {log.plain}: audit.origin and audit.key are not set: the transparency log is off\n"
    )


class _HostileClient:
    """Answers every call with text a terminal would act on (an escape sequence)."""

    BAD = b"\x1b[2J\x1b]0;pwned\x07\n"

    def __enter__(self) -> _HostileClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def checkpoint(self, size: int = 0, *, fresh: bool = False) -> Any:
        return CheckpointInfo(self.BAD, "\x1b[2J+00000000+AQ==", 1)

    def prove_inclusion(self, seq: int, tree_size: int = 0) -> bytes:
        return b"c2sp.org/tlog-proof@v1\nindex 0\n\n" + self.BAD

    def prove_consistency(self, from_size: int, to_size: int = 0) -> Any:
        return ConsistencyInfo((), self.BAD)


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        ("cmd_checkpoint", {"size": 0, "fresh": False}),
        ("cmd_verifier_key", {}),
        ("cmd_prove", {"seq": 1, "size": 0}),
        ("cmd_consistency", {"from_size": 1, "to_size": 0}),
    ],
)
def test_a_hostile_server_gets_nothing_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, command: str, fields: dict[str, int]
) -> None:
    monkeypatch.setattr(_auditlog, "_client", lambda args: _HostileClient())
    args = argparse.Namespace(config=None, server="127.0.0.1:1", **fields)
    with pytest.raises(TufSignerError, match="the server sent a malformed"):
        getattr(_auditlog, command)(args)
    assert capsys.readouterr().out == ""
