"""Pkcs11Backend faults beyond a token that goes away (issue 12 review, B, C, D, §2).

A PIN the token refused is never offered again until the PIN source yields
another one (real HSMs lock the user PIN after a few failed logins); a PIN
source that fails is ``UNAVAILABLE``, paced, and shows no PIN text; device
faults are ``UNAVAILABLE``; re-initialising the module (which logs every token
on it out) happens at most once a second; a health check gets the PKCS#11
thread between groups of a long queue of signs.

Logins are counted by wrapping ``_session.login`` (C_OpenSession + C_Login),
since SoftHSM itself never locks a PIN. Tests that break the session use the
second token ("test-2") or close their own session only.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import Any

import pkcs11
import pytest
from pkcs11 import exceptions as p11

from tests.conftest import SoftHsm
from tests.keys.test_pkcs11_recovery import token_away, verify
from tuf_signer.errors import BackendError, BackendUnavailableError
from tuf_signer.keys import Pkcs11Backend
from tuf_signer.keys.pkcs11 import _session, _thread
from tuf_signer.keys.pkcs11._recovery import REINIT_INTERVAL
from tuf_signer.model import Algorithm

# python-pkcs11 0.10.1: a search on a dead session fails again in its __del__ (test_pkcs11).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

ED = Algorithm.ED25519
BOUND = 10.0  # seconds: generous bound for anything that should take about one


@pytest.fixture
def logins(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[tuple[str, str]]:
    """Counts C_Login attempts by (token label, PIN offered)."""
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    real = _session.login

    def counting(token: pkcs11.Token, pin: str) -> pkcs11.Session:
        seen[(token.label, pin)] += 1
        return real(token, pin)

    monkeypatch.setattr(_session, "login", counting)
    return seen


def per_token(seen: collections.Counter[tuple[str, str]], label: str) -> int:
    return sum(n for (token, _), n in seen.items() if token == label)


async def close_session(backend: Pkcs11Backend) -> None:
    """Close the backend's session behind its back (the token logs it out)."""

    def close() -> None:
        assert backend._conn is not None and backend._conn.session is not None
        backend._conn.session.close()

    await _thread.run(close)


async def sign_ok_within(backend: Pkcs11Backend, handle: str, bound: float) -> bytes:
    deadline = time.monotonic() + bound
    while True:
        try:
            return await backend.sign(handle, ED, b"again")
        except BackendUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


def chain_text(e: BaseException | None) -> str:
    parts = []
    while e is not None:
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


# --- B: a refused PIN -------------------------------------------------------------------


async def test_refused_pin_is_offered_once_then_recovers_when_the_pin_changes(
    softhsm: SoftHsm, logins: collections.Counter[tuple[str, str]], caplog: Any
) -> None:
    source = {"pin": softhsm.pin}
    backend = softhsm.backend("refused", token_label="test-2", pin=lambda: source["pin"])
    await backend.start()
    try:
        key = await backend.create(ED, "refused")
        caplog.set_level(logging.DEBUG)
        for wrong in ("wrong-pin-1", "wrong-pin-2"):
            source["pin"] = wrong
            if wrong == "wrong-pin-1":
                await close_session(backend)  # the token logs it out: log in again
            errors: list[BackendError] = []
            until = time.monotonic() + 2.0  # signs and probes as fast as they come
            while time.monotonic() < until:
                for attempt in (
                    backend.sign(key.handle, ED, b"x"),
                    backend.check(),
                ):
                    try:
                        await attempt
                    except BackendError as e:
                        errors.append(e)
                await asyncio.sleep(0.01)
            assert len(errors) > 20
            assert all(isinstance(e, BackendUnavailableError) for e in errors), errors[-1]
            assert logins[("test-2", wrong)] == 1, logins
            assert "refused the PIN" in errors[-1].reason
            assert "pin_file" in errors[-1].reason
            assert not any(wrong in chain_text(e) for e in errors)

        source["pin"] = softhsm.pin  # the operator fixes the pin file: no restart
        verify(key, b"again", await sign_ok_within(backend, key.handle, BOUND))
        await backend.check()
        assert "wrong-pin" not in caplog.text
    finally:
        await backend.close()


async def test_failing_pin_source_is_unavailable_paced_and_shows_no_text(
    softhsm: SoftHsm, caplog: Any
) -> None:
    calls = collections.Counter[str]()
    failing = {"on": False}

    def provider() -> str:
        calls["read"] += 1
        if failing["on"]:
            b"\xff9876".decode("utf-8")  # UnicodeDecodeError: its text shows the byte
        return softhsm.pin

    backend = softhsm.backend("pin-source", pin=provider)
    await backend.start()
    try:
        key = await backend.create(ED, "pin-source")
        caplog.set_level(logging.DEBUG)
        failing["on"] = True
        await close_session(backend)
        calls.clear()
        errors: list[BackendError] = []
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            try:
                await backend.sign(key.handle, ED, b"x")
            except BackendError as e:
                errors.append(e)
            await asyncio.sleep(0.002)

        assert len(errors) > 50
        assert all(isinstance(e, BackendUnavailableError) for e in errors), errors[-1]
        assert "UnicodeDecodeError" in errors[-1].reason
        # Paced by the recovery backoff (attempts at most 0.75 s apart), not per call.
        assert calls["read"] <= 15, calls
        assert not any("xff" in chain_text(e) or "9876" in chain_text(e) for e in errors)
        assert "xff" not in caplog.text and "9876" not in caplog.text

        failing["on"] = False
        verify(key, b"again", await sign_ok_within(backend, key.handle, BOUND))
    finally:
        await backend.close()


# --- §2: device faults --------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault", [p11.FunctionFailed, p11.SessionCount, p11.SlotIDInvalid, p11.HostMemory]
)
async def test_device_faults_are_unavailable(softhsm: SoftHsm, fault: type[Exception]) -> None:
    backend = softhsm.backend("device-fault", token_label="test-2")
    await backend.start()
    try:
        key = await backend.create(ED, "device-fault")

        def failing(conn: Any) -> None:
            conn.require_session().close()  # as a failing device would lose it
            raise fault()

        with pytest.raises(BackendUnavailableError):
            await _thread.run(lambda: backend._call("signing", failing))
        verify(key, b"again", await sign_ok_within(backend, key.handle, BOUND))
    finally:
        await backend.close()


# --- C: two tokens on one module -------------------------------------------------------------


@pytest.fixture
async def two_tokens(softhsm: SoftHsm) -> Any:
    a = softhsm.backend("token-a", token_label="test")
    b = softhsm.backend("token-b", token_label="test-2")
    await a.start()
    await b.start()
    try:
        yield a, b, await a.create(ED, "a"), await b.create(ED, "b")
    finally:
        await a.close()
        await b.close()


async def test_missing_keys_on_one_token_reinitialise_the_module_at_most_once_a_second(
    two_tokens: Any, logins: collections.Counter[tuple[str, str]]
) -> None:
    a, b, key_a, _ = two_tokens
    await asyncio.sleep(REINIT_INTERVAL)  # a re-initialisation by an earlier test has aged out
    start = time.monotonic()
    outcomes = []
    for _ in range(5):
        missing = os.urandom(16).hex()
        try:
            await b.sign(missing, ED, b"x")
            outcomes.append("signed")
        except BackendError as e:
            outcomes.append(type(e).__name__)
        verify(key_a, b"a", await a.sign(key_a.handle, ED, b"a"))
    elapsed = time.monotonic() - start

    assert outcomes == ["BackendError"] * 5
    assert per_token(logins, "test") <= 1 + elapsed / REINIT_INTERVAL, (logins, elapsed)


async def test_token_away_logs_the_healthy_token_in_at_most_once_a_second(
    softhsm: SoftHsm, two_tokens: Any, logins: collections.Counter[tuple[str, str]]
) -> None:
    a, b, key_a, key_b = two_tokens
    signed = 0
    start = time.monotonic()
    with token_away(softhsm.conf, "test-2"):
        while time.monotonic() - start < 3.0:
            with pytest.raises(BackendUnavailableError):
                await b.check()
            verify(key_a, b"a", await a.sign(key_a.handle, ED, b"a"))  # A never fails
            signed += 1
            await asyncio.sleep(0.05)
    elapsed = time.monotonic() - start

    assert signed > 10
    assert per_token(logins, "test") <= 2 + elapsed / REINIT_INTERVAL, (logins, elapsed)
    verify(key_b, b"again", await sign_ok_within(b, key_b.handle, BOUND))


# --- D: health checks between groups of signs -------------------------------------------------


async def test_check_gets_the_thread_while_a_long_queue_is_signed(softhsm: SoftHsm) -> None:
    backend = softhsm.backend("queue", token_label="test")
    await backend.start()
    try:
        key = await backend.create(ED, "queue")
        items = [(key.handle, ED, b"%d" % i) for i in range(6000)]
        start = time.monotonic()
        batch = asyncio.create_task(backend.sign_batch(items))
        await asyncio.sleep(0)  # the batch is queued
        await backend.check()
        checked = time.monotonic() - start
        results = await asyncio.wait_for(batch, timeout=120)
        signed = time.monotonic() - start

        assert all(isinstance(r, bytes) for r in results)
        # The check waited for about one group of 64, not for the 6,000.
        assert signed > 0.5, "the queue was too short to tell"
        assert checked < signed / 4, (checked, signed)
    finally:
        await backend.close()
