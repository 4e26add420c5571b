"""``Pkcs11Backend``: the ``KeyBackend`` on a PKCS#11 token.

Each method hands its PKCS#11 work to the one PKCS#11 thread (``_thread``)
and works on the token's shared session (``_session``); what each algorithm
is in PKCS#11 is in ``_algorithms``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pkcs11 import Attribute
from pkcs11 import exceptions as p11
from securesystemslib.signer import SSlibKey

from tuf_signer._handoff import resolve_threadsafe
from tuf_signer.errors import BackendError, BackendUnavailableError, ConfigError
from tuf_signer.keys import _pubkey
from tuf_signer.keys._backend import KeyBackend, NewKey
from tuf_signer.keys._backoff import Backoff
from tuf_signer.keys.pkcs11 import _algorithms, _thread
from tuf_signer.keys.pkcs11._errors import (
    SESSION_ERRORS,
    RefreshLater,
    Transient,
    describe,
    parse_handle,
    read_pin,
)
from tuf_signer.keys.pkcs11._session import TokenConn, open_token
from tuf_signer.model import Algorithm

__all__ = ["Pkcs11Backend"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_KEY_ID_BYTES = 16  # CKA_ID of keys we create; the handle is its hex

# Most signatures per trip of the PKCS#11 thread before their callers are woken.
_DRAIN_GROUP = 64


@dataclass
class _SignJob:
    key_id: bytes
    algorithm: Algorithm
    message: bytes
    hashed: bool  # ECDSA: message is already the SHA-256 digest
    future: asyncio.Future[bytes]
    retried: bool = False  # after a ``RefreshLater``


class Pkcs11Backend(KeyBackend):
    """Keys in a PKCS#11 token, found by label and unlocked with a user PIN.

    Keys are generated in the token as sensitive and non-extractable (P1).
    A key's handle is the hex of its CKA_ID (16 random bytes), shared by the
    private and public key objects.

    Args:
        name: the backend's name in the configuration.
        module: path of the PKCS#11 module (e.g. ``libsofthsm2.so``).
        token_label: CKA_LABEL of the token (at most 32 bytes).
        pin: returns the user PIN when called; read only to log in (or to see
            whether a refused PIN was changed), and
            never stored, logged or shown by ``repr``.
        startup_attempts: how often ``start`` tries to open the token.
        sleep: blocking sleep used between startup attempts (injected by tests);
            run off the event loop.

    Raises:
        ConfigError: ``startup_attempts`` is below 1.
    """

    def __init__(
        self,
        name: str,
        module: Path | str,
        token_label: str,
        pin: Callable[[], str],
        *,
        startup_attempts: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if startup_attempts < 1:
            raise ConfigError(f"backend {name!r}: startup_attempts must be at least 1")
        self.name = name
        self._module = str(module)
        self._token_label = token_label
        self._pin_provider = pin
        self._startup_attempts = startup_attempts
        self._backoff = Backoff()
        self._sleep = sleep
        self._conn: TokenConn | None = None  # PKCS#11 thread only
        # Concurrent signs wait here and go to the PKCS#11 thread together.
        self._queue: list[_SignJob] = []
        self._queue_lock = threading.Lock()
        self._draining = False

    def __repr__(self) -> str:
        return (
            f"Pkcs11Backend(name={self.name!r}, module={self._module!r}, "
            f"token_label={self._token_label!r})"
        )

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Load the module, find the token by label, open a session and log in.

        Transient failures (NoSuchToken, GeneralError, ...: processes racing to
        open one token, docs/design.md §4) are retried ``startup_attempts`` times with
        exponential backoff. Idempotent.

        Raises:
            BackendError: the module cannot be loaded, the PIN is rejected, or
                the label matches several tokens.
            BackendUnavailableError: the token cannot be opened after all attempts.
        """
        loop = asyncio.get_running_loop()
        for attempt in range(1, self._startup_attempts + 1):
            try:
                await _thread.run(self._start_once)
                return
            except Transient as e:
                cause = e.__cause__
                if attempt == self._startup_attempts:
                    raise BackendUnavailableError(
                        f"PKCS#11 token {self._token_label!r} not available after "
                        f"{attempt} attempt(s): {describe(cause)}"
                    ) from cause
                delay = self._backoff.delay(attempt)
                log.warning(
                    "backend %r: PKCS#11 token %r not ready (%s), attempt %d of %d; "
                    "retrying in %.2fs",
                    self.name,
                    self._token_label,
                    describe(cause),
                    attempt,
                    self._startup_attempts,
                    delay,
                )
                await loop.run_in_executor(None, self._sleep, delay)

    def _start_once(self) -> None:
        _thread.require_pkcs11_thread()
        if self._conn is not None:
            return
        conn, joined = open_token(self._module, self._token_label, self._pin)
        self._conn = conn
        if joined:
            log.info(
                "backend %r joined the open session on PKCS#11 token %r", self.name, conn.label
            )
        else:
            log.info("backend %r logged in to PKCS#11 token %r", self.name, conn.label)

    async def close(self) -> None:
        """Leave the token; the last backend on it logs out and closes the session.

        The module stays loaded and initialised (other backends may use it).
        Idempotent; never raises.
        """
        await _thread.run(self._close_blocking)

    def _close_blocking(self) -> None:
        _thread.require_pkcs11_thread()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.release()

    async def check(self) -> None:
        """Probe the token and the session (C_GetTokenInfo, C_GenerateRandom).

        A token that is down is recovered now, whatever the backoff between
        the recovery attempts of signs: a health probe that passes means the
        next sign will find a session.

        Raises:
            BackendUnavailableError: not started, or the token does not answer.
        """
        try:
            await _thread.run(lambda: self._call("health check", self._check_op, probe=True))
        except BackendUnavailableError:
            raise
        except BackendError as e:
            raise BackendUnavailableError(e.reason) from e

    def _check_op(self, conn: TokenConn) -> None:
        session = conn.require_session()
        session.token.slot.get_token()
        session.generate_random(64)

    # --- keys --------------------------------------------------------------------

    async def create(self, algorithm: Algorithm, label: str) -> NewKey:
        """Generate a key pair in the token and return its handle and public key.

        The private key is a token object with SENSITIVE, PRIVATE and SIGN set,
        EXTRACTABLE unset; after generation the attributes are read back and the
        pair is destroyed if the token did not honour them (P1).

        Args:
            algorithm: what the key is for.
            label: CKA_LABEL of both key objects.

        Raises:
            BackendError: generation failed or the token did not honour the template.
            BackendUnavailableError: not started, or the token is gone.
        """
        key_id, parts = await _thread.run(
            lambda: self._call("key generation", lambda c: self._create_op(c, algorithm, label))
        )
        public = _pubkey.to_sslib_key(parts.to_crypto(algorithm), algorithm)
        handle = key_id.hex()
        log.info(
            "backend %r created %s key %s (label %r) on token %r",
            self.name,
            algorithm.value,
            handle,
            label,
            self._token_label,
        )
        return NewKey(handle=handle, public_key=public)

    def _create_op(
        self, conn: TokenConn, algorithm: Algorithm, label: str
    ) -> tuple[bytes, _algorithms.PublicParts]:
        key_id = os.urandom(_KEY_ID_BYTES)
        pub, priv = _algorithms.generate_keypair(conn.require_session(), algorithm, key_id, label)
        try:
            attrs = priv.get_attributes(list(_algorithms.REQUIRED_PRIVATE_ATTRIBUTES))
            _algorithms.check_private_key_attributes(attrs)
            parts = _algorithms.public_parts(pub, algorithm)
        except (BackendError, p11.PKCS11Error) as e:
            log.error(
                "backend %r: destroying new key %s on token %r: %s",
                self.name,
                key_id.hex(),
                self._token_label,
                e,
            )
            for obj in (priv, pub):
                try:
                    obj.destroy()
                except p11.PKCS11Error as destroy_error:
                    log.error("could not destroy key object: %s", describe(destroy_error))
            raise
        return key_id, parts

    async def public_key(self, handle: str, algorithm: Algorithm) -> SSlibKey:
        """Read the public key stored under ``handle``.

        Raises:
            BackendError: no such key, or it is not an ``algorithm`` key.
            BackendUnavailableError: not started, or the token is gone.
        """
        key_id = parse_handle(handle)
        parts = await self._run_call(
            "public key read",
            lambda c: _algorithms.public_parts(c.find_key(key_id, private=False), algorithm),
        )
        return _pubkey.to_sslib_key(parts.to_crypto(algorithm), algorithm)

    async def sign(self, handle: str, algorithm: Algorithm, data: bytes) -> bytes:
        """Sign ``data`` in the token.

        Ed25519: CKM_EDDSA over ``data``. ECDSA P-256: CKM_ECDSA over SHA-256 of
        ``data`` (SoftHSM has no CKM_ECDSA_SHA256), returned as DER. RSA:
        CKM_SHA256_RSA_PKCS_PSS with MGF1-SHA-256 and a 32-byte salt.

        A lost session is recovered (reopened, or the module re-initialised,
        and logged in again) once, and the signature retried once; a key the
        session does not see is looked for again after re-initialising.

        Raises:
            BackendError: unknown or disabled handle, a key of another
                algorithm, or the token refused to sign.
            BackendUnavailableError: not started, or the token is gone.
        """
        (result,) = await self.sign_batch([(handle, algorithm, data)])
        if isinstance(result, BaseException):
            raise result
        return result

    async def sign_batch(
        self,
        items: Sequence[tuple[str, Algorithm, bytes]],
        digests: Sequence[bytes] | None = None,
    ) -> list[bytes | BackendError]:
        """Sign many payloads in one trip to the PKCS#11 thread; errors per item.

        Concurrent calls coalesce: while the PKCS#11 thread signs one group,
        later calls queue up and go together in the next trip, so a burst
        costs one thread hand-off per group rather than per signature.

        Raises:
            BackendUnavailableError: not started (every item would fail alike).
        """
        loop = asyncio.get_running_loop()
        jobs = []
        for i, (handle, algorithm, data) in enumerate(items):
            # SoftHSM has no CKM_ECDSA_SHA256: ECDSA signs a SHA-256 digest. Use
            # the caller's; else hash on the PKCS#11 thread (hashlib releases
            # the GIL there), not here: the event loop is the busier thread.
            digest = digests[i] if digests is not None else None
            if algorithm is Algorithm.ECDSA_P256 and digest is not None:
                if len(digest) != hashlib.sha256().digest_size:
                    raise ValueError("digests must be SHA-256 digests")
                message, hashed = digest, True
            else:
                message, hashed = data, False
            jobs.append(
                _SignJob(parse_handle(handle), algorithm, message, hashed, loop.create_future())
            )
        self._enqueue(jobs)
        results: list[bytes | BackendError] = []
        try:
            for job in jobs:
                try:
                    try:
                        signature = await job.future
                    except RefreshLater as e:  # the key may appear once the view is refreshed
                        await asyncio.sleep(e.delay)
                        job.future, job.retried = loop.create_future(), True
                        self._enqueue([job])
                        signature = await job.future
                    results.append(_algorithms.finish_signature(job.algorithm, signature))
                except BackendError as e:
                    results.append(e)
        finally:
            # A cancelled caller (a SignBatch whose client went away) leaves
            # nothing to sign behind it: _drain skips jobs already done.
            for job in jobs:
                job.future.cancel()
        return results

    def _enqueue(self, jobs: list[_SignJob]) -> None:
        with self._queue_lock:
            self._queue.extend(jobs)
            start = not self._draining
            self._draining = True
        if start:
            _thread.executor().submit(_thread.confined, self._drain)

    def _drain(self) -> None:
        """PKCS#11 thread: sign one group of queued jobs, then queue the rest behind others.

        A group is at most ``_DRAIN_GROUP`` jobs: its callers get their
        signatures as soon as it is done, rather than after everything queued
        (under SignBatch load, thousands), so their records go to the audit
        writer while this thread signs on. The next group is submitted anew,
        so work waiting for the thread (a health check, another backend's
        signs) gets a turn between groups instead of after the whole queue.
        """
        with self._queue_lock:
            jobs = self._queue[:_DRAIN_GROUP]
            del self._queue[:_DRAIN_GROUP]
            if not jobs:
                self._draining = False
                return
        outcomes: list[tuple[_SignJob, bytes | BaseException]] = []
        for job in jobs:
            # A cancelled caller's jobs are dropped unsigned. Reading done()
            # from this thread races only with a cancel: at worst one more
            # signature that nobody collects.
            if job.future.done():
                continue
            try:
                signature: bytes | BaseException = self._call(
                    "signing",
                    lambda c, j=job: self._sign_op(c, j),  # type: ignore[misc]
                    refresh_wait=not job.retried,
                )
            except BackendError as e:
                _thread.drop_frames(e)
                signature = e
            except Exception as e:
                _thread.drop_frames(e)
                signature = BackendError(f"signing failed: {type(e).__name__}")
            outcomes.append((job, signature))
        # Callers may wait on different event loops (threads with their own).
        resolve_threadsafe((job.future, outcome) for job, outcome in outcomes)
        _thread.executor().submit(_thread.confined, self._drain)

    def _sign_op(self, conn: TokenConn, job: _SignJob) -> bytes:
        key = conn.private_key(job.key_id, job.algorithm)
        return _algorithms.sign(key, job.algorithm, job.message, job.hashed)

    async def disable(self, handle: str) -> None:
        """Stop a retired key from signing; the key itself is kept.

        Retired keys stay in the token so that old metadata stays verifiable.
        Sets CKA_SIGN false on the private key where the token allows it, and
        in any case refuses to sign with it in this process from now on.

        Raises:
            BackendError: no such key.
            BackendUnavailableError: not started, or the token is gone.
        """
        key_id = parse_handle(handle)
        await self._run_call("disabling a key", lambda c: self._disable_op(c, key_id))

    def _disable_op(self, conn: TokenConn, key_id: bytes) -> None:
        obj = conn.find_key(key_id, private=True)
        conn.keys.pop(key_id, None)
        conn.disabled.add(key_id)
        try:
            obj[Attribute.SIGN] = False
        except p11.PKCS11Error as e:
            if isinstance(e, SESSION_ERRORS):
                raise
            log.info(
                "backend %r: token %r refused to clear CKA_SIGN on key %s (%s); "
                "it stays unusable in this process only",
                self.name,
                self._token_label,
                key_id.hex(),
                describe(e),
            )
        else:
            log.info("backend %r: disabled key %s", self.name, key_id.hex())

    # --- plumbing (PKCS#11 thread) ---------------------------------------------------

    def _pin(self) -> str:
        return read_pin(self._pin_provider, self._token_label)

    async def _run_call(self, what: str, op: Callable[[TokenConn], _T]) -> _T:
        """``_call`` on the PKCS#11 thread; after a ``RefreshLater``, wait and ask once more."""
        try:
            return await _thread.run(lambda: self._call(what, op))
        except RefreshLater as e:
            await asyncio.sleep(e.delay)
            return await _thread.run(lambda: self._call(what, op, refresh_wait=False))

    def _call(
        self,
        what: str,
        op: Callable[[TokenConn], _T],
        *,
        probe: bool = False,
        refresh_wait: bool = True,
    ) -> _T:
        """Run ``op`` on the token's shared session (``TokenConn.call``).

        Raises:
            BackendUnavailableError: not started, or the token is gone.
            BackendError: any other failure.
        """
        _thread.require_pkcs11_thread()
        conn = self._conn
        if conn is None:
            raise BackendUnavailableError(f"backend {self.name!r} is not started")
        return conn.call(what, op, self._pin, probe=probe, refresh_wait=refresh_wait)
