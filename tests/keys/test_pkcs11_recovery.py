"""Pkcs11Backend through HSM faults (issue 12, findings 1 and 2).

A SoftHSM token whose directory goes away and comes back stands for a network
HSM that fails over: while it is away every call is ``BackendUnavailableError``
(never a plain ``BackendError``, which the server answers INTERNAL), and once it
is back the backend recovers on its own within ``RECOVERY_BOUND``. Two processes
on one token stand for ``server.workers = 2``: a key one of them made is found
by the other even after that one made a key of its own.

The in-process tests move the session's second token ("test-2"), so the main
token of the other tests stays where it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import Signature

from tests.conftest import SoftHsm
from tuf_signer.errors import BackendError, BackendUnavailableError
from tuf_signer.keys import NewKey, Pkcs11Backend
from tuf_signer.model import Algorithm
from tuf_signer.testing.softhsm import init_token, token_directory, write_softhsm_config

ED = Algorithm.ED25519
TOKEN = "test-2"
# Signs succeed again within this many seconds of the token being back.
RECOVERY_BOUND = 2.0


@contextlib.contextmanager
def token_away(conf: Path, label: str) -> Iterator[None]:
    """Move token ``label``'s directory away for the block, and back after it."""
    directory = token_directory(conf, label)
    # Out of the token directory: SoftHSM takes any directory in it for a token.
    away = directory.parent.parent / f"{directory.name}.away"
    directory.rename(away)
    try:
        yield
    finally:
        away.rename(directory)


def verify(key: NewKey, data: bytes, signature: bytes) -> None:
    key.public_key.verify_signature(Signature(key.public_key.keyid, signature.hex()), data)


async def sign_within(backend: Pkcs11Backend, key: NewKey, bound: float) -> float:
    """Sign until it works; returns how long that took. Fails after ``bound`` seconds."""
    start = time.monotonic()
    while True:
        try:
            signature = await backend.sign(key.handle, ED, b"back")
        except BackendUnavailableError:
            if time.monotonic() - start > bound:
                raise
            await asyncio.sleep(0.02)
        else:
            verify(key, b"back", signature)
            return time.monotonic() - start


@pytest.fixture
async def blip(softhsm: SoftHsm) -> Any:
    """A started backend on the token the tests move, and a key on it."""
    backend = softhsm.backend("blip", token_label=TOKEN)
    await backend.start()
    try:
        key = await backend.create(ED, "blip")
        verify(key, b"before", await backend.sign(key.handle, ED, b"before"))
        yield backend, key
    finally:
        await backend.close()


async def test_token_away_and_back_while_idle(softhsm: SoftHsm, blip: Any) -> None:
    backend, key = blip

    with token_away(softhsm.conf, TOKEN):
        # No sign runs while it is away; the server's health probe does.
        await asyncio.sleep(0.5)
        with pytest.raises(BackendUnavailableError, match=f"'{TOKEN}'"):
            await backend.check()
        await asyncio.sleep(0.5)

    # A probe passes within the bound (the module is re-initialised at most once
    # a second, so the first probe may come too soon), health turns SERVING at
    # that probe, and the first sign then works. No restart.
    back = time.monotonic()
    while True:
        try:
            await backend.check()
            break
        except BackendUnavailableError:
            assert time.monotonic() - back < RECOVERY_BOUND, "no probe passed within the bound"
            await asyncio.sleep(0.1)
    verify(key, b"first", await backend.sign(key.handle, ED, b"first"))


async def test_token_away_is_unavailable_then_recovers(softhsm: SoftHsm, blip: Any) -> None:
    backend, key = blip

    with token_away(softhsm.conf, TOKEN):
        # SoftHSM may still sign from memory for a moment; the probe sees the
        # token gone, and from then on every call is refused as unavailable.
        with pytest.raises(BackendUnavailableError, match=f"'{TOKEN}'"):
            await backend.check()
        for _ in range(5):
            with pytest.raises(BackendUnavailableError, match=f"'{TOKEN}'"):
                await backend.sign(key.handle, ED, b"during")
            with pytest.raises(BackendUnavailableError):
                await backend.check()
            await asyncio.sleep(0.2)

    took = await sign_within(backend, key, RECOVERY_BOUND)
    await backend.check()

    assert took <= RECOVERY_BOUND


@pytest.mark.slow
async def test_token_away_and_back_under_load(softhsm: SoftHsm, blip: Any) -> None:
    backend, key = blip
    outcomes: list[tuple[float, str]] = []  # (when, "ok" or the error's class)
    stop = asyncio.Event()

    async def load(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                await backend.sign(key.handle, ED, b"%d %d" % (i, n))
                outcome = "ok"
            except BackendError as e:
                outcome = type(e).__name__
                await asyncio.sleep(0.005)
            outcomes.append((time.monotonic(), outcome))

    tasks = [asyncio.create_task(load(i)) for i in range(8)]
    try:
        await asyncio.sleep(0.3)
        with token_away(softhsm.conf, TOKEN):
            away_at = time.monotonic()
            await asyncio.sleep(1.5)
        back_at = time.monotonic()
        await asyncio.sleep(RECOVERY_BOUND + 0.5)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)

    kinds = {outcome for _, outcome in outcomes}
    assert kinds <= {"ok", "BackendUnavailableError"}, kinds
    during = [o for t, o in outcomes if away_at + 0.1 < t < back_at]
    assert "BackendUnavailableError" in during
    recovered = min(t for t, o in outcomes if o == "ok" and t > back_at)
    assert recovered - back_at <= RECOVERY_BOUND
    after_bound = [o for t, o in outcomes if t > back_at + RECOVERY_BOUND]
    assert after_bound and set(after_bound) == {"ok"}


# --- two processes on one token (server.workers = 2) -------------------------------------

TWO_LABEL = "two"
TWO_PIN = "1234"
REPLY_TIMEOUT = 60.0  # seconds: a spawned worker imports the package first


def _worker(conn: Connection, conf: str, module: str) -> None:
    """A process with its own Pkcs11Backend on the shared token, run by commands."""
    os.environ["SOFTHSM2_CONF"] = conf  # before the module is loaded
    asyncio.run(_serve(conn, module))


async def _serve(conn: Connection, module: str) -> None:
    backend = Pkcs11Backend("worker", module, TWO_LABEL, lambda: TWO_PIN)
    await backend.start()
    try:
        while True:
            command, arg = await asyncio.to_thread(conn.recv)
            if command == "stop":
                return
            try:
                if command == "create":
                    reply = (await backend.create(ED, "two-workers")).handle
                else:
                    await backend.sign(arg, ED, b"x")
                    reply = "signed"
            except BackendError as e:
                reply = f"{type(e).__name__}: {e.reason}"
            conn.send(reply)
    finally:
        await backend.close()


class Worker:
    """One spawned process running ``_worker``."""

    def __init__(self, conf: Path, module: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, theirs = context.Pipe()
        self.process = context.Process(
            target=_worker, args=(theirs, str(conf), str(module)), daemon=True
        )
        self.process.start()

    def ask(self, command: str, arg: str = "") -> str:
        self.conn.send((command, arg))
        if not self.conn.poll(REPLY_TIMEOUT):
            raise AssertionError(f"worker gave no answer to {command} in {REPLY_TIMEOUT}s")
        reply: str = self.conn.recv()
        return reply

    def stop(self) -> None:
        if self.process.is_alive():
            self.conn.send(("stop", ""))
            self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


@pytest.mark.slow
def test_two_processes_find_each_others_keys(tmp_path: Path, softhsm: SoftHsm) -> None:
    """A key X made is found by Y after Y made one of its own (SoftHSM's object view).

    SoftHSM re-reads a token's directory only when the token's generation
    counter moved since it last looked, and its own writes take the counter
    along: after Y creates a key, the keys X created just before are not in
    Y's view, and reopening the session does not change that.
    """
    conf = write_softhsm_config(tmp_path / "hsm")
    init_token(conf, TWO_LABEL, TWO_PIN, "5678")
    x, y = Worker(conf, softhsm.module), Worker(conf, softhsm.module)
    try:
        for _ in range(3):
            made_by_x = x.ask("create")
            made_by_y = y.ask("create")  # Y's own write hides X's key from Y

            assert y.ask("sign", made_by_x) == "signed"
            assert x.ask("sign", made_by_y) == "signed"

        missing = os.urandom(16).hex()
        assert y.ask("sign", missing) == (
            f"BackendError: no private key with handle {missing} on token {TWO_LABEL!r}"
        )
    finally:
        x.stop()
        y.stop()
