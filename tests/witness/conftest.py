"""A real witness process (``tuf-signer witness serve``), test logs, and raw HTTP helpers."""

from __future__ import annotations

import base64
import http.client
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import free_port
from tuf_signer.audit._checkpoint import Checkpoint
from tuf_signer.audit._merkle import MemoryHashes, consistency_proof, leaf_hash, tree_hash
from tuf_signer.audit._note import (
    ED25519,
    Note,
    NoteSignature,
    VerifierKey,
    parse_verifier_key,
    sign_text,
)
from tuf_signer.witness import create_witness, format_submission, origin_hash

CLI = [sys.executable, "-m", "tuf_signer.cli"]
WITNESS_NAME = "witness.test/w1"


@dataclass
class Log:
    """A test log: an origin, its Ed25519 key and an RFC 6962 tree of made-up records."""

    origin: str
    private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    tree: MemoryHashes = field(default_factory=MemoryHashes)
    prefix: str = "record"

    @property
    def vkey(self) -> VerifierKey:
        return VerifierKey(self.origin, ED25519, self.private.public_key().public_bytes_raw())

    def grow(self, size: int) -> None:
        while self.tree.size < size:
            self.tree.append(leaf_hash(f"{self.prefix} {self.tree.size}".encode()))

    def root(self, size: int) -> bytes:
        self.grow(size)
        return tree_hash(size, self.tree)

    def proof(self, old: int, new: int) -> tuple[bytes, ...]:
        self.grow(new)
        return consistency_proof(old, new, self.tree)

    def sign(self, text: str, *extra: NoteSignature) -> bytes:
        """The note ``text`` signed by this log's key, then ``extra`` lines."""
        ours = sign_text(text, self.vkey, self.private.sign)
        return Note(text, (ours, *extra)).format()

    def checkpoint(self, size: int) -> bytes:
        """The signed checkpoint of the tree at ``size``."""
        return self.sign(Checkpoint(self.origin, size, self.root(size)).body())

    def text(self, size: int, root: bytes | None = None) -> str:
        """A checkpoint text with any root (no checks: for bad checkpoints)."""
        root = self.root(size) if root is None else root
        return f"{self.origin}\n{size}\n{base64.b64encode(root).decode()}\n"

    def submission(self, old: int, new: int) -> bytes:
        """A correct add-checkpoint body from ``old`` to ``new``."""
        return format_submission(old, self.proof(old, new), self.checkpoint(new))


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> Reply:
    """One HTTP request on a new connection."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def raw_exchange(url: str, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, return everything the server sends until it closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


@dataclass
class WitnessProcess:
    """``tuf-signer witness serve`` on a free loopback port, with what it was made with."""

    directory: Path
    config: Path
    url: str
    vkey: VerifierKey
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> None:
        log_file = (self.directory / "witness.log").open("ab")
        self.proc = subprocess.Popen(
            [*CLI, "witness", "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        log_file.close()
        host, port = self.url.removeprefix("http://").split(":")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the witness exited: {self.log()}")
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"the witness did not listen: {self.log()}")

    def stop(self) -> int:
        """SIGTERM and wait; the exit code (killed, and a failure, after 30 s)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return (self.directory / "witness.log").read_text(errors="replace")

    def post(self, body: bytes) -> Reply:
        return request(self.url, "POST", "/add-checkpoint", body)

    def latest(self, origin: str) -> Reply:
        return request(self.url, "GET", f"/{origin_hash(origin)}/checkpoint")


def make_witness(
    directory: Path,
    logs: Sequence[Log],
    settings: str = "",
    extra_vkeys: Sequence[tuple[str, str]] = (),
) -> WitnessProcess:
    """``create_witness`` for ``logs``, ``settings`` lines set in ``[witness]``; not started."""
    url = f"http://127.0.0.1:{free_port()}"
    config, vkey = create_witness(
        directory,
        WITNESS_NAME,
        url.removeprefix("http://"),
        [*((log.origin, log.vkey.text()) for log in logs), *extra_vkeys],
    )
    text = config.read_text()
    for line in settings.splitlines():
        key = line.partition("=")[0].strip()
        text, replaced = re.subn(rf"^{key} = .*$", line, text, count=1, flags=re.MULTILINE)
        if not replaced:
            text = text.replace("[witness]\n", f"[witness]\n{line}\n", 1)
    config.write_text(text)
    return WitnessProcess(directory, config, url, parse_verifier_key(vkey))


@pytest.fixture
def start_witness(tmp_path: Path) -> Iterator[Callable[..., WitnessProcess]]:
    """Start witnesses for this test (``make_witness`` arguments); all stopped at the end."""
    started: list[WitnessProcess] = []

    def start(logs: Sequence[Log], settings: str = "", name: str = "w") -> WitnessProcess:
        w = make_witness(tmp_path / name, logs, settings)
        w.start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
