"""Token sessions: loaded modules, one shared logged-in session per token, key lookup, recovery.

Login state belongs to the application, not to a session (PKCS#11 v2.40 §5.6,
C_Login/C_Logout): a second C_Login on a token fails with
CKR_USER_ALREADY_LOGGED_IN, and one C_Logout logs every session out. So all
backends on the same token in this process share one logged-in read/write
session (``TokenConn``), reference-counted. A backend joining an open session
must present the same PIN (compared against a keyed digest held in memory).

Recovery (P10). A lost session is reopened; when the token itself went away
and came back, reopening is not enough (SoftHSM marks a token whose directory
vanished invalid until ``C_Initialize``), so the module is finalised and
initialised again (at most once a second per module: that logs every token on
it out), and the session logs in again. While that fails, calls fail fast with
``BackendUnavailableError``, and recovery is tried again after a bounded
backoff (``_recovery.RECOVERY_BACKOFF``). A PIN the token refused is never
offered again: the PIN source is read on each attempt, and a login is tried
only once it yields another PIN (or after a restart).

A key lookup that finds nothing is not believed at once: SoftHSM re-reads its
token directory only when the token's generation counter changed since it
last looked, and its own writes absorb the counter, so a process that creates
a key misses the keys another process created just before (docs/design.md §4).
A miss therefore re-initialises the module and looks again; only a second
miss is "no such key" (and is believed for ``_recovery.MISSING_HOLD`` seconds).

Everything here runs on the PKCS#11 thread (``_thread``) and touches its
state without locks.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pkcs11
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11

from tuf_signer.errors import BackendError, BackendUnavailableError
from tuf_signer.keys.pkcs11._algorithms import algorithm_of, wrong_algorithm
from tuf_signer.keys.pkcs11._errors import (
    BUSY_ERRORS,
    PIN_ERRORS,
    SESSION_ERRORS,
    STALE_OBJECT_ERRORS,
    STARTUP_TRANSIENT,
    KeyMissing,
    RefreshLater,
    Transient,
    describe,
)
from tuf_signer.keys.pkcs11._module import _LIBS, REINITS, load_library, login, reinitialize, rescan
from tuf_signer.keys.pkcs11._recovery import MissingKeys, Recovery, RefusedPins
from tuf_signer.model import Algorithm

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Lib

__all__ = ["_LIBS", "TokenConn", "open_token"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Open token sessions by (module real path, token label).
_CONNS: dict[tuple[str, str], TokenConn] = {}


def _reinitialize(lib_key: str, lib: Pkcs11Lib) -> None:
    """C_Finalize then C_Initialize (``_module.reinitialize``); every ``TokenConn``
    on the module drops its session first, and reopens on its next call.

    Raises:
        p11.PKCS11Error: C_Initialize failed.
    """
    for conn in _CONNS.values():
        if conn.key[0] == lib_key:
            conn.drop_session()
    reinitialize(lib_key, lib)


def open_token(module: str, label: str, pin: Callable[[], str]) -> tuple[TokenConn, bool]:
    """Join the open session on a token, or open one and log in; returns (it, joined).

    Raises:
        Transient: a failure seen while processes race to open a token.
        BackendError: the module cannot be loaded, the PIN is rejected, or
            the label matches several tokens.
        BackendUnavailableError: the token cannot be opened.
    """
    lib_key, lib = load_library(module)
    user_pin = pin()
    conn = _CONNS.get((lib_key, label))
    if conn is not None:
        # The token is already logged in for this process, so C_Login
        # cannot check this PIN; compare it with the one that logged in.
        if not conn.pin_matches(user_pin):
            raise BackendError(f"PIN rejected by token {label!r}")
        conn.users += 1
        return conn, True
    try:
        token = lib.get_token(token_label=label)
        # A failed login leaves python-pkcs11's just-opened session open
        # until the module is re-initialised; harmless, but not closable.
        session = login(token, user_pin)
    except PIN_ERRORS as e:
        raise BackendError(f"PIN rejected by token {label!r} ({type(e).__name__})") from e
    except p11.MultipleTokensReturned as e:
        raise BackendError(f"more than one PKCS#11 token is labelled {label!r}") from e
    except p11.UserAlreadyLoggedIn as e:
        raise BackendError(
            f"PKCS#11 token {label!r} is already logged in by code outside "
            "Pkcs11Backend in this process"
        ) from e
    except p11.UserPinNotInitialized as e:
        raise BackendError(f"PKCS#11 token {label!r} has no user PIN set") from e
    except STARTUP_TRANSIENT as e:
        rescan(lib_key, lib, busy=any(key[0] == lib_key for key in _CONNS))
        raise Transient() from e
    except p11.PKCS11Error as e:
        raise BackendUnavailableError(f"cannot open PKCS#11 token {label!r}: {describe(e)}") from e
    conn = TokenConn((lib_key, label), lib, session, user_pin)
    _CONNS[conn.key] = conn
    return conn, False


def _find_one(session: pkcs11.Session, attrs: dict[Attribute, Any]) -> pkcs11.Object | None:
    """Return the only object matching ``attrs``, or None.

    The search is always run to its end here: python-pkcs11 ends an abandoned
    search (C_FindObjectsFinal) from whichever thread drops it, which could be
    the event loop's.
    """
    found = list(session.get_objects(attrs))
    if len(found) > 1:
        raise BackendError(f"{len(found)} objects match one key handle; the token is inconsistent")
    return found[0] if found else None


@dataclass(frozen=True)
class _CachedKey:
    key: pkcs11.types.SignMixin
    algorithm: Algorithm | None  # None: not a key of any algorithm we support


class TokenConn:
    """The one logged-in read/write session on one token, shared and refcounted.

    Touched only on the PKCS#11 thread.
    """

    def __init__(self, key: tuple[str, str], lib: Pkcs11Lib, session: pkcs11.Session, pin: str):
        self.key = key
        self.lib = lib
        self.session: pkcs11.Session | None = session
        self.users = 1
        self.keys: dict[bytes, _CachedKey] = {}
        self.disabled: set[bytes] = set()
        self._pin_key = os.urandom(32)
        self._pin_mac = self._mac(pin)
        self._recovery = Recovery(key[1])
        self._missing = MissingKeys()
        self.refused = RefusedPins()

    @property
    def label(self) -> str:
        return self.key[1]

    def _mac(self, pin: str) -> bytes:
        return hmac.new(self._pin_key, pin.encode("utf-8"), hashlib.sha256).digest()

    def pin_matches(self, pin: str) -> bool:
        return hmac.compare_digest(self._mac(pin), self._pin_mac)

    def require_session(self) -> pkcs11.Session:
        if self.session is None:
            raise BackendUnavailableError(f"PKCS#11 token {self.label!r} has no open session")
        return self.session

    # --- key lookup ------------------------------------------------------------------

    def find_key(self, key_id: bytes, *, private: bool) -> pkcs11.Object:
        """The private (or public) key object with CKA_ID ``key_id``.

        Raises:
            KeyMissing: there is none in this session's view (``call``
                refreshes the view and looks again before it believes that).
            BackendError: there are several.
        """
        object_class = ObjectClass.PRIVATE_KEY if private else ObjectClass.PUBLIC_KEY
        obj = _find_one(
            self.require_session(), {Attribute.CLASS: object_class, Attribute.ID: key_id}
        )
        if obj is None:
            kind = "private" if private else "public"
            raise KeyMissing(
                f"no {kind} key with handle {key_id.hex()} on token {self.label!r}", key_id
            )
        return obj

    def private_key(self, key_id: bytes, algorithm: Algorithm) -> pkcs11.types.SignMixin:
        """The signing key with CKA_ID ``key_id``, looked up once and cached.

        Raises:
            KeyMissing: not in this session's view of the token.
            BackendError: disabled, several, unable to sign, or not an ``algorithm`` key.
        """
        if key_id in self.disabled:
            raise BackendError(f"key {key_id.hex()} is disabled")
        cached = self.keys.get(key_id)
        if cached is None:
            obj = self.find_key(key_id, private=True)
            # python-pkcs11 adds the sign method only when CKA_SIGN is true.
            if not isinstance(obj, pkcs11.types.SignMixin):
                raise BackendError(f"key {key_id.hex()} cannot sign (CKA_SIGN is false)")
            cached = _CachedKey(obj, algorithm_of(obj))
            self.keys[key_id] = cached
        if cached.algorithm is not algorithm:
            raise BackendError(wrong_algorithm(key_id.hex(), cached.algorithm, algorithm))
        return cached.key

    # --- calls -------------------------------------------------------------------------

    def call(
        self,
        what: str,
        op: Callable[[TokenConn], _T],
        pin: Callable[[], str],
        *,
        probe: bool = False,
        refresh_wait: bool = True,
    ) -> _T:
        """Run ``op`` on this session, wrapping every PKCS#11 error.

        Each remedy is tried at most once per call, then ``op`` again: a
        session or device error recovers the session (``recover``); a stale
        object handle empties the key cache; a key not found refreshes the
        module's object view (re-initialisation). While the token is down
        and the backoff has not run out, the call fails at once.

        Args:
            what: the operation, for messages.
            op: the work, given this connection.
            pin: returns the user PIN, read only when logging in again.
            probe: a health check: try to recover now, whatever the backoff.
            refresh_wait: a key not found while the module may not be
                re-initialised yet raises ``RefreshLater``; off, it is missing.

        Raises:
            BackendUnavailableError: the token is down and cannot be recovered
                now, or fails again after recovering.
            BackendError: the key does not exist (after a refresh), or any
                other PKCS#11 error.
        """
        if self.session is None:
            self._recover_or_refuse(what, pin, force=probe)
        used: set[str] = set()
        while True:
            try:
                result = op(self)
            except KeyMissing as e:
                if "refresh" in used or e.key_id in self._missing:
                    self._missing.add(e.key_id)
                    raise BackendError(e.reason) from None
                wait = REINITS.wait(self.key[0])
                if wait > 0 and refresh_wait:
                    raise RefreshLater(e.reason, wait) from None
                if wait > 0:  # waited, and another refresh ran meanwhile: it is missing
                    self._missing.add(e.key_id)
                    raise BackendError(e.reason) from None
                used.add("refresh")
                log.info("%s on token %r: %s; refreshing the object view", what, self.label, e)
                self.recover(pin, refresh=True)
            except STALE_OBJECT_ERRORS as e:
                if "stale" in used:
                    raise self._lost(what, e) from e
                used.add("stale")
                log.warning("%s on token %r: %s; retrying", what, self.label, describe(e))
                self.keys.clear()
            except SESSION_ERRORS as e:
                if "session" in used:
                    raise self._lost(what, e) from e
                used.add("session")
                log.warning(
                    "%s on token %r: %s; recovering the session", what, self.label, describe(e)
                )
                self.drop_session()
                self.recover(pin)
            except BUSY_ERRORS as e:
                raise BackendUnavailableError(
                    f"PKCS#11 token {self.label!r} unavailable ({what}): {describe(e)}"
                ) from e
            except p11.PKCS11Error as e:
                raise BackendError(f"{what} failed on token {self.label!r}: {describe(e)}") from e
            else:
                return result

    # --- recovery --------------------------------------------------------------------

    def _recover_or_refuse(self, what: str, pin: Callable[[], str], *, force: bool) -> None:
        """Recover a session that is down, unless the backoff says not yet.

        Raises:
            BackendUnavailableError: not yet, or recovery failed.
        """
        if not force and not self._recovery.due():
            raise BackendUnavailableError(
                f"PKCS#11 token {self.label!r} unavailable ({what}): {self._recovery.reason}"
            )
        self.recover(pin)

    def _lost(self, what: str, e: p11.PKCS11Error) -> BackendUnavailableError:
        """The session failed again after its remedy: drop it and count a failed attempt."""
        self.drop_session()
        reason = f"{describe(e)} after recovering"
        self._recovery.failed(reason)
        return BackendUnavailableError(
            f"PKCS#11 token {self.label!r} unavailable ({what}): {reason}"
        )

    def recover(self, pin: Callable[[], str], *, refresh: bool = False) -> None:
        """Open a new logged-in session; re-initialise the module first if need be.

        Tries a plain reopen first (enough when only the session was lost),
        then, or at once when ``refresh`` (the caller has counted it with
        ``REINITS``), finalises and initialises the module again (a token that
        went away and came back; a stale object view), at most once a second.

        Raises:
            BackendUnavailableError: the token cannot be reached, the PIN
                source failed, or the token refused (or refused before) the
                PIN; the next attempt waits for ``_recovery.RECOVERY_BACKOFF``.
        """
        user_pin = self._read_pin(pin)  # once per recovery
        if user_pin in self.refused:
            raise self._fail(self._refused_reason(), quiet=True)
        if not refresh:
            try:
                self._reopen(user_pin)
            except PIN_ERRORS as e:
                raise self._refused_now(user_pin, e) from None
            except p11.PKCS11Error as e:
                log.info("reopening a session on %r failed (%s)", self.label, describe(e))
            else:
                self._recovery.succeeded("reopened the session")
                return
            if REINITS.wait(self.key[0]) > 0:
                self.drop_session()
                raise self._fail(
                    "reopening the session failed; the module was re-initialised <1s ago"
                )
        try:
            _reinitialize(self.key[0], self.lib)
            self._reopen(user_pin)
        except PIN_ERRORS as e:
            raise self._refused_now(user_pin, e) from None
        except p11.PKCS11Error as e:
            self.drop_session()
            raise self._fail(f"reopening the session failed ({describe(e)})") from e
        self._recovery.succeeded("re-initialised the module")

    def _read_pin(self, pin: Callable[[], str]) -> str:
        try:
            return pin()
        except BackendError as e:  # its reason names the provider's error type only
            reason = e.reason
        raise self._fail(reason)  # outside the handler: nothing of the provider's chained

    def _fail(self, reason: str, *, quiet: bool = False) -> BackendUnavailableError:
        """Count a failed recovery attempt; the error to raise."""
        self._recovery.failed(reason, quiet=quiet)
        return BackendUnavailableError(f"PKCS#11 token {self.label!r} unavailable: {reason}")

    def _refused_reason(self) -> str:
        return (
            "the token refused the PIN from the backend's PIN setting (pin_file, pin_env); "
            "it is not offered again until that setting yields another PIN, or on restart"
        )

    def _refused_now(self, pin: str, e: p11.PKCS11Error) -> BackendUnavailableError:
        self.drop_session()
        self.refused.add(pin)
        log.error("PKCS#11 token %r refused the PIN (%s)", self.label, type(e).__name__)
        return self._fail(self._refused_reason())

    def _reopen(self, pin: str) -> None:
        """Close the session (ignoring errors), open a new one and log in again.

        Raises:
            BackendError: the PIN differs from the one that logged in before.
            p11.PKCS11Error: the token cannot be opened, or refuses ``pin``.
        """
        self.drop_session(close=True)
        token = self.lib.get_token(token_label=self.label)
        try:
            self.session = login(token, pin)
            self._pin_mac = self._mac(pin)
        except p11.UserAlreadyLoggedIn:
            # The login outlived the old session (a session python-pkcs11
            # could not close is still open); a plain session inherits it
            # (PKCS#11 v2.40 §5.6), but the PIN must still be the known one.
            if not self.pin_matches(pin):
                raise BackendError(f"PIN rejected by token {self.label!r}") from None
            self.session = token.open(rw=True)

    def drop_session(self, *, close: bool = False) -> None:
        """Forget the session and every object bound to it; ``close`` closes it first."""
        old, self.session = self.session, None
        self.keys.clear()  # python-pkcs11 objects are bound to their session
        if close and old is not None:
            try:
                old.close()
            except p11.PKCS11Error as e:
                log.debug("closing broken session on %r: %s", self.label, describe(e))

    # --- leaving ---------------------------------------------------------------------

    def release(self) -> None:
        """One backend leaves; the last one logs out and closes the session. Never raises."""
        self.users -= 1
        if self.users == 0:
            _CONNS.pop(self.key, None)
            self.close()
            log.info("logged out of PKCS#11 token %r", self.label)

    def close(self) -> None:
        session, self.session = self.session, None
        self.keys.clear()
        if session is not None:
            try:
                session.close()  # C_Logout, then C_CloseSession
            except p11.PKCS11Error as e:
                log.warning("closing session on PKCS#11 token %r: %s", self.label, describe(e))
